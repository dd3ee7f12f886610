"""verify_dataset catches each mismatch; manifest_hash is stable; malformed manifests fail clearly."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.manifest import (
    ManifestError,
    errors,
    file_sha256,
    manifest_hash,
    read_manifest,
    verify_dataset,
)
from pipeline.data.shards import Sample, ShardWriter
from pipeline.data.sources.encode import encode_frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "ds"
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    mp4 = encode_frames(frames, 8.0)
    with ShardWriter(out, shard_size=2, info={"source": "synthetic"}) as writer:
        for index in range(5):
            meta = {"fps": 8.0, "num_frames": 4, "width": 16, "height": 16, "source": "synthetic"}
            writer.write(Sample(key=f"s{index}", mp4=mp4, meta=meta, arrays={"actions": np.arange(4)}))
    return out


@pytest.fixture
def copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def kinds(directory: Path) -> list[tuple[str, str | None, str]]:
    return [(p.kind, p.shard, p.severity) for p in verify_dataset(directory)]


def test_a_clean_dataset_has_no_problem(dataset: Path) -> None:
    assert verify_dataset(dataset) == []
    assert [e.samples for e in read_manifest(dataset).shards] == [2, 2, 1]


def test_missing_shard(copy: Path) -> None:
    (copy / "shard-000001.tar").unlink()
    assert kinds(copy) == [("missing", "shard-000001.tar", "error")]


def test_truncated_shard_is_a_size_mismatch_and_unreadable(copy: Path) -> None:
    path = copy / "shard-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    found = kinds(copy)
    assert found[0] == ("size", "shard-000000.tar", "error")
    assert all(shard == "shard-000000.tar" for _, shard, _ in found)
    assert "sha256" not in [kind for kind, _, _ in found]  # a size change is reported as such, not as a hash


def test_same_size_content_change_is_a_sha256_mismatch(copy: Path) -> None:
    path = copy / "shard-000002.tar"
    with tarfile.open(path) as tar:
        offset = tar.getmember("s4.mp4").offset_data
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0xFF  # inside the mp4 payload: the tar stays readable, the size is unchanged
    path.write_bytes(bytes(data))
    assert kinds(copy) == [("sha256", "shard-000002.tar", "error")]
    problem = verify_dataset(copy)[0]
    assert "sha256" in str(problem) and "shard-000002.tar" in str(problem)


def test_wrong_sample_count_is_found_by_reading_the_tar(copy: Path) -> None:
    manifest_path = copy / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    raw["shards"][0]["samples"] = 3
    raw["num_samples"] = 6
    manifest_path.write_text(json.dumps(raw))
    problems = verify_dataset(copy)
    assert [(p.kind, p.shard) for p in problems] == [("samples", "shard-000000.tar")]
    assert "holds 2 samples, manifest says 3" in problems[0].message


def test_extra_unlisted_shard_and_leftover_tmp_are_warnings(copy: Path) -> None:
    shutil.copy(copy / "shard-000000.tar", copy / "shard-000009.tar")
    (copy / "shard-000010.tar.tmp").write_bytes(b"half")
    found = kinds(copy)
    assert found == [("unlisted", "shard-000009.tar", "warning"), ("leftover", "shard-000010.tar.tmp", "warning")]
    assert errors(verify_dataset(copy)) == []


def test_a_non_tar_with_the_listed_size_and_hash_is_unreadable(copy: Path) -> None:
    path = copy / "shard-000002.tar"
    path.write_bytes(b"not a tar file at all")
    raw = json.loads((copy / "manifest.json").read_text())
    raw["shards"][2].update(bytes=path.stat().st_size, sha256=file_sha256(path))
    (copy / "manifest.json").write_text(json.dumps(raw))
    assert kinds(copy) == [("unreadable", "shard-000002.tar", "error")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no manifest.json"),
        ("{not json", "not valid JSON"),
        ('{"shards": [{"name": "a.tar"}]}', "needs name, samples, bytes, sha256"),
        ('{"shards": [{"name": "../x.tar", "samples": 1, "bytes": 1, "sha256": "0"}]}', "invalid file name"),
        ('{"shards": [], "format": "other/9"}', "this version reads"),
    ],
)
def test_malformed_manifest_is_a_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)
    assert [p.kind for p in verify_dataset(tmp_path)] == ["manifest"]


def test_manifest_hash_is_stable_and_tracks_content(copy: Path) -> None:
    before = manifest_hash(copy)
    assert len(before) == 64
    raw = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(raw, indent=None, sort_keys=False))  # formatting only
    assert manifest_hash(copy) == before
    raw["shards"][0]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(raw))
    assert manifest_hash(copy) != before


def test_tar_members_group_into_the_listed_samples(dataset: Path) -> None:
    with tarfile.open(dataset / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names == ["s0.actions.npy", "s0.json", "s0.mp4", "s1.actions.npy", "s1.json", "s1.mp4"]
