"""Non-finite steps are skipped and counted (too many in a row stop the run); checkpoints are written atomically."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from pipeline.distributed.checkpoint import newest_checkpoint
from pipeline.distributed.checkpoint_io import AtomicCheckpointIO
from pipeline.distributed.guard import NonFiniteGuard, NonFiniteLossError
from pipeline.distributed.preemption import ExceptionCheckpoint


class PoisonedModel(BoringModel):
    """BoringModel whose loss is NaN (or inf) at the given global steps; records weights after every step."""

    def __init__(self, bad_steps: dict[int, float]) -> None:
        super().__init__()
        self.bad_steps = bad_steps
        self.weights: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().training_step(batch, batch_idx)
        if self.global_step in self.bad_steps:
            out["loss"] = out["loss"] * self.bad_steps[self.global_step]
        return out

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.weights.append(self.layer.weight.detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # AdamW would move weights on a zero gradient (moments, decay): a skip must leave them untouched
        return torch.optim.AdamW(self.parameters(), lr=0.05, weight_decay=0.1)


def _fit(model: PoisonedModel, guard: NonFiniteGuard, steps: int, root: Path) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model)
    return trainer


def test_non_finite_steps_are_skipped_and_counted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PoisonedModel({2: float("nan"), 3: float("inf"), 6: float("nan")})
    guard = NonFiniteGuard(max_consecutive=3)
    _fit(model, guard, 8, tmp_path)
    w = model.weights
    assert len(w) == 8 and guard.skipped == 3 and guard.consecutive == 0
    assert torch.equal(w[1], w[2]) and torch.equal(w[2], w[3]) and torch.equal(w[5], w[6])  # skipped
    assert not torch.equal(w[3], w[4]) and not torch.equal(w[6], w[7])  # training continued
    assert torch.isfinite(w[-1]).all()


def test_too_many_in_a_row_stop_with_a_clear_error(tmp_path: Path) -> None:
    model = PoisonedModel({s: float("nan") for s in range(1, 100)})
    expected = r"3 optimizer steps in a row had a non-finite loss or gradient \(global step"
    with pytest.raises(NonFiniteLossError, match=expected):
        _fit(model, NonFiniteGuard(max_consecutive=3), 20, tmp_path)
    assert len(model.weights) == 3  # step 0 trained, steps 1 and 2 skipped, step 3 raised


def test_guard_state_round_trip() -> None:
    guard = NonFiniteGuard(max_consecutive=4)
    guard.skipped, guard.consecutive = 5, 2
    other = NonFiniteGuard()
    other.load_state_dict(guard.state_dict())
    assert (other.skipped, other.consecutive) == (5, 2)
    with pytest.raises(ValueError, match="max_consecutive"):
        NonFiniteGuard(max_consecutive=0)


def test_atomic_save_replaces_whole_files_and_survives_a_crash(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)
    assert io.load_checkpoint(path)["step"] == 1

    class Exploding:
        def __reduce__(self) -> tuple:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):  # a save that dies half way through pickling
        io.save_checkpoint({"step": 2, "w": torch.zeros(10_000), "bad": Exploding()}, path)
    loaded = io.load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(4.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({"step": 4}, path, storage_options={"x": 1})


class CrashingModel(PoisonedModel):
    """Raises RuntimeError in the training step of global step `at`."""

    def __init__(self, at: int) -> None:
        super().__init__({})
        self.at = at

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        if self.global_step == self.at:
            raise RuntimeError("disk on fire")
        return super().training_step(batch, batch_idx)


def _fit_with_exception_checkpoint(model: PoisonedModel, guard: NonFiniteGuard, root: Path) -> Path:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=20, callbacks=[guard, ExceptionCheckpoint()], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    with pytest.raises((RuntimeError, NonFiniteLossError)):
        trainer.fit(model)
    return root / "checkpoints" / "on_exception.ckpt"


def test_a_crash_leaves_a_checkpoint_of_the_last_completed_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CrashingModel(at=4)
    ckpt = _fit_with_exception_checkpoint(model, NonFiniteGuard(), tmp_path)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 4 and len(model.weights) == 4
    assert torch.equal(saved["state_dict"]["layer.weight"], model.weights[-1])
    assert newest_checkpoint([ckpt.parent]) == ckpt  # what --ckpt_path last resumes


def test_the_guard_stopping_a_run_leaves_a_checkpoint(tmp_path: Path) -> None:
    model = PoisonedModel({s: float("nan") for s in range(3, 100)})
    ckpt = _fit_with_exception_checkpoint(model, NonFiniteGuard(max_consecutive=2), tmp_path)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 4 and torch.isfinite(saved["state_dict"]["layer.weight"]).all()
