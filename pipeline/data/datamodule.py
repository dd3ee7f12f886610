"""ShardDataModule: the LightningDataModule over `build_stream` for train and validation.

Batches: video uint8 [B, T, C, H, W], key list[str], and when the dataset has them actions float32
[B, T, A] (discrete actions one-hot), rewards float32 [B, T], terminals float32 [B, T], plus what
`batch_transform` adds. Skipped samples are counted per reason (`skip_counts`) and logged as
`data/skipped_<reason>` metrics. `state_dict()` holds the stream position for exact resume.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from pipeline.data.decode import ClipSpec
from pipeline.data.stream import ClipStream, build_stream
from pipeline.distributed.env import dist_env


class StreamLoader(DataLoader):
    """DataLoader over a ClipStream: sets the epoch on each pass, strips the per-batch stream record
    (worker, sample cursor, skip counts) and keeps it in `records` / `skip_counts` in the main process."""

    def __init__(self, stream: ClipStream, num_workers: int, epoch_fn: Callable[[], int] | None = None) -> None:
        # A generator of its own: each new iterator (every epoch) draws the workers' base seed from it, not from the
        # global generator, whose state at a step is what a resumed run restores (the stream seeds itself)
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
        self.stream = stream
        self.epoch_fn = epoch_fn
        self.passes = 0
        self.records: list[tuple[int, int]] = []  # (logical worker, cursor after the batch), in batch order
        self.base: dict[int, dict[str, int]] = {}  # per logical worker, what a resumed epoch had consumed
        self.skip_counts: Counter[str] = Counter()
        self._finished: Counter[str] = Counter()
        self._latest: dict[int, dict[str, int]] = {}
        self.on_skips: Callable[[Counter[str]], None] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.passes
        self.passes += 1
        if epoch != self.stream.epoch:
            self.stream.set_resume(None)
            self.base = {}
        self.stream.set_epoch(epoch)
        self.records = []
        for counts in self._latest.values():
            self._finished.update(counts)
        self._latest = {}
        for batch in super().__iter__():
            self.stream.set_resume(None)  # applies to the pass just started only
            record = batch.pop("__stream__")
            for message in record["warnings"]:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            self.records.append((record["worker"], record["cursor"]))
            if record["skips"] != self._latest.get(record["worker"], {}):
                self._latest[record["worker"]] = record["skips"]
                self.skip_counts = self._finished.copy()
                for counts in self._latest.values():
                    self.skip_counts.update(counts)
                if self.on_skips is not None:
                    self.on_skips(self.skip_counts)
            yield batch

    def position(self, consumed: int | None = None) -> dict[str, Any]:
        """Where the stream stands after `consumed` batches of this pass (default: all fetched)."""
        records = self.records if consumed is None else self.records[:consumed]
        workers = {w: dict(v) for w, v in self.base.items()}
        for worker, cursor in records:
            entry = workers.setdefault(worker, {"cursor": 0, "batches": 0})
            entry["cursor"] = cursor
            entry["batches"] += 1
        total = sum(v["batches"] for v in workers.values())
        return {"epoch": self.stream.epoch, "batches": total, "workers": workers}


class ShardDataModule(pl.LightningDataModule):
    """Streams clips from WebDataset shards (see pipeline.data.stream) for fit and validate."""

    def __init__(
        self,
        train_shards: str | None = None,
        val_shards: str | None = None,
        frames: int = 8,
        frame_stride: int = 1,
        fps: float | None = None,
        resolution: int = 64,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        steps_per_epoch: int = 100,
        val_samples: int | None = None,
        decoder: Literal["decord", "pyav"] = "decord",
        shuffle_buffer: int = 64,
        seed: int = 0,
        batch_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        allow_pipe: bool = False,
        max_pixels: int = 4096 * 2304,
        max_frames: int = 200_000,
        shard_retries: int = 2,
    ) -> None:
        """
        Args:
            train_shards: training shards: a directory of .tar, a glob or a brace pattern.
            val_shards: validation shards (same forms); None disables validation.
            frames: frames per clip (T).
            frame_stride: source frames between two clip frames (ignored when fps is set).
            fps: target frame rate of the clip; the stride becomes source fps / fps.
            resolution: side of the square clip after resizing the shorter side and cropping.
            batch_size: clips per training batch (per rank).
            val_batch_size: clips per validation batch (default: batch_size).
            num_workers: DataLoader worker processes per rank.
            steps_per_epoch: training batches per epoch on every rank (equal on all ranks).
            val_samples: validate on at most this many samples over all ranks (None: every sample once).
            decoder: video decoder, decord (default) or pyav.
            shuffle_buffer: samples in each worker's shuffle buffer (train).
            seed: seed of shard orders, sample shuffles, clip starts and crops.
            batch_transform: picklable callable applied to each collated batch inside the workers; the batch's
                stream position (batch["__stream__"]) seeds any randomness, e.g. MaskCollator's masks.
            allow_pipe: allow `pipe:` and network shard URLs (they run commands).
            max_pixels: skip videos larger than this many pixels per frame (declared or decoded).
            max_frames: skip videos longer than this many frames (declared or decoded).
            shard_retries: retries for a missing shard before it is skipped.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["batch_transform"])
        self.spec = ClipSpec(frames, frame_stride, fps, resolution, max_pixels, max_frames)
        self.train_shards, self.val_shards = train_shards, val_shards
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.steps_per_epoch, self.val_samples = num_workers, steps_per_epoch, val_samples
        self.decoder, self.shuffle_buffer, self.seed = decoder, shuffle_buffer, seed
        self.batch_transform, self.allow_pipe, self.shard_retries = batch_transform, allow_pipe, shard_retries
        self._train_loader: StreamLoader | None = None
        self._resume: dict[str, Any] | None = None

    def _stream(self, shards: str, mode: Literal["train", "eval"]) -> ClipStream:
        return build_stream(
            Path(shards) if Path(shards).is_dir() else shards, self.spec, mode,
            batch_size=self.batch_size if mode == "train" else self.val_batch_size,
            steps_per_epoch=self.steps_per_epoch if mode == "train" else None,
            max_samples=self.val_samples if mode == "eval" else None,
            shuffle_buffer=self.shuffle_buffer, seed=self.seed, decoder=self.decoder,
            batch_transform=self.batch_transform, allow_pipe=self.allow_pipe, shard_retries=self.shard_retries,
        )  # fmt: skip

    def _epoch(self) -> int:
        trainer = self.trainer
        return int(trainer.current_epoch) if trainer is not None else self._train_loader.passes

    def train_dataloader(self) -> StreamLoader:
        if not self.train_shards:
            raise ValueError("ShardDataModule.train_shards is not set; it is needed to fit")
        loader = StreamLoader(self._stream(self.train_shards, "train"), self.num_workers, self._epoch)
        loader.on_skips = self._log_skips
        self._train_loader = loader
        if self._resume is not None:
            self._apply_resume(loader, self._resume)
            self._resume = None
        return loader

    def val_dataloader(self) -> StreamLoader | list:
        if not self.val_shards:
            return []
        return StreamLoader(self._stream(self.val_shards, "eval"), self.num_workers)

    @property
    def skip_counts(self) -> dict[str, int]:
        """Skipped training samples and shards per reason so far (this rank)."""
        return dict(self._train_loader.skip_counts) if self._train_loader is not None else {}

    def _log_skips(self, counts: Counter[str]) -> None:
        trainer = self.trainer
        if trainer is None:
            return
        metrics = {f"data/skipped_{reason}": float(n) for reason, n in counts.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _consumed(self) -> int | None:
        """Training batches of the current epoch that the trainer has consumed (None outside a fit)."""
        trainer = self.trainer
        if trainer is None or self._train_loader is None:
            return None
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return max(0, int(done) - sum(v["batches"] for v in self._train_loader.base.values()))

    def state_dict(self) -> dict[str, Any]:
        """Stream position (epoch, per logical worker: sample cursor and batches done), seed, skip counts."""
        if self._train_loader is None:
            return dict(self._resume or {})
        loader = self._train_loader
        state = loader.position(self._consumed())
        state.update(seed=self.seed, num_workers=max(1, self.num_workers), skips=dict(loader.skip_counts))
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            state["ranks"] = self._gather_positions(state["workers"])
        return state

    def _gather_positions(self, workers: dict[int, dict[str, int]]) -> dict[int, dict[int, dict[str, int]]]:
        """Every rank's per-worker position (the checkpoint is written by rank 0 alone).

        Runs a collective: Lightning calls state_dict() on every rank when it saves a checkpoint.
        """
        strategy = self.trainer.strategy
        rows = [[workers.get(w, {}).get("cursor", 0), workers.get(w, {}).get("batches", 0)]
                for w in range(max(1, self.num_workers))]  # fmt: skip
        gathered = strategy.all_gather(torch.tensor(rows, dtype=torch.long, device=strategy.root_device)).cpu()
        return {
            rank: {w: {"cursor": int(c), "batches": int(n)} for w, (c, n) in enumerate(per_rank) if n > 0}
            for rank, per_rank in enumerate(gathered.tolist())
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the stream where `state_dict()` left it (applied when the train loader is next built)."""
        if not state:
            return
        if state.get("seed", self.seed) != self.seed or state.get("num_workers") != max(1, self.num_workers):
            raise ValueError(
                f"cannot resume the data stream exactly: it was saved with seed={state.get('seed')}, "
                f"num_workers={state.get('num_workers')}; now seed={self.seed}, num_workers={self.num_workers}"
            )
        self._resume = dict(state)
        if self._train_loader is not None:
            self._apply_resume(self._train_loader, self._resume)
            self._resume = None

    def _apply_resume(self, loader: StreamLoader, state: dict[str, Any]) -> None:
        workers = state["workers"]
        world, rank = dist_env().world_size, dist_env().rank
        saved_world = len(state["ranks"]) if "ranks" in state else 1
        if saved_world != world:  # another split of the shards: positions do not carry over
            warnings.warn(
                f"the data stream was saved at world size {saved_world} and resumes at {world}: "
                "it restarts the current epoch, so samples may repeat",
                RuntimeWarning,
                stacklevel=2,
            )
            workers = {}
        elif "ranks" in state:
            workers = state["ranks"][rank]
        workers = {int(w): dict(v) for w, v in workers.items()}
        loader.base = workers
        loader.stream.set_epoch(int(state["epoch"]))
        # The DataLoader starts with worker 0; rotate so the next batch comes from the worker
        # that would have produced it in the uninterrupted run.
        batches = sum(v["batches"] for v in workers.values())
        loader.stream.set_resume({"rotation": batches % max(1, self.num_workers), "workers": workers})
        loader._finished = Counter(state.get("skips", {}))
        loader.skip_counts = loader._finished.copy()
