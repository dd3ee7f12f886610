"""VJEPAACModule: action-conditioned rollout shapes, bad batches, frozen encoders loaded from V-JEPA checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from pipeline.bench.train import SyntheticDataModule
from pipeline.models.protocol import LatentWorldModel
from pipeline.models.vjepa import VJEPAModule
from pipeline.models.vjepa_ac import VJEPAACModule

ENC = dict(patch_size=8, dim=32, depth=2, heads=4)
TINY = dict(action_dim=4, frames=6, context_frames=2, pred_dim=32, pred_depth=2, pred_heads=4, **ENC)


def tiny(**kw) -> VJEPAACModule:
    torch.manual_seed(0)
    return VJEPAACModule(**{**TINY, "total_steps": 10, "warmup_steps": 1, **kw})


def one_hot(b: int, t: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.randint(0, 4, (b, t)), 4).float()


def test_rollout_is_autoregressive_per_frame_and_action_dependent() -> None:
    m = tiny(pixel_decoder=True).eval()
    assert isinstance(m, LatentWorldModel)
    clip = torch.randint(0, 256, (2, 12, 3, 32, 32), dtype=torch.uint8)
    actions = one_hot(2, 12)
    r = m.rollout(clip[:, :2], actions, horizon=10, future=clip[:, 2:12])  # 12 frames > the 6-frame window
    assert r.latents.shape == r.target_latents.shape == (2, 10, 16, 32)
    assert r.frames.shape == (2, 10, 3, 32, 32) and 0 <= r.frames.min() and r.frames.max() <= 1
    other = actions.clone()
    other[:, 4:] = one_hot(2, 8)
    other[:, 4:, 0] += 1.0  # surely different from the first actions
    r2 = m.rollout(clip[:, :2], other, horizon=10)
    torch.testing.assert_close(r2.latents[:, :3], r.latents[:, :3])  # latents 0..2 come from actions 0..3 only
    assert not torch.allclose(r2.latents[:, 3:], r.latents[:, 3:])
    assert m.embed(clip[:, :1]).shape == (2, 1, 16, 32)
    with pytest.raises(ValueError, match="needs actions"):
        m.rollout(clip[:, :2], actions[:, :5], horizon=10)


def test_batches_without_matching_actions_fail_clearly() -> None:
    m = tiny()
    video = torch.randint(0, 256, (2, 6, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs `actions` in the batch"):
        m.ac_loss({"video": video})
    with pytest.raises(ValueError, match="width 3, model.init_args.action_dim is 4"):
        m.ac_loss({"video": video, "actions": torch.zeros(2, 6, 3)})


def test_frozen_encoder_from_a_vjepa_checkpoint_stays_fixed(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = VJEPAModule(frames=8, context_frames=4, pred_dim=32, pred_depth=1, pred_heads=4, **ENC)
    ckpt = tmp_path / "vjepa.ckpt"
    torch.save({"state_dict": source.state_dict(), "wm_class_path": "pipeline.models.vjepa.VJEPAModule"}, ckpt)
    m = tiny(encoder_ckpt=str(ckpt), encoder_mode="frozen")
    for a, b in zip(m.encoder.parameters(), source.target_encoder.parameters(), strict=True):
        assert torch.equal(a, b) and not a.requires_grad
    before = [p.clone() for p in m.encoder.parameters()]
    pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(m, SyntheticDataModule(2, 6, 32, action_dim=4))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, m.encoder.parameters(), strict=True))
    assert m.target_encoder is None
    with pytest.raises(FileNotFoundError, match="train one with `wm fit`"):
        tiny(encoder_ckpt=str(tmp_path / "missing.ckpt"))
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "wm_class_path": "pipeline.models.vjepa.VJEPAModule"},
               tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="no 'target_encoder"):
        tiny(encoder_ckpt=str(tmp_path / "other.ckpt"))


def test_ema_mode_trains_the_encoder_and_tracks_it() -> None:
    m = tiny(encoder_mode="ema", ema_start=0.5, ema_constant=True)
    start = [p.clone() for p in m.encoder.parameters()]
    pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(m, SyntheticDataModule(2, 6, 32, action_dim=4))  # fmt: skip
    for s, t, o in zip(start, m.target_encoder.parameters(), m.encoder.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * s + 0.5 * o)
    assert any(not torch.equal(s, o) for s, o in zip(start, m.encoder.parameters(), strict=True))
