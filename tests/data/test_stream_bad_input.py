"""Bad input never crashes the stream: each case is skipped, counted per reason, warned with its key,
while the good samples still arrive; nothing in a shard is ever unpickled; pipe: URLs need an opt-in."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from pipeline.data.decode import ClipSpec
from pipeline.data.sources.encode import encode_frames
from pipeline.data.stream import build_stream

SPEC = ClipSpec(frames=4, frame_stride=2, resolution=16)
META = {"fps": 12, "num_frames": 12, "width": 32, "height": 24}


def mp4(frames: int = 12) -> bytes:
    video = np.random.default_rng(frames).integers(0, 255, (frames, 24, 32, 3), dtype=np.uint8)
    return encode_frames(video, 12.0)


def write_shard(path: Path, samples: list[dict]) -> Path:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def good(key: str, video: bytes) -> dict:
    return {"__key__": key, "mp4": video, "json": json.dumps(META).encode()}


def read_all(shards, **kw) -> tuple[list[str], dict[str, int]]:
    """Keys of every sample of an eval pass (one process) and the skip counts."""
    stream = build_stream(shards, SPEC, mode="eval", batch_size=2, retry_delay=0.01, **kw)
    keys, counts = [], {}
    for batch in stream:
        keys += batch["key"]
        counts = batch["__stream__"]["skips"]
        assert batch["video"].dtype == torch.uint8 and batch["video"].shape[1:] == (4, 3, 16, 16)
    return keys, counts


class Touch:
    """Unpickling this creates the file `path` (what a malicious pickle could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def video() -> bytes:
    return mp4()


def test_each_bad_sample_is_counted_and_good_ones_arrive(tmp_path: Path, video: bytes, monkeypatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("pipeline.data.parse.time.sleep", sleeps.append)
    big = dict(META, width=100_000, height=100_000)
    long = dict(META, num_frames=10**9)
    bad = [
        {"__key__": "zero", "mp4": b"", "json": json.dumps(META).encode()},
        {"__key__": "text", "mp4": b"this is not a video " * 50, "json": json.dumps(META).encode()},
        {"__key__": "cut", "mp4": video[: len(video) // 3], "json": json.dumps(META).encode()},
        {"__key__": "short", "mp4": mp4(frames=5), "json": json.dumps(META).encode()},
        {"__key__": "nojson", "mp4": video},
        {"__key__": "badjson", "mp4": video, "json": b"{not json"},
        {"__key__": "failed", "txt": b"a caption", "json": json.dumps({"status": "failed_to_download"}).encode()},
        {"__key__": "huge", "mp4": video, "json": json.dumps(big).encode()},
        {"__key__": "endless", "mp4": video, "json": json.dumps(long).encode()},
    ]
    samples = [good("g0", video)] + bad[:5] + [good("g1", video)] + bad[5:] + [good("g2", video)]
    write_shard(tmp_path / "a.tar", samples)
    with pytest.warns(RuntimeWarning) as record:
        keys, counts = read_all(tmp_path)
    assert keys == ["g0", "g1", "g2"]
    assert counts == {
        "empty_video": 1, "bad_video": 2, "too_few_frames": 1, "missing_json": 1, "bad_json": 1,
        "missing_video": 1, "too_large": 2,
    }  # fmt: skip
    messages = " ".join(str(w.message) for w in record)
    for key in ("zero", "text", "cut", "short", "nojson", "badjson", "failed", "huge", "endless"):
        assert f"sample {key} " in messages
    assert sleeps == []  # bad samples are skipped without sleeping


def test_truncated_tar_is_skipped(tmp_path: Path, video: bytes) -> None:
    write_shard(tmp_path / "a.tar", [good("a0", video), good("a1", video)])
    full = write_shard(tmp_path / "b.tar", [good(f"b{i}", video) for i in range(4)]).read_bytes()
    (tmp_path / "b.tar").write_bytes(full[: int(len(full) * 0.6)])
    write_shard(tmp_path / "c.tar", [good("c0", video)])
    with pytest.warns(RuntimeWarning, match="truncated_tar"):
        keys, counts = read_all(tmp_path)
    assert {"a0", "a1", "c0"} <= set(keys) and set(keys) < {"a0", "a1", "c0", "b0", "b1", "b2", "b3"}
    assert counts["truncated_tar"] == 1


def test_nothing_is_unpickled(tmp_path: Path, video: bytes) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Touch(marker))
    objects = io.BytesIO()
    np.save(objects, np.array([Touch(marker)] * 12, dtype=object), allow_pickle=True)
    samples = [
        dict(good("p0", video), pyd=payload, pickle=payload),
        dict(good("p1", video), **{"actions.npy": objects.getvalue()}),
        good("p2", video),
    ]
    write_shard(tmp_path / "evil.tar", samples)
    with pytest.warns(RuntimeWarning, match="bad_arrays"):
        keys, counts = read_all(tmp_path)
    assert not marker.exists()
    assert keys == ["p0", "p2"] and counts == {"bad_arrays": 1}
    pickle.loads(payload)  # the payload is live: unpickling it does create the file
    assert marker.exists()


def test_pipe_urls_need_opt_in(tmp_path: Path, video: bytes) -> None:
    shard = write_shard(tmp_path / "a.tar", [good("q0", video), good("q1", video)])
    with pytest.raises(ValueError, match="allow_pipe"):
        build_stream(f"pipe:cat {shard}", SPEC, mode="eval")
    with pytest.raises(ValueError, match="allow_pipe"):
        build_stream(["https://example.com/a.tar"], SPEC, mode="eval")
    keys, _ = read_all(f"pipe:cat {shard}", allow_pipe=True)
    assert keys == ["q0", "q1"]


def test_missing_shards_are_retried_skipped_or_fatal(tmp_path: Path, video: bytes, monkeypatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("pipeline.data.parse.time.sleep", sleeps.append)
    for name in ("s0", "s1", "s3"):
        write_shard(tmp_path / f"{name}.tar", [good(f"{name}k", video)])
    with pytest.warns(RuntimeWarning, match="s2.tar is missing"):
        keys, _ = read_all(str(tmp_path / "s{0..3}.tar"))
    assert keys == ["s0k", "s1k", "s3k"] and sleeps == [0.01, 0.01]  # two retries, then skipped
    with pytest.raises(RuntimeError, match="3 of 4 shards are missing"):
        build_stream(str(tmp_path / "s{2..5}.tar"), SPEC, mode="eval", retry_delay=0.0)
    # a shard that disappears after the stream was built is skipped inside the worker
    stream = build_stream(tmp_path, SPEC, mode="eval", batch_size=1, retry_delay=0.0)
    (tmp_path / "s1.tar").unlink()
    with pytest.warns(RuntimeWarning, match="missing_shard"):
        batches = list(stream)
    assert [b["key"][0] for b in batches] == ["s0k", "s3k"]
    assert batches[-1]["__stream__"]["skips"] == {"missing_shard": 1}


def test_train_stream_stops_when_nothing_is_usable(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.tar", [{"__key__": f"x{i}", "mp4": b"junk" * 10, "json": b"{}"} for i in range(3)])
    stream = build_stream(tmp_path, SPEC, mode="train", batch_size=2, steps_per_epoch=2)
    stream.max_consecutive_skips = 50
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="50 samples in a row were unusable"):
        next(iter(stream))
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    (tmp_path / "a.tar").unlink()
    stream = build_stream(tmp_path, SPEC, mode="train", batch_size=2, steps_per_epoch=2)
    with pytest.raises(RuntimeError, match="shards in a row gave no sample"):
        next(iter(stream))
