"""A checkpoint written after optimizer step N holds the EMA after exactly N real updates.

Real Lightning fits of the tiny V-JEPA and diffusion modules with ModelCheckpoint every step, gradient
accumulation, and one step NonFiniteGuard skips; the EMA in every checkpoint is compared with a reference EMA
recomputed from the online weights recorded after each optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pipeline.distributed.guard import NonFiniteGuard
from pipeline.models.diffusion import VideoDiffusionModule
from pipeline.models.vjepa import VJEPAModule
from pipeline.nn.schedules import ema_momentum

VJEPA = dict(frames=4, context_frames=2, patch_size=8, tubelet_size=2, dim=32, depth=2, heads=4, pred_dim=32,
             pred_depth=1, pred_heads=4, lr=1e-2, start_lr=1e-2, warmup_steps=0, total_steps=10, ema_start=0.5,
             ema_final=0.9, monitor_every=100)  # fmt: skip
DIFFUSION = dict(frames=4, context_frames=2, resolution=16, patch_size=4, width=32, depth=2, heads=4, lr=1e-2,
                 warmup_steps=1, sample_videos=0)  # fmt: skip
BAD_STEP = 1  # the second optimizer step has a NaN loss: the guard skips it


def poisoned(cls: type[pl.LightningModule]) -> type[pl.LightningModule]:
    """`cls` with a NaN loss at global step BAD_STEP (every micro-batch of that step)."""

    class Poisoned(cls):  # type: ignore[misc, valid-type]
        def training_step(self, batch: dict, batch_idx: int) -> Tensor:
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.global_step == BAD_STEP else loss

    return Poisoned


class OnlineRecorder(pl.Callback):
    """The online network's weights after every optimizer step, by global step (before any checkpoint)."""

    def __init__(self, online: str) -> None:
        self.online = online
        self.after: dict[int, list[Tensor]] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        # with accumulation the last micro-batch of a step overwrites the others (same weights until it)
        net: nn.Module = getattr(pl_module, self.online)
        self.after[trainer.global_step] = [p.detach().clone() for p in net.parameters()]


def fit(model: pl.LightningModule, online: str, root: Path, steps: int, accumulate: int, side: int) -> OnlineRecorder:
    """Fit `steps` optimizer steps on random uint8 clips [2, 4, 3, side, side], checkpointing after every step."""
    gen = torch.Generator().manual_seed(0)
    batches = [
        {"video": torch.randint(0, 256, (2, 4, 3, side, side), generator=gen, dtype=torch.uint8), "key": ["a", "b"]}
        for _ in range(steps * accumulate)
    ]
    recorder = OnlineRecorder(online)
    checkpoints = ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, accumulate_grad_batches=accumulate, logger=False,
                         callbacks=[NonFiniteGuard(), recorder, checkpoints], enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root)  # fmt: skip
    trainer.fit(model, DataLoader(batches, batch_size=None))
    return recorder


def saved_ema(path: Path, prefix: str) -> list[Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return [v for k, v in state.items() if k.startswith(prefix)]


# family: (class, init args, online network, EMA checkpoint prefix, clip side, momentum of update n)
CASES: dict[str, tuple[type[pl.LightningModule], dict, str, str, int, Callable[[int], float]]] = {
    "vjepa": (VJEPAModule, VJEPA, "encoder", "target_encoder.", 32, lambda n: ema_momentum(n, 10, 0.5, 0.9)),
    "diffusion": (VideoDiffusionModule, DIFFUSION, "net", "ema_net.", 16, lambda n: min(0.999, (1 + n) / (10 + n))),
}


@pytest.mark.parametrize(("family", "accumulate"), [("vjepa", 2), ("diffusion", 1)])
def test_checkpoint_after_step_n_holds_the_ema_after_n_updates(tmp_path: Path, family: str, accumulate: int) -> None:
    cls, args, online, prefix, side, momentum = CASES[family]
    torch.manual_seed(0)
    model = poisoned(cls)(**args)
    reference = [p.detach().clone() for p in getattr(model, online).parameters()]  # the EMA copy starts equal
    steps = 4
    recorder = fit(model, online, tmp_path, steps, accumulate, side)
    assert sorted(recorder.after)[-steps:] == list(range(1, steps + 1))
    assert model.trainer.callbacks[0].skipped == 1
    for n in range(1, steps + 1):
        ema = saved_ema(tmp_path / f"step={n}.ckpt", prefix)
        assert len(ema) == len(reference) > 0
        if n == BAD_STEP + 1:  # skipped: neither the online weights nor the EMA moved
            for a, b in zip(recorder.after[n], recorder.after[n - 1], strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            for e, r in zip(ema, saved_ema(tmp_path / f"step={n - 1}.ckpt", prefix), strict=True):
                torch.testing.assert_close(e, r, rtol=0, atol=0)
            continue
        m = momentum(n)
        behind = reference
        reference = [m * r + (1 - m) * o for r, o in zip(reference, recorder.after[n], strict=True)]
        for e, r in zip(ema, reference, strict=True):
            torch.testing.assert_close(e, r, rtol=1e-5, atol=1e-6)
        # one update behind would be told apart: the online weights moved away from the EMA
        assert max(float((e - b).abs().max()) for e, b in zip(ema, behind, strict=True)) > 1e-4
