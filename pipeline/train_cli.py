"""LightningCLI for `wm fit|validate|test`: model and data are chosen by class_path in YAML."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

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


def quiet_lightning() -> None:
    """Drop Lightning's advertising and the LightningCLI notes that do not apply to `wm` (it passes its arguments)."""
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within Python")
    warnings.filterwarnings("ignore", message=r"Starting from v1\.9\.0, `tensorboardX` has been removed")
    # the train stream's length is exact: every worker yields its own quota of the epoch's batches
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    # the data module restores the stream position of a mid-epoch checkpoint itself (ShardDataModule.state_dict)
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    # Lightning's own use of a torch API torch deprecated; nothing a user can act on
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(lambda record: not record.getMessage().startswith("💡 Tip:"))


def closing_line(trainer: pl.Trainer, seconds: float) -> str:
    """Where a finished fit left its checkpoints, metrics and logs, in one line."""
    parts = [f"wm fit: {trainer.global_step} steps in {seconds:.0f} s"]
    ckpt = trainer.checkpoint_callback
    last = Path(ckpt.last_model_path) if getattr(ckpt, "last_model_path", "") else None
    if last is not None and last.exists():
        parts.append(f"checkpoint {last} (resume: the same command with --ckpt_path last)")
    elif ckpt is not None and ckpt.dirpath:
        parts.append(f"checkpoints in {ckpt.dirpath}")
    logger = trainer.logger
    if logger is not None and logger.log_dir:
        metrics = Path(logger.log_dir) / "metrics.csv"
        parts.append(f"metrics {metrics}" if metrics.exists() else f"logs {logger.log_dir}")
    return "; ".join(parts)


def check_data(datamodule: pl.LightningDataModule | None, stage: str) -> None:
    """Stop with one line when the data module's shards for `stage` are missing, before any process starts."""
    from pipeline.data.stream import check_shards, list_shards

    keys = ["train_shards", "val_shards"] if stage == "fit" else ["val_shards"]
    for key in keys:
        spec = getattr(datamodule, key, None)
        if not spec:
            continue
        try:
            check_shards(list_shards(spec, getattr(datamodule, "allow_pipe", False)), retries=0)
        except (FileNotFoundError, RuntimeError) as err:
            hint = ""
            if "data/sample" in str(spec):
                hint = "; build the bundled sample corpus with `wm shards sample --out data/sample`"
            raise ConfigError(f"data.init_args.{key}: {err}{hint}") from None


class WorldModelCLI(LightningCLI):
    """LightningCLI that sets the thread budget, and for `fit` fixes the checkpoint directories and resolves
    `--ckpt_path` before the run and says where everything went after it."""

    _started = 0.0

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--compile", type=Literal["off", "blocks", "modules"], default="off",
            help="torch.compile each transformer block (blocks), each child module (modules), or nothing (off)",
        )  # fmt: skip
        parser.add_argument(
            "--activation_checkpointing", type=Literal["off", "blocks"], default="off",
            help="recompute each transformer block's activations in the backward (less memory, one more forward)",
        )  # fmt: skip

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # e.g. a GPU trainer config on a machine without GPUs
            hint = ""
            if "gpu" in str(err).lower() or "cuda" in str(err).lower():
                hint = ("; without GPUs use --config configs/trainer/cpu.yaml, or add --trainer.accelerator cpu "
                        "--trainer.precision 32-true to the DDP config")  # fmt: skip
            raise ConfigError(f"trainer: {str(err).strip().splitlines()[0]}{hint}") from None

    def _prepare(self) -> None:
        check_data(self.datamodule, self.subcommand)
        configure_threads(self.trainer, self.datamodule)
        config = self.config[self.subcommand] if self.subcommand else {}
        if config.get("activation_checkpointing", "off") != "off":
            from pipeline.models.memory import checkpoint_activations

            checkpoint_activations(self.model, config["activation_checkpointing"])
        mode = config.get("compile", "off")
        if mode != "off":
            from pipeline.models.compile import compile_model

            compiled = compile_model(self.model, mode)
            if self.trainer.is_global_zero:
                print(f"wm: compiled {len(compiled)} modules ({mode})", flush=True)

    def before_fit(self) -> None:
        self._prepare()
        config = self.config_init[self.subcommand]
        config["ckpt_path"] = prepare_fit(self.trainer, config.get("ckpt_path"))
        self._started = time.monotonic()

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(closing_line(self.trainer, time.monotonic() - self._started), flush=True)

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
    quiet_lightning()
    WorldModelCLI(args=argv, **CLI_ARGS)
    return 0


def build_cli(args: list[str]) -> LightningCLI:
    """Parse and instantiate model, data and trainer from config arguments without running anything.

    For in-process callers (the demo, tests) on one process: `args` alone defines the run, so the
    caller's own command line is hidden from LightningCLI while it parses. The thread budget is set
    as `wm fit` sets it.
    """
    quiet_lightning()
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli = WorldModelCLI(args=args, run=False, **CLI_ARGS)
    finally:
        sys.argv = argv
    configure_threads(cli.trainer, cli.datamodule)
    return cli
