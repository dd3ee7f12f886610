"""The WebDataset stream: shard list -> node split -> worker split -> shard shuffle -> tar reading ->
sample shuffle -> clip decode -> batch, built by `build_stream(...)`.

Train mode reads an endless, seeded sequence of shard orders (a fresh permutation per pass, seeded by
seed and epoch) and every (rank, worker) yields a fixed number of batches, so every rank runs exactly
`steps_per_epoch` steps. Eval mode reads every sample exactly once across all ranks and workers, in a
deterministic order. Only the keys of the shard format are read; nothing is unpickled.
"""

from __future__ import annotations

import glob
import os
import random
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import braceexpand
import numpy as np
import torch
import webdataset as wds

from pipeline.data.decode import ClipSpec, Decoder
from pipeline.data.parse import SHARD_SUFFIXES, SkipTracker, collate, decode_sample, wait_for
from pipeline.distributed.env import dist_env, worker_info

Mode = Literal["train", "eval"]
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://", "ais://", "hf://")


def list_shards(spec: str | Path | list[str], allow_pipe: bool = False) -> list[str]:
    """Shard URLs from a directory (its *.tar), a glob, a brace pattern (`a-{000..009}.tar`) or a list.

    `pipe:` and network URLs run a shell command inside webdataset, so they are refused unless
    allow_pipe=True.
    """
    items = [str(s) for s in spec] if isinstance(spec, (list, tuple)) else [str(spec)]
    urls: list[str] = []
    for item in items:
        if item.startswith(REMOTE_PREFIXES):
            if not allow_pipe:
                raise ValueError(f"shard URL {item[:80]!r} runs a command or download; set allow_pipe=True to allow it")
            urls.extend(braceexpand.braceexpand(item))
        elif os.path.isdir(item):
            urls.extend(sorted(glob.glob(os.path.join(item, "*.tar"))))
        elif any(c in item for c in "*?["):
            urls.extend(sorted(glob.glob(item)))
        else:
            urls.extend(braceexpand.braceexpand(item))
    if not urls:
        raise FileNotFoundError(f"no shards found for {spec!r} (expected a directory of .tar, a glob or braces)")
    return urls


def check_shards(urls: list[str], retries: int = 2, delay: float = 0.2) -> list[str]:
    """Local shards that exist (each missing one retried, then skipped with a warning).

    Raises RuntimeError when more than half of the shards are missing: the dataset path is wrong.
    """
    missing = [u for u in urls if not u.startswith(REMOTE_PREFIXES) and not wait_for(u, retries, delay)]
    if len(missing) * 2 > len(urls):
        raise RuntimeError(f"{len(missing)} of {len(urls)} shards are missing (first: {missing[0]}); check the path")
    for url in missing:
        _warn(f"shard {url} is missing; skipped")
    return [u for u in urls if u not in set(missing)]


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=3)


def worker_seed(seed: int, epoch: int, rank: int | None = None, worker: int | None = None) -> int:
    """Seed of one (rank, worker) in one epoch (like open_clip's pytorch_worker_seed, plus seed and epoch)."""
    if rank is None:
        rank = dist_env().rank
    if worker is None:
        worker = worker_info()[0]
    return wds.utils.make_seed(seed, epoch, rank, worker)


def shard_passes(urls: list[str], seed: int, epoch: int) -> Iterator[dict[str, str]]:
    """Endless shard sequence: pass p is a permutation of all shards seeded by (seed, epoch, p)."""
    for p in range(2**62):
        order = list(urls)
        random.Random(wds.utils.make_seed(seed, epoch, p)).shuffle(order)
        for url in order:
            yield {"url": url}


def split_slot(src: Iterator[Any], index: int, count: int) -> Iterator[Any]:
    """Items index, index + count, ... of `src` (webdataset's split_by_node/worker with explicit ids)."""
    return islice(src, index, None, count) if count > 1 else src


