"""LightningCLI for `wm fit|validate|test`: model and data are chosen by class_path in YAML."""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from pipeline.distributed.threads import apply_thread_budget


def configure_threads(trainer: pl.Trainer, datamodule: pl.LightningDataModule | None) -> int | None:
    """Intra-op threads for this process: the node's cores shared by its ranks, one core left per data worker."""
    workers = int(getattr(datamodule, "num_workers", 0) or 0)
    return apply_thread_budget(local_processes=trainer.num_devices, workers=workers)


class WorldModelCLI(LightningCLI):
    """LightningCLI that sets the process's thread budget before the subcommand runs."""

    def _prepare(self) -> None:
        configure_threads(self.trainer, self.datamodule)

    def before_fit(self) -> None:
        self._prepare()

    def before_validate(self) -> None:
        self._prepare()

    def before_test(self) -> None:
        self._prepare()


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
    WorldModelCLI(args=argv, **CLI_ARGS)
    return 0


def build_cli(args: list[str]) -> LightningCLI:
    """Parse and instantiate model, data and trainer from config arguments without running anything.

    For in-process callers (the demo, tests) on one process: `args` alone defines the run, so the
    caller's own command line is hidden from LightningCLI while it parses. The thread budget is set
    as `wm fit` sets it.
    """
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli = WorldModelCLI(args=args, run=False, **CLI_ARGS)
    finally:
        sys.argv = argv
    configure_threads(cli.trainer, cli.datamodule)
    return cli
