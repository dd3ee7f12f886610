"""The quick-start job end to end, at a few steps: corpus, two fits, three evaluations, leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import demo


@pytest.mark.slow
def test_demo_trains_evaluates_and_ranks(sample_corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    code = demo.main(["--root", str(sample_corpus), "--out", str(out), "--steps", "3", "--samples", "4",
                      "--horizons", "1", "2"])
    assert code == 0
    for family in demo.FAMILIES:
        assert (out / family / "final.ckpt").is_file()
        assert (out / family / "version_0" / "metrics.csv").is_file()
    board = json.loads((out / "leaderboard" / "leaderboard.json").read_text())
    assert sorted(run["run"] for run in board["runs"]) == ["copy_last_frame", "diffusion", "vjepa"]
    records = [json.loads((out / name / "eval.json").read_text()) for name in ("copy_last_frame", "vjepa")]
    assert all(r["samples"] == 4 and r["horizons"] == [1, 2] for r in records)
    # evaluated on the clip the tiny configs train on (configs/*/tiny.yaml: stride 2, 64 px)
    assert all("frame_stride=2, resolution=64" in r["clip_rule"] for r in records)
    assert "vjepa" in records[1]["checkpoint"]["file"]
    # copy-last-frame at horizon 1 on real video: high PSNR, a real number, not a placeholder
    assert 15.0 < records[0]["metrics"]["1"]["psnr"] < 60.0
    printed = capsys.readouterr().out
    assert "| copy_last_frame |" in printed and "absent metrics" in printed
    assert (out / "leaderboard" / "psnr.png").stat().st_size > 1000


def test_demo_help_and_missing_configs(monkeypatch, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0 and "sample corpus" in capsys.readouterr().out
    monkeypatch.setattr(demo, "configs_dir", lambda: (_ for _ in ()).throw(FileNotFoundError("configs not found at X")))
    assert demo.main(["--root", str(tmp_path)]) == 1
    assert "configs not found at X" in capsys.readouterr().err