class ClipStream(torch.utils.data.IterableDataset):
    """Batches of clips from WebDataset shards, per (rank, DataLoader worker).

    Yields dicts: video uint8 [B, T, C, H, W], key list[str], and when present actions float32 [B, T, A],
    rewards float32 [B, T], terminals float32 [B, T], plus what `batch_transform` adds, plus
    `__stream__` (the batch's position and skip counts), which the loader removes.

    The position (seed, train 0/1, epoch, rank, logical worker, sample cursor after the batch; all ints, see
    `position`) is in the batch under `__stream__` already when `batch_transform` runs, so a transform that
    draws random numbers can seed them from it and repeat exactly on resume (pipeline.nn.masks.MaskCollator).
    """

    def __init__(
        self,
        urls: list[str],
        spec: ClipSpec,
        mode: Mode,
        batch_size: int,
        steps_per_epoch: int | None = None,
        max_samples: int | None = None,
        shuffle_buffer: int = 64,
        seed: int = 0,
        decoder: Decoder = "decord",
        batch_transform: Callable[[dict], dict] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shard_retries: int = 2,
        retry_delay: float = 0.2,
        max_consecutive_skips: int = 1000,
    ) -> None:
        super().__init__()
        if mode == "train" and not steps_per_epoch:
            raise ValueError("train mode needs steps_per_epoch (every rank runs exactly that many steps)")
        self.urls, self.spec, self.mode, self.batch_size = urls, spec, mode, batch_size
        self.steps_per_epoch, self.max_samples = steps_per_epoch, max_samples
        self.shuffle_buffer, self.seed, self.decoder = shuffle_buffer, seed, decoder
        self.batch_transform = batch_transform
        self.rank, self.world_size = rank, world_size
        self.shard_retries, self.retry_delay = shard_retries, retry_delay
        self.max_consecutive_skips = max_consecutive_skips
        self.epoch = 0
        self.resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        """Training batches per epoch on this rank (`steps_per_epoch`); eval streams have no known length.

        With a length, Lightning counts an epoch's batches itself: its progress bar shows the epoch's total, and a
        checkpoint saved after an epoch's last batch resumes at the next epoch (without one, Lightning's restart
        counted that epoch twice).
        """
        if self.mode != "train":
            raise TypeError("an eval stream has no length: it reads every sample once")
        return int(self.steps_per_epoch or 0)

    def set_epoch(self, epoch: int) -> None:
        """Start of an epoch: the shard order and sample shuffle are seeded by (seed, epoch)."""
        self.epoch = int(epoch)

    def set_resume(self, resume: dict[str, Any] | None) -> None:
        """Continue the current epoch: {"rotation": r, "workers": {logical id: {"cursor", "batches"}}}."""
        self.resume = resume

    def _place(self) -> tuple[int, int, int, int]:
        env = dist_env() if self.rank is None or self.world_size is None else None
        rank = self.rank if self.rank is not None else env.rank
        world = self.world_size if self.world_size is not None else env.world_size
        worker, workers = worker_info()
        return rank, world, worker, workers

    def quota(self, worker: int, workers: int) -> int:
        """Batches that logical worker `worker` yields per train epoch; they sum to steps_per_epoch."""
        steps = int(self.steps_per_epoch or 0)
        return steps // workers + int(worker < steps % workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, physical, workers = self._place()
        resume = self.resume or {}
        worker = (physical + int(resume.get("rotation", 0))) % workers  # see set_resume: keeps batch order
        done = resume.get("workers", {}).get(worker, {"cursor": 0, "batches": 0})
        tracker = SkipTracker()
        pipeline = self._pipeline(rank, world, worker, workers, tracker, int(done["cursor"]))
        batches = pipeline if self.mode == "eval" else islice(pipeline, self.quota(worker, workers) - done["batches"])
        for batch in batches:
            position = self.position(rank, worker, batch.pop("__cursor__"))
            batch["__stream__"] = dict(position)
            if self.batch_transform is not None:
                batch = self.batch_transform(batch)
            batch["__stream__"] = {**position, "skips": dict(tracker.counts), "warnings": tracker.pending}
            tracker.pending = []
            yield batch

    def position(self, rank: int, worker: int, cursor: int) -> dict[str, int]:
        """Where a batch sits in the run; the same batch has the same position in a resumed run.

        cursor: this (rank, logical worker)'s sample count after the batch, skipped samples included.
        Eval passes read the same samples every time, so their epoch is always 0.
        """
        train = self.mode == "train"
        return {"seed": self.seed, "train": int(train), "epoch": self.epoch if train else 0, "rank": rank,
                "worker": worker, "cursor": int(cursor)}  # fmt: skip

    def _pipeline(self, rank: int, world: int, worker: int, workers: int, tracker: SkipTracker, skip: int):
        slot, slots = rank * workers + worker, world * workers
        train = self.mode == "train"
        tracker.configure(len(self.urls), self.max_consecutive_skips)
        if train:
            stages: list[Any] = [
                lambda: shard_passes(self.urls, self.seed, self.epoch),
                lambda src: split_slot(src, rank, world),  # split by node
                lambda src: split_slot(src, worker, workers),  # split by worker
            ]
        elif len(self.urls) >= slots:  # enough shards: each (rank, worker) reads its own shards
            stages = [
                lambda: ({"url": u} for u in self.urls),
                lambda src: split_slot(src, rank, world),
                lambda src: split_slot(src, worker, workers),
            ]
        else:  # fewer shards than readers: all read every shard and keep every slots-th sample
            stages = [lambda: ({"url": u} for u in self.urls)]
        stages += [
            lambda src: tracker.watch_shards(src, self.shard_retries, self.retry_delay),
            wds.tarfile_to_samples(handler=tracker.handler, select_files=_format_file),
            tracker.seen,
        ]
        if not train and len(self.urls) < slots:
            stages.append(lambda src: split_slot(src, slot, slots))
        if not train and self.max_samples is not None:
            cap = self.max_samples // slots + int(slot < self.max_samples % slots)
            stages.append(lambda src: islice(src, cap))
        if train and self.shuffle_buffer > 1:
            rng = random.Random(worker_seed(self.seed, self.epoch, rank, worker))
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        stages += [
            lambda src: _number(src, skip),
            lambda src: self._decode(src, tracker, slot if train else None),
            wds.batched(self.batch_size, collation_fn=collate, partial=not train),
        ]
        return iter(wds.DataPipeline(*stages))

    def _decode(self, src: Iterator[dict], tracker: SkipTracker, slot: int | None) -> Iterator[dict]:
        for sample in src:
            rng = None
            if slot is not None:  # per-sample seed: a resumed stream skips samples without decoding them
                rng = np.random.default_rng([self.seed, self.epoch, slot, sample["__index__"]])
            clip = tracker.run(decode_sample, sample, self.spec, rng, self.decoder)
            if clip is not None:
                yield clip


