"""LightningCLI for `wm fit|validate|test`: model and data are chosen by class_path in YAML."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from pipeline.distributed.checkpoint import ResumeError, remove_stale, resolve_ckpt_path
from pipeline.distributed.env import dist_env
from pipeline.distributed.strategy import ConfigError
from pipeline.distributed.threads import apply_thread_budget


def configure_threads(trainer: pl.Trainer, datamodule: pl.LightningDataModule | None) -> int | None:
    """Intra-op threads for this process: the node's cores shared by its ranks, one core left per data worker."""
    workers = int(getattr(datamodule, "num_workers", 0) or 0)
    return apply_thread_budget(local_processes=trainer.num_devices, workers=workers)


RESUME_ENV = "WM_RESUME_PATH"  # the first process's resolved --ckpt_path, for the ranks it starts


def checkpoint_dirs(trainer: pl.Trainer) -> list[Path]:
    """The run's checkpoint directories, fixed under `trainer.default_root_dir` whatever version the logger picks.

    A ModelCheckpoint without a dirpath would write into the logger's new version_N folder of every launch, where
    `--ckpt_path last` finds nothing; it gets ROOT/checkpoints instead.
    """
    default = Path(trainer.default_root_dir).expanduser().resolve() / "checkpoints"
    dirs = [default]
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            if cb.dirpath is None:
                cb.dirpath = str(default)
            dirs.append(Path(cb.dirpath))
    return list(dict.fromkeys(dirs))


def prepare_fit(trainer: pl.Trainer, ckpt_path: str | None) -> str | None:
    """Fix the checkpoint directories, clear what a killed run left there (first process only) and resolve
    `--ckpt_path` (last, auto, best, hpc or a path); a `ckpt_path` that names nothing ends the run in one line."""
    dirs = checkpoint_dirs(trainer)
    env = dist_env()
    first = env.rank == 0 and env.local_rank == 0
    if first:
        for d in dirs:
            remove_stale(d)
    inherited = os.environ.get(RESUME_ENV)
    if not first and inherited is not None:  # a rank Lightning started from this process: the same choice
        resolved = inherited or None
    else:
        try:
            resolved = resolve_ckpt_path(ckpt_path, dirs)
        except ResumeError as err:
            raise ConfigError(str(err)) from None
        os.environ[RESUME_ENV] = resolved or ""
    if resolved and ckpt_path in ("last", "auto") and first:
        print(f"wm fit: resuming from {resolved}", flush=True)
    return resolved


class WorldModelCLI(LightningCLI):
    """LightningCLI that sets the thread budget, and for `fit` fixes the checkpoint directories and resolves
    `--ckpt_path`, before the subcommand runs."""

    def _prepare(self) -> None:
        configure_threads(self.trainer, self.datamodule)

    def before_fit(self) -> None:
        self._prepare()
        config = self.config_init[self.subcommand]
        config["ckpt_path"] = prepare_fit(self.trainer, config.get("ckpt_path"))

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
