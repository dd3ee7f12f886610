"""LightningCLI for `wm fit|validate|test`: model and data are chosen by class_path in YAML."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


def run_lightning(argv: list[str]) -> int:
    LightningCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=argv,
    )
    return 0
