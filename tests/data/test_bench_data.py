"""`wm bench data` measures the stream, the raw decoder and the naive PyAV baseline on the same clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from pipeline.bench.data import main, naive_pyav, raw_decord, raw_decord_scaled
from pipeline.cli import main as wm
from pipeline.data.decode import ClipSpec
from pipeline.data.sources.encode import encode_frames


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    meta = json.dumps({"fps": 10, "num_frames": 20, "width": 64, "height": 32}).encode()
    with wds.TarWriter(str(root / "b-000.tar")) as sink:
        for i in range(3):
            frames = np.random.default_rng(i).integers(0, 255, (20, 32, 64, 3), dtype=np.uint8)
            sink.write({"__key__": f"v{i}", "mp4": encode_frames(frames, 10.0), "json": meta})
    return root


def test_the_three_decoders_return_the_same_clip(shards: Path) -> None:
    sample = next(iter(wds.DataPipeline(wds.SimpleShardList([str(shards / "b-000.tar")]), wds.tarfile_to_samples())))
    spec = ClipSpec(frames=4, frame_stride=3, resolution=32)
    raw, naive, scaled = (fn(sample["mp4"], spec) for fn in (raw_decord, naive_pyav, raw_decord_scaled))
    assert raw.shape == naive.shape == scaled.shape == (4, 32, 64, 3)
    assert np.abs(raw.astype(int) - naive.astype(int)).mean() < 2


def test_bench_writes_rates_and_ratios(shards: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    code = main(["--shards", str(shards), "--json", str(out), "--frames", "4", "--stride", "3",
                 "--resolution", "32", "--workers", "0", "--clips", "5", "--rounds", "1", "--batch-size", "2"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["clips"] == 5 and result["config"]["distinct_videos"] == 3
    for name in ("stream", "raw_decoder", "raw_decoder_scaled", "naive_pyav"):
        entry = result[name]
        assert entry["clips"] == 5 and entry["seconds"] > 0
        assert entry["clips_per_s"] == pytest.approx(5 / entry["seconds"])
    per_worker = result["stream"]["clips_per_s_per_worker"]
    assert per_worker == pytest.approx(result["stream"]["clips_per_s"])  # in-process: one worker
    ratios = result["ratios"]
    for name in ("raw_decoder", "raw_decoder_scaled", "naive_pyav"):
        assert ratios[f"stream_per_worker_vs_{name}"] == pytest.approx(per_worker / result[name]["clips_per_s"])
    met = ratios["stream_per_worker_vs_raw_decoder"] >= 0.85 and ratios["stream_per_worker_vs_naive_pyav"] >= 3.0
    assert result["targets"]["met"] is met
    assert str(out) in capsys.readouterr().out


def test_bench_cli_help_and_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        wm(["bench", "data", "--help"])
    assert info.value.code == 0 and "--shards" in capsys.readouterr().out
    assert wm(["bench", "data", "--shards", str(tmp_path / "none"), "--json", str(tmp_path / "x.json")]) == 1
    assert "1 of 1 shards are missing" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