def _format_file(name: str) -> bool:
    """Read only the files of the shard format from the tar (a .pyd or .pickle member is never even read)."""
    base = os.path.basename(name)
    return "." in base and base.split(".", 1)[1].lower() in SHARD_SUFFIXES


def _number(src: Iterator[dict], skip: int) -> Iterator[dict]:
    """Attach the sample's position in this worker's stream; drop the first `skip` (resume)."""
    for index, sample in enumerate(src):
        if index >= skip:
            sample["__index__"] = index
            yield sample


def build_stream(
    shards: str | Path | list[str],
    spec: ClipSpec,
    mode: Mode = "train",
    batch_size: int = 8,
    steps_per_epoch: int | None = None,
    max_samples: int | None = None,
    shuffle_buffer: int = 64,
    seed: int = 0,
    decoder: Decoder = "decord",
    batch_transform: Callable[[dict], dict] | None = None,
    allow_pipe: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    shard_retries: int = 2,
    retry_delay: float = 0.2,
) -> ClipStream:
    """The one streaming pipeline for train and eval; see the module docstring.

    rank/world_size: default to pipeline.distributed.env.dist_env() (read when iterating).
    max_samples: eval mode only, at most this many samples in total over all ranks and workers.
    """
    urls = check_shards(list_shards(shards, allow_pipe), shard_retries, retry_delay)
    return ClipStream(
        urls, spec, mode, batch_size, steps_per_epoch=steps_per_epoch, max_samples=max_samples,
        shuffle_buffer=shuffle_buffer, seed=seed, decoder=decoder, batch_transform=batch_transform,
        rank=rank, world_size=world_size, shard_retries=shard_retries, retry_delay=retry_delay,
    )  # fmt: skip
