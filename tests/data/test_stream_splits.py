"""How samples are spread over ranks and DataLoader workers: eval reads every sample exactly once,
train gives every rank the same number of steps with a fresh seeded shard order per epoch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from pipeline.data.decode import ClipSpec
from pipeline.data.sources.encode import encode_frames
from pipeline.data.stream import build_stream, list_shards, worker_seed

SPEC = ClipSpec(frames=2, frame_stride=1, resolution=8)


def write_dataset(root: Path, sizes: list[int]) -> list[str]:
    """Shards of `sizes[i]` samples each (all the same tiny video); returns every key."""
    video = encode_frames(np.full((3, 32, 32, 3), 90, np.uint8), 10.0)
    meta = json.dumps({"fps": 10, "num_frames": 3, "width": 32, "height": 32}).encode()
    root.mkdir(parents=True, exist_ok=True)
    keys = []
    for shard, size in enumerate(sizes):
        with wds.TarWriter(str(root / f"part-{shard:03d}.tar")) as sink:
            for i in range(size):
                keys.append(f"s{shard}i{i:03d}")
                sink.write({"__key__": keys[-1], "mp4": video, "json": meta})
    return keys


def run(stream, workers: int) -> list[list[str]]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [batch["key"] for batch in loader]


@pytest.mark.parametrize("sizes", [[3, 1, 4, 1, 5, 2], [7, 4]], ids=["split-shards", "split-samples"])
def test_eval_reads_every_sample_once_over_two_ranks_and_two_workers(tmp_path: Path, sizes: list[int]) -> None:
    keys = write_dataset(tmp_path, sizes)
    seen: list[str] = []
    orders = []
    for rank in range(2):
        stream = build_stream(tmp_path, SPEC, mode="eval", batch_size=2, rank=rank, world_size=2)
        batches = run(stream, workers=2)
        orders.append(batches)
        seen += [k for batch in batches for k in batch]
        assert batches, f"rank {rank} got nothing"
    assert sorted(seen) == sorted(keys) and len(seen) == len(set(seen))
    again = [run(build_stream(tmp_path, SPEC, mode="eval", batch_size=2, rank=r, world_size=2), 2) for r in range(2)]
    assert again == orders  # deterministic


def test_eval_rank_comes_from_the_launcher_environment(tmp_path: Path, monkeypatch) -> None:
    keys = write_dataset(tmp_path, [2, 2, 2, 2])
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        batches = run(build_stream(tmp_path, SPEC, mode="eval", batch_size=3), workers=2)
        seen.append(sorted(k for b in batches for k in b))
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(keys)


def test_eval_val_samples_caps_the_total(tmp_path: Path) -> None:
    write_dataset(tmp_path, [5, 5, 5, 5])
    total = 0
    for rank in range(2):
        stream = build_stream(tmp_path, SPEC, mode="eval", batch_size=2, rank=rank, world_size=2, max_samples=7)
        total += sum(len(b) for b in run(stream, workers=2))
    assert total == 7


def test_train_gives_equal_steps_per_rank_with_unequal_shards(tmp_path: Path) -> None:
    write_dataset(tmp_path, [1, 9, 2])  # 3 shards over 2 ranks: one rank holds far more samples
    for rank in range(2):
        stream = build_stream(
            tmp_path, SPEC, mode="train", batch_size=3, steps_per_epoch=5, rank=rank, world_size=2, shuffle_buffer=4
        )
        for epoch in range(2):
            stream.set_epoch(epoch)
            batches = run(stream, workers=2)
            assert len(batches) == 5 and all(len(b) == 3 for b in batches), (rank, epoch)


def test_train_shard_order_is_fresh_each_epoch_and_seeded(tmp_path: Path) -> None:
    write_dataset(tmp_path, [2] * 8)

    def epoch_keys(seed: int, epoch: int) -> list[str]:
        stream = build_stream(tmp_path, SPEC, mode="train", batch_size=2, steps_per_epoch=4, seed=seed,
                              rank=0, world_size=1, shuffle_buffer=1)  # fmt: skip
        stream.set_epoch(epoch)
        return [k for b in run(stream, workers=0) for k in b]

    first = epoch_keys(0, 0)
    assert epoch_keys(0, 0) == first  # same seed and epoch: same order
    assert epoch_keys(0, 1) != first  # next epoch: fresh shard order
    assert epoch_keys(1, 0) != first  # another seed: another order
    shards = Counter(k.split("i")[0] for k in first)
    assert len(shards) == 4  # 8 samples in shard-sized runs of 2: four different shards, none repeated


def test_worker_seed_differs_per_rank_worker_and_epoch() -> None:
    seeds = {worker_seed(0, e, r, w) for e in range(2) for r in range(2) for w in range(2)}
    assert len(seeds) == 8
    assert worker_seed(3, 1, 0, 0) == worker_seed(3, 1, 0, 0)


def test_list_shards_accepts_dir_glob_braces(tmp_path: Path) -> None:
    write_dataset(tmp_path, [1, 1, 1])
    names = [str(tmp_path / f"part-{i:03d}.tar") for i in range(3)]
    assert list_shards(tmp_path) == names
    assert list_shards(str(tmp_path / "part-*.tar")) == names
    assert list_shards(str(tmp_path / "part-{000..002}.tar")) == names
    with pytest.raises(FileNotFoundError, match="no shards found"):
        list_shards(tmp_path / "nothing-*.tar")


def test_batches_have_contract_dtypes(tmp_path: Path) -> None:
    write_dataset(tmp_path, [4])
    batch = next(iter(build_stream(tmp_path, SPEC, mode="eval", batch_size=4)))
    assert batch["video"].dtype == torch.uint8 and tuple(batch["video"].shape) == (4, 2, 3, 8, 8)
    assert batch["key"] == ["s0i000", "s0i001", "s0i002", "s0i003"]
