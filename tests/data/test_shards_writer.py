"""ShardWriter: tar members, npy dtypes, json, manifest sums, atomic writes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.data.manifest import file_sha256, read_manifest, verify_dataset
from pipeline.data.shards import Sample, ShardWriter, npy_bytes
from pipeline.data.sources.encode import encode_frames


def make_sample(index: int, frames: int = 6, with_arrays: bool = True, caption: str | None = None) -> Sample:
    rng = np.random.default_rng(index)
    video = rng.integers(0, 256, size=(frames, 16, 24, 3), dtype=np.uint8)
    arrays = {}
    if with_arrays:
        arrays = {"actions": rng.integers(0, 4, frames), "rewards": rng.random(frames),
                  "terminals": np.arange(frames) == frames - 1}
    meta = {"fps": 10.0, "num_frames": frames, "width": 24, "height": 16, "source": f"synthetic/{index}"}
    return Sample(key=f"clip-{index:04d}", mp4=encode_frames(video, 10.0), meta=meta, caption=caption,
                  arrays=arrays)


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shards_hold_the_format_members_and_the_manifest_sums(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with ShardWriter(out, shard_size=3, prefix="part", info={"source": "synthetic"}) as writer:
        for index in range(7):
            writer.write(make_sample(index, caption="a caption" if index == 0 else None))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", "part-000000.tar", "part-000001.tar", "part-000002.tar"]

    manifest = read_manifest(out)
    assert [e.samples for e in manifest.shards] == [3, 3, 1]
    assert manifest.num_samples == 7
    assert json.loads((out / "manifest.json").read_text())["num_samples"] == 7
    assert manifest.info == {"source": "synthetic"}
    for entry in manifest.shards:
        assert entry.bytes == (out / entry.name).stat().st_size
        assert entry.sha256 == file_sha256(out / entry.name)
    assert verify_dataset(out) == []

    first = members(out / "part-000000.tar")
    assert sorted(first)[:6] == ["clip-0000.actions.npy", "clip-0000.json", "clip-0000.mp4", "clip-0000.rewards.npy",
                                 "clip-0000.terminals.npy", "clip-0000.txt"]
    assert "clip-0001.txt" not in first  # captions only where one exists
    assert first["clip-0000.txt"] == b"a caption"
    meta = json.loads(first["clip-0000.json"])
    assert meta == {"fps": 10.0, "num_frames": 6, "width": 24, "height": 16, "source": "synthetic/0"}

    expected = {"actions": np.int64, "rewards": np.float32, "terminals": np.uint8}
    for name, dtype in expected.items():
        array = np.load(io.BytesIO(first[f"clip-0000.{name}.npy"]), allow_pickle=False)
        assert array.dtype == dtype and array.shape == (6,)
    terminals = np.load(io.BytesIO(first["clip-0000.terminals.npy"]), allow_pickle=False)
    assert terminals.tolist() == [0, 0, 0, 0, 0, 1]

    with av.open(io.BytesIO(first["clip-0000.mp4"])) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (16, 24, 3)


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    for name in ("a", "b"):
        with ShardWriter(tmp_path / name, shard_size=2) as writer:
            for index in range(3):
                writer.write(make_sample(index, with_arrays=False))
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_crash_mid_write_lists_nothing_and_leaves_no_half_shard(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(out, shard_size=2) as writer:
            for index in range(3):
                writer.write(make_sample(index, with_arrays=False))
            raise RuntimeError("boom")
    # The full first shard was renamed into place; the half second shard was dropped; no manifest.
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar"]
    problems = verify_dataset(out)
    assert [p.kind for p in problems] == ["manifest"]


def test_existing_dataset_is_refused_unless_overwrite(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, shard_size=2) as writer:
        writer.write(make_sample(0, with_arrays=False))
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        ShardWriter(tmp_path, shard_size=2)
    with ShardWriter(tmp_path, shard_size=2, overwrite=True) as writer:
        writer.write(make_sample(1, with_arrays=False))
        writer.write(make_sample(2, with_arrays=False))
    assert read_manifest(tmp_path).num_samples == 2


@pytest.mark.parametrize("key", ["a.b", "with space", "", "../up"])
def test_keys_that_webdataset_would_split_are_refused(tmp_path: Path, key: str) -> None:
    sample = make_sample(0, with_arrays=False)
    sample.key = key
    with pytest.raises(ValueError, match="sample key"):
        with ShardWriter(tmp_path, shard_size=2) as writer:
            writer.write(sample)


def test_unknown_array_and_object_arrays_are_refused(tmp_path: Path) -> None:
    sample = make_sample(0, with_arrays=False)
    sample.arrays = {"states": np.zeros(3)}
    with pytest.raises(ValueError, match="unknown array 'states'"):
        with ShardWriter(tmp_path / "a") as writer:
            writer.write(sample)
    with pytest.raises(ValueError, match="pickle"):
        npy_bytes(np.array([{"x": 1}], dtype=object))


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate sample key 'clip-0000'"):
        with ShardWriter(tmp_path, shard_size=4) as writer:
            writer.write(make_sample(0, with_arrays=False))
            writer.write(make_sample(0, with_arrays=False))
    assert not (tmp_path / "manifest.json").exists()
