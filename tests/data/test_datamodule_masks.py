"""ShardDataModule with the V-JEPA MaskCollator as batch_transform (2 DataLoader workers, real shards): a resumed
stream draws exactly the masks of the uninterrupted one, epochs draw different masks, eval passes repeat theirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from pipeline.data.datamodule import ShardDataModule
from pipeline.data.sources.encode import encode_frames
from pipeline.nn.masks import MaskCollator


def write_clips(root: Path, shards: int = 4, per_shard: int = 3) -> None:
    """Distinct 10-frame 32x32 clips."""
    meta = {"fps": 10, "num_frames": 10, "width": 32, "height": 32}
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(root / f"m-{s:03d}.tar")) as sink:
            for i in range(per_shard):
                frames = np.random.default_rng(10 * s + i).integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
                sink.write(
                    {"__key__": f"c{s}x{i}", "mp4": encode_frames(frames, 10.0), "json": json.dumps(meta).encode()}
                )


def make_dm(root: Path) -> ShardDataModule:
    return ShardDataModule(
        train_shards=str(root), val_shards=str(root), frames=4, frame_stride=2, resolution=32, batch_size=2,
        num_workers=2, steps_per_epoch=7, shuffle_buffer=4, seed=3, decoder="pyav",
        batch_transform=MaskCollator(tubelet_size=2, patch_size=8, seed=11),
    )  # fmt: skip


def masks_of(batches: list[dict]) -> list[list[torch.Tensor]]:
    return [[*b["masks_ctx"], *b["masks_tgt"]] for b in batches]


def equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_resumed_stream_draws_the_uninterrupted_masks_and_epochs_differ(tmp_path: Path) -> None:
    write_clips(tmp_path)
    dm = make_dm(tmp_path)
    loader = dm.train_dataloader()
    epoch0, epoch1 = list(loader), list(loader)  # the loader's second pass is epoch 1
    assert len(epoch0) == len(epoch1) == 7
    assert "__stream__" not in epoch0[0] and epoch0[0]["masks_ctx"][0].shape[0] == 2  # the batch contract holds
    assert all(m.max() < 2 * 4 * 4 for b in masks_of(epoch0) for m in b)
    # every batch of an epoch has its own masks (the collator is seeded per batch position, not per worker)
    assert len({tuple(b[2].flatten().tolist()) for b in masks_of(epoch0)}) > 1
    changed = [not equal(a, b) for a, b in zip(masks_of(epoch0), masks_of(epoch1), strict=True)]
    assert all(changed), f"epoch 1 repeated epoch 0's masks at batches {[i for i, c in enumerate(changed) if not c]}"

    broken = make_dm(tmp_path)
    for n, _ in enumerate(broken.train_dataloader(), start=1):
        if n == 3:  # an odd count: the next batch comes from logical worker 1 on physical worker 0
            break
    state = broken.state_dict()
    assert state["epoch"] == 0 and state["batches"] == 3
    resumed = make_dm(tmp_path)
    resumed.load_state_dict(state)
    rest = list(resumed.train_dataloader())
    assert [b["key"] for b in rest] == [b["key"] for b in epoch0[3:]]
    for i, (a, b) in enumerate(zip(masks_of(rest), masks_of(epoch0[3:]), strict=True)):
        assert equal(a, b), f"resumed batch {3 + i} drew other masks than the uninterrupted run"


def test_eval_passes_draw_the_same_masks_every_time(tmp_path: Path) -> None:
    write_clips(tmp_path, shards=2, per_shard=3)
    loader = make_dm(tmp_path).val_dataloader()
    first, second = list(loader), list(loader)
    assert sorted(k for b in first for k in b["key"]) == sorted(f"c{s}x{i}" for s in range(2) for i in range(3))
    assert [b["key"] for b in first] == [b["key"] for b in second]
    assert all(equal(a, b) for a, b in zip(masks_of(first), masks_of(second), strict=True))
