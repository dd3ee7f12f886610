"""Checkpoint files written atomically: a crash or kill -9 during a save never leaves a truncated checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from pipeline.distributed.checkpoint import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file next to the target, fsync, then os.replace (atomic on POSIX).

    Readers therefore see either the previous complete file or the new complete file; the temporary name
    (pipeline.distributed.checkpoint.partial_path) is never taken for a checkpoint. Loading is Lightning's
    (weights_only where the checkpoint allows it).
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        write_atomic(Path(path), write)
