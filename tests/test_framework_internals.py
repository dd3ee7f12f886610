"""Every private Lightning, DeepSpeed or torch detail the package relies on, checked where an upgrade would break it.

Each test names the module that depends on the detail; when one fails after an upgrade, that module needs a new
way to do the same thing (the behaviour tests next to it show what it is for).
"""

from __future__ import annotations

import inspect

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from pipeline.models.ema_module import EMAWorldModelModule


def test_fit_loop_should_accumulate_is_what_the_ema_update_asks(tmp_path) -> None:
    """pipeline/models/ema_module.py: one EMA update per real optimizer step, none on accumulation micro-batches."""

    class Counting(EMAWorldModelModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.updates: list[int] = []

        def training_step(self, batch, batch_idx):
            return self.layer(batch).square().mean()

        def update_ema(self, step: int) -> None:
            self.updates.append(step)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4)

        def rollout(self, *args, **kwargs):
            raise NotImplementedError

    model = Counting()
    trainer = pl.Trainer(max_steps=3, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    assert callable(getattr(trainer.fit_loop, "_should_accumulate", None))
    trainer.fit(model)
    assert model.updates == [1, 2, 3]


def test_epoch_loop_batch_progress_counts_processed_batches(tmp_path) -> None:
    """pipeline/data/datamodule.py: the stream position saved with a checkpoint is the processed batch count."""
    trainer = pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(BoringModel())
    assert trainer.fit_loop.epoch_loop.batch_progress.current.processed == 5


def test_model_checkpoint_bookkeeping_the_preemption_save_updates() -> None:
    """pipeline/distributed/preemption.py (mark_saved): ModelCheckpoint's own record of what it saved."""
    callback = ModelCheckpoint()
    assert hasattr(callback, "_last_global_step_saved") and hasattr(callback, "_last_checkpoint_saved")
    source = inspect.getsource(ModelCheckpoint)
    assert "self._last_global_step_saved == trainer.global_step" in source
    assert "not self._last_checkpoint_saved" in source


def test_lightning_deepspeed_internals_zero_strategy_and_export_use() -> None:
    """pipeline/distributed/strategy.py overrides `_format_config`; export strips `_forward_module.`, the prefix a
    module wrapped by Lightning Fabric (DeepSpeed checkpoints written through Fabric) carries."""
    from lightning.fabric.wrappers import _FabricModule
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from pipeline.distributed.export import WRAPPER_PREFIX

    assert "self._format_config()" in inspect.getsource(DeepSpeedStrategy._init_config_if_needed)
    assert f"self.{WRAPPER_PREFIX.rstrip('.')} = forward_module" in inspect.getsource(_FabricModule.__init__)


def test_module_compile_sets_compiled_call_impl() -> None:
    """pipeline/models/compile.py (is_compiled): nn.Module.compile() works in place through `_compiled_call_impl`."""
    layer = torch.nn.Linear(2, 2)
    assert getattr(layer, "_compiled_call_impl", "missing") is None
    layer.compile()
    assert layer._compiled_call_impl is not None
