"""LightningCLI for `wm fit|validate|test`: model and data are chosen by class_path in YAML."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.cli import LightningCLI

CLI_ARGS: dict[str, Any] = dict(
    model_class=None,
    datamodule_class=None,
    subclass_mode_model=True,
    subclass_mode_data=True,
    save_config_kwargs={"overwrite": True},
    seed_everything_default=0,
)


def _cli(args: list[str], run: bool) -> LightningCLI:
    argv, sys.argv = sys.argv, sys.argv[:1]  # `args` alone defines the run, not the caller's command line
    try:
        return LightningCLI(args=args, run=run, **CLI_ARGS)
    finally:
        sys.argv = argv


def run_lightning(argv: list[str]) -> int:
    """`wm fit|validate|test ARGS`: parse, instantiate and run the subcommand."""
    _cli(argv, run=True)
    return 0


def build_cli(args: list[str]) -> LightningCLI:
    """Parse and instantiate model, data and trainer from config arguments without running anything."""
    return _cli(args, run=False)
