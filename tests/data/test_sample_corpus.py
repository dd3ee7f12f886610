"""The bundled sample corpus: both datasets built from real inputs, verified, and rebuilt only when needed."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.manifest import manifest_hash, read_manifest, verify_dataset
from pipeline.data.sample import build_sample_corpus


def test_corpus_holds_both_verified_datasets(sample_corpus: Path) -> None:
    assert verify_dataset(sample_corpus / "videos") == []
    assert verify_dataset(sample_corpus / "atari") == []
    videos, atari = read_manifest(sample_corpus / "videos"), read_manifest(sample_corpus / "atari")
    # bigbuckbunny 5.3 s -> 3, bikes 10 s -> 6, carphone x2 4 s -> 2 each: 1.5 s clips, tails dropped.
    assert videos.num_samples == 13 and videos.stats["skipped"] == {}
    assert videos.info["resolution"] == 64
    assert atari.num_samples == 8 and atari.stats["frames"] == 8 * 64
    assert atari.info["action_space"] == {"type": "discrete", "n": 4, "meanings": ["NOOP", "FIRE", "RIGHT", "LEFT"]}


def test_video_clips_are_64_px_on_the_shorter_side(sample_corpus: Path) -> None:
    sources = set()
    for shard in sorted((sample_corpus / "videos").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    assert min(meta["width"], meta["height"]) == 64
                    assert meta["width"] % 2 == 0 and meta["num_frames"] in (38, 45)
                    sources.add(meta["source"])
    assert sources == {"bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4"}


def test_atari_episodes_carry_per_frame_arrays(sample_corpus: Path) -> None:
    with tarfile.open(sample_corpus / "atari" / "atari-000000.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = "breakout-s0-e000000"
    meta = json.loads(files[f"{key}.json"])
    arrays = {name: np.load(io.BytesIO(files[f"{key}.{name}.npy"]), allow_pickle=False)
              for name in ("actions", "rewards", "terminals")}
    assert meta["num_frames"] == 64 and (meta["width"], meta["height"]) == (64, 64) and meta["frameskip"] == 4
    assert all(array.shape == (64,) for array in arrays.values())
    assert arrays["actions"].dtype == np.int64 and arrays["actions"].max() < 4
    assert arrays["rewards"].dtype == np.float32 and arrays["terminals"].dtype == np.uint8


def test_build_is_idempotent_and_repairs_a_broken_dataset(sample_corpus: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(sample_corpus, tmp_path / "corpus"))
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    hashes = {name: manifest_hash(root / name) for name in ("videos", "atari")}
    assert build_sample_corpus(root) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # verified, so nothing rewritten

    shard = root / "atari" / "atari-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    build_sample_corpus(root)
    assert verify_dataset(root / "atari") == []
    # Seeded episodes and single-threaded x264: the rebuilt dataset is byte-identical to the first build.
    assert manifest_hash(root / "atari") == hashes["atari"]
    assert (root / "videos" / "manifest.json").stat().st_mtime_ns == before[root / "videos" / "manifest.json"]


def test_sample_command_reports_the_verified_corpus(sample_corpus: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.data.commands import main

    root = Path(shutil.copytree(sample_corpus, tmp_path / "corpus"))
    assert main(["sample", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{root / 'videos'}: 13 samples in 4 shards (verified)" in out
    assert f"{root / 'atari'}: 8 samples in 4 shards (verified)" in out
