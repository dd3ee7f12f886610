"""Exact resume: every rank's data-stream position and random-number state travel in the Lightning checkpoint.

Lightning saves the checkpoint from rank 0 and would restore rank 0's datamodule state on every rank; but each
rank reads its own shards, so its stream cursor (and what it skipped) is its own. `ResumeState` gathers the
per-rank states into `checkpoint["wm_resume"]` on save and hands each rank its own entry on load; the random
states (torch, CUDA, numpy, python) are restored just before the first resumed training batch, where the
uninterrupted run would have had them.
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
    """Saves every rank's stream position and random state in the checkpoint; restores this rank's on resume.

    The datamodule takes part when it has `state_dict()` / `load_state_dict()` (ShardDataModule does).
    Resuming on a different world size cannot continue the stream exactly: the run warns and each rank
    restarts the current epoch's stream, with the random states of rank 0.
    """

    def __init__(self) -> None:
        self._pending_rng: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        datamodule = trainer.datamodule
        stream = datamodule.state_dict() if datamodule is not None and hasattr(datamodule, "state_dict") else None
        ranks = gather({"stream": stream, "rng": rng_state()})
        checkpoint[KEY] = {"world_size": trainer.world_size, "ranks": ranks}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        saved = checkpoint.get(KEY)
        if saved is None:
            return
        ranks = saved["ranks"]
        if saved["world_size"] != trainer.world_size or len(ranks) != trainer.world_size:
            warnings.warn(
                f"checkpoint was saved by {saved['world_size']} ranks, resuming on {trainer.world_size}: "
                "the data stream restarts the current epoch and samples may repeat",
                RuntimeWarning,
                stacklevel=2,
            )
            self._pending_rng = ranks[0]["rng"]
            return
        mine = ranks[trainer.global_rank]
        datamodule = trainer.datamodule
        if mine["stream"] and datamodule is not None and hasattr(datamodule, "load_state_dict"):
            datamodule.load_state_dict(mine["stream"])  # replaces rank 0's state that Lightning restored
        self._pending_rng = mine["rng"]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
