"""Exact resume: every rank's random-number state travels in the Lightning checkpoint.

The data-stream position is the datamodule's own state (ShardDataModule.state_dict gathers every rank's
per-worker cursor; Lightning saves and restores it). What else a resumed run needs to reproduce the
uninterrupted one is the random state of each rank: Lightning saves none, and a model that draws noise or
dropout from the global generators would diverge. `ResumeState` gathers the states (torch, CUDA, numpy,
python) of all ranks into `checkpoint["wm_resume"]` and restores this rank's just before the first resumed
training batch, where the uninterrupted run had them.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist

KEY = "wm_resume"


def rng_state() -> dict[str, Any]:
    """This process's random states (python, numpy, torch CPU and, when present, CUDA)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # tensors and plain values only, so that the checkpoint loads with torch.load(weights_only=True)
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of rng_state()."""
    random.setstate(_as_python_state(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state: Any) -> tuple:
    # a checkpoint loaded with weights_only turns the tuples of random.getstate() into lists
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def gather(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (a list of one outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ResumeState(pl.Callback):
    """Saves every rank's random state in the checkpoint and restores this rank's on resume.

    Resuming on a different world size warns and gives every rank the random state of rank 0.
    """

    def __init__(self) -> None:
        self._pending_rng: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # a collective: Lightning calls this hook on every rank, and only rank 0 writes the file
        checkpoint[KEY] = {"world_size": trainer.world_size, "rng": gather(rng_state())}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        saved = checkpoint.get(KEY)
        if saved is None:
            return
        states = saved["rng"]
        if len(states) != trainer.world_size:
            warnings.warn(
                f"checkpoint was saved by {len(states)} ranks, resuming on {trainer.world_size}: "
                "every rank continues with rank 0's random state",
                RuntimeWarning,
                stacklevel=2,
            )
            self._pending_rng = states[0]
            return
        self._pending_rng = states[trainer.global_rank]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
