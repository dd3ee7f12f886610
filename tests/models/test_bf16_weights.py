"""Models whose weights were cast to bf16 (what DeepSpeed does with bf16 on, without autocast) still train.

The GPU check under ZeRO found two failures that the CPU can reproduce: uint8 pixels normalised to
float32 fed into a bf16 patch embedding, and a float32 pixel target against a bf16 decoder output.
"""

from __future__ import annotations

import torch

from pipeline.models.vjepa import VJEPAModule

TINY = dict(frames=8, context_frames=4, patch_size=8, dim=32, depth=2, heads=4, pred_dim=32, pred_depth=2, pred_heads=4)


def test_vjepa_with_bf16_weights_computes_losses_and_gradients() -> None:
    torch.manual_seed(0)
    model = VJEPAModule(**TINY, pixel_decoder=True).to(torch.bfloat16)
    video = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8)
    loss, targets, _ = model.jepa_loss({"video": video}, salt=0)
    total = loss + model.decoder_loss(targets, video)
    total.backward()
    assert torch.isfinite(total.float())
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 for g in grads)
    assert any(p.grad is not None for p in model.decoder.parameters())
