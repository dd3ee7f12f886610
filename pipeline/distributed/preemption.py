"""Preemption and time limits: a signal stops the run at the next step boundary with one checkpoint, on every rank.

SLURM sends the requeue signal (`#SBATCH --signal=SIGUSR1@120`) and, on preemption or cancellation, SIGTERM to
every process of the step, DataLoader workers included. Saving inside a signal handler (what Lightning's SLURM
handler does) runs in every process that inherited the handler, workers too (each requeued the job and wrote a
stale copy), and starts collectives on whichever ranks happened to get the signal first, which hangs.

Here a handler only sets a flag, and only in the process that installed it (workers inherit it and ignore the
signal). At each optimizer-step boundary the ranks agree on the flag with one collective (max), so all of them
stop after the same step; the run then writes one checkpoint (`last.ckpt` in the run's checkpoint directory,
which `--ckpt_path last|auto` resumes), rank 0 alone calls `scontrol requeue` for the requeue signal, and the
trainer stops.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


def slurm_job_id() -> str | None:
    """The SLURM job to requeue (array jobs as JOBID_TASKID), or None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the first ModelCheckpoint's directory, else ROOT/checkpoints."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


class Preemption(pl.Callback):
    """Stop cleanly on SIGUSR1/SIGTERM: agree across ranks at a step boundary, checkpoint once, requeue once."""

    def __init__(self, signals: tuple[str, ...] = ("SIGUSR1", "SIGTERM"), requeue_on: tuple[str, ...] = ("SIGUSR1",),
                 filename: str = "last") -> None:  # fmt: skip
        """
        Args:
            signals: signals that stop the run with a checkpoint.
            requeue_on: of those, the ones after which rank 0 requeues the SLURM job (the time-limit warning;
                SIGTERM means preemption or scancel, where SLURM itself decides about requeueing).
            filename: checkpoint name in the run's checkpoint directory (`last` is what `--ckpt_path last` finds).
        """
        unknown = [s for s in (*signals, *requeue_on) if not isinstance(getattr(signal, s, None), signal.Signals)]
        if unknown:
            raise ValueError(f"unknown signal names {unknown}")
        self.signals, self.requeue_on, self.filename = tuple(signals), tuple(requeue_on), filename
        self.received: str | None = None
        self._owner: int | None = None
        self._previous: dict[int, Any] = {}
        self._step_seen = -1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:  # a DataLoader worker that inherited the handler: the main process decides
            return
        name = signal.Signals(signum).name
        if self.received is None or name in self.requeue_on:
            self.received = name

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._owner = os.getpid()
        for name in self.signals:
            signum = getattr(signal, name)
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # before Lightning registers its own handlers: with one already in place it adds no SLURM requeue handler
        self.received = None
        self._install()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning's SIGTERM handler (installed after setup) broadcasts inside the handler; replace it
        self._install()
        self._step_seen = trainer.global_step

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread() and self._owner == os.getpid():
            for signum, previous in self._previous.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _agreed(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        """The signal any rank received (requeue signals first), the same answer on every rank."""
        code = 0 if self.received is None else 2 if self.received in self.requeue_on else 1
        flag = torch.tensor(float(code), device=pl_module.device)
        code = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if code == 0:
            return None
        return self.received or (self.requeue_on[0] if code == 2 and self.requeue_on else "a signal on another rank")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._step_seen:  # gradient accumulation: not an optimizer-step boundary
            return
        self._step_seen = trainer.global_step
        received = self._agreed(trainer, pl_module)
        if received is None:
            return
        path = checkpoint_dir(trainer) / f"{self.filename}.ckpt"
        trainer.save_checkpoint(path)
        mark_saved(trainer, path)
        if trainer.is_global_zero:
            log.warning("%s received: saved %s at step %d", received, path, trainer.global_step)
            print(f"wm: {received} received; saved {path} at step {trainer.global_step}", flush=True)
            if received in self.requeue_on:
                requeue()
        trainer.should_stop = True


class ExceptionCheckpoint(pl.Callback):
    """Save `ROOT/checkpoints/on_exception.ckpt` when training stops on an exception, where that is safe.

    Safe: in a one-process run (a crash, a KeyboardInterrupt), or on NonFiniteLossError, which every rank raises
    after the same step. Any other exception in a multi-process run happens on some ranks only, while the others
    wait in a collective: a save (itself collective) would hang, so the run ends with its last regular checkpoint.
    The exception is raised before an optimizer step changes the weights, so the file holds the last completed
    step; `--ckpt_path last` resumes it when it is the newest checkpoint.
    """

    def __init__(self, filename: str = "on_exception") -> None:
        """
        Args:
            filename: checkpoint name in the run's checkpoint directory.
        """
        self.filename = filename

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from pipeline.distributed.guard import NonFiniteLossError

        if not trainer.training or trainer.sanity_checking or trainer.global_step == 0:
            return
        if trainer.world_size > 1 and not isinstance(exception, NonFiniteLossError):
            if trainer.is_global_zero:
                print(f"wm: {type(exception).__name__} on a multi-process run: no checkpoint on exception "
                      "(resume from the last regular one)", flush=True)  # fmt: skip
            return
        path = checkpoint_dir(trainer) / f"{self.filename}.ckpt"
        trainer.save_checkpoint(path)
        mark_saved(trainer, path)
        if trainer.is_global_zero:
            print(f"wm: {type(exception).__name__}: saved {path} at step {trainer.global_step}", flush=True)


def mark_saved(trainer: pl.Trainer, path: Path) -> None:
    """Tell the ModelCheckpoint callbacks that this step is saved, as `path`.

    The stop ends the epoch early, and ModelCheckpoint would otherwise save the same step again: at the epoch's
    end (as `last-v1.ckpt` next to a `last.ckpt` it did not write) and at the end of training (over `last.ckpt`,
    with the epoch marked finished, so a resumed run would skip the rest of the epoch). Lightning has no public
    call for this; it reads `_last_global_step_saved` and `_last_checkpoint_saved`
    (tests/distributed/test_preemption.py fails if that changes).
    """
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            cb._last_global_step_saved = trainer.global_step
            cb._last_checkpoint_saved = str(path)
            if cb.dirpath and Path(cb.dirpath) == path.parent and path.stem == cb.CHECKPOINT_NAME_LAST:
                cb.last_model_path = str(path)


def requeue() -> bool:
    """`scontrol requeue` this SLURM job; False (with a message) outside SLURM or when scontrol fails."""
    job = slurm_job_id()
    if job is None:
        print("wm: not a SLURM job; not requeued (resume with --ckpt_path last)", flush=True)
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"wm: scontrol requeue {job} failed: {err}", flush=True)
        return False
    if result.returncode != 0:
        print(f"wm: scontrol requeue {job} failed ({result.returncode}): {result.stderr.strip()[:200]}", flush=True)
        return False
    print(f"wm: requeued SLURM job {job}", flush=True)
    return True
