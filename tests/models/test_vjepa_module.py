"""VJEPAModule on synthetic clips: EMA after each optimizer step, optimizer groups, masks, rollout, checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from pipeline.bench.train import SyntheticDataModule
from pipeline.models.protocol import LatentWorldModel
from pipeline.models.vjepa import VJEPAModule
from pipeline.nn.masks import MaskCollator
from pipeline.nn.schedules import ema_momentum

TINY = dict(frames=8, context_frames=4, patch_size=8, dim=32, depth=2, heads=4, pred_dim=32, pred_depth=2, pred_heads=4)


def tiny(**kw) -> VJEPAModule:
    torch.manual_seed(0)
    return VJEPAModule(**{**TINY, "total_steps": 10, "warmup_steps": 2, **kw})


def trainer(steps: int, root: Path) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root, gradient_clip_val=1.0,
    )  # fmt: skip


def data(batch_size: int = 2) -> SyntheticDataModule:
    return SyntheticDataModule(batch_size=batch_size, frames=8, resolution=32)


def test_target_encoder_is_the_ema_of_the_encoder_after_each_step(tmp_path: Path) -> None:
    m = tiny(ema_start=0.9, ema_final=1.0)
    start = [p.detach().clone() for p in m.encoder.parameters()]
    for a, b in zip(start, m.target_encoder.parameters(), strict=True):
        assert torch.equal(a, b) and not b.requires_grad
    trainer(1, tmp_path).fit(m, data())
    mom = ema_momentum(1, 10, 0.9, 1.0)
    assert mom == pytest.approx(0.91)
    moved = 0
    for s, t, o in zip(start, m.target_encoder.parameters(), m.encoder.parameters(), strict=True):
        torch.testing.assert_close(t, mom * s + (1 - mom) * o)
        moved += int(not torch.equal(s, o))
    assert moved > 10  # the encoder was trained, so the check above is not trivially true


def test_optimizer_skips_target_encoder_and_decays_matrices_only() -> None:
    m = tiny()
    opt = m.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in m.target_encoder.parameters()}
    assert {id(p) for p in m.encoder.parameters()} <= in_opt and {id(p) for p in m.predictor.parameters()} <= in_opt
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == pytest.approx(0.04) and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])


def test_batch_masks_are_used_and_device_masks_are_seeded() -> None:
    m = tiny()
    video = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        a, b, c = (m.jepa_loss({"video": video}, salt)[0] for salt in (3, 3, 4))
        assert a == b and a != c
        batch = MaskCollator(tubelet_size=2, patch_size=8, seed=1)({"video": video})
        ctx, tgt = m.batch_masks(batch, salt=0)
        assert ctx[0] is batch["masks_ctx"][0] and tgt[1] is batch["masks_tgt"][1]
        assert torch.isfinite(m.jepa_loss(batch, 0)[0])


def test_rollout_predicts_latents_per_frame_and_embeds_the_true_future() -> None:
    m = tiny(pixel_decoder=True).eval()
    assert isinstance(m, LatentWorldModel) and m.context_frames == 4
    clip = torch.randint(0, 256, (2, 13, 3, 32, 32), dtype=torch.uint8)
    r = m.rollout(clip[:, :4], None, horizon=5, future=clip[:, 4:9])
    assert r.latents.shape == r.target_latents.shape == (2, 5, 16, 32)
    assert r.frames.shape == (2, 5, 3, 32, 32) and 0.0 <= r.frames.min() and r.frames.max() <= 1.0
    torch.testing.assert_close(m.rollout(clip[:, :4], None, horizon=5).latents, r.latents)  # the future is not used
    torch.testing.assert_close(r.latents[:, 0], r.latents[:, 1])  # frames 4 and 5 share a tubelet
    long = m.rollout(clip[:, :4], None, horizon=9, future=clip[:, 4:13])  # beyond the 8-frame window
    assert long.latents.shape == (2, 9, 16, 32) and torch.isfinite(long.latents).all()
    assert m.embed(clip[:, :1]).shape == (2, 1, 16, 32)  # a goal image
    with pytest.raises(ValueError, match="multiple of 2 below 8"):
        m.rollout(clip[:, :3], None, horizon=2)


def test_future_mode_has_one_mask_token_and_predicts_the_later_tubelets() -> None:
    m = tiny(mask_mode="future")
    assert m.predictor.mask_tokens.shape[0] == 1
    video = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8)
    ctx, tgt = m.batch_masks({"video": video}, salt=0)
    assert ctx[0].shape == (2, 2 * 16) and tgt[0].min() == 2 * 16
    assert torch.isfinite(m.jepa_loss({"video": video}, 0)[0])


def test_checkpoint_save_load_and_continue(tmp_path: Path) -> None:
    m = tiny(ema_start=0.9)
    first = trainer(3, tmp_path)
    first.fit(m, data())
    ckpt = tmp_path / "three.ckpt"
    first.save_checkpoint(ckpt)  # through the trainer: optimizer and loop state are in the file too
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["wm_class_path"] == "pipeline.models.vjepa.VJEPAModule" and raw["global_step"] == 3
    loaded = VJEPAModule.load_from_checkpoint(ckpt, weights_only=True)
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    same = tiny(ema_start=0.9)  # a different init (seeded the same, but not trained)
    trainer(3, tmp_path).fit(same, data(), ckpt_path=ckpt, weights_only=True)  # already at max_steps: no step
    for k, v in loaded.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k
    resumed = tiny(ema_start=0.9)
    t2 = trainer(5, tmp_path)
    t2.fit(resumed, data(), ckpt_path=ckpt, weights_only=True)
    assert t2.global_step == 5
    assert not torch.equal(resumed.target_encoder.norm.weight, loaded.target_encoder.norm.weight)


def test_batch_masks_of_another_grid_or_generator_count_fail_clearly() -> None:
    m = tiny()
    video = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="exceed the 64 tokens"):
        m.jepa_loss(MaskCollator(tubelet_size=2, patch_size=4)({"video": video}), 0)
    future = MaskCollator(tubelet_size=2, patch_size=8, mode="future", context_frames=4)({"video": video})
    with pytest.raises(ValueError, match="1 context / 1 target masks, the model has 2 mask generators"):
        m.jepa_loss(future, 5)
