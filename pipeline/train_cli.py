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


def run_lightning(argv: list[str]) -> int:
    """`wm fit|validate|test ARGS`: parse, instantiate and run the subcommand.

    sys.argv is left as it is: Lightning's DDP launcher starts the other ranks by re-running it.
    """
    LightningCLI(args=argv, **CLI_ARGS)
    return 0


def build_cli(args: list[str]) -> LightningCLI:
    """Parse and instantiate model, data and trainer from config arguments without running anything.

    For in-process callers (the demo, tests) on one process: `args` alone defines the run, so the
    caller's own command line is hidden from LightningCLI while it parses.
    """
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return LightningCLI(args=args, run=False, **CLI_ARGS)
    finally:
        sys.argv = argv
