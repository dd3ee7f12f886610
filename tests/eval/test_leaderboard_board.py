from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from eval_helpers import moving_clips  # noqa: E402

from pipeline.eval import board_command  # noqa: E402
from pipeline.eval.board_command import write_leaderboard  # noqa: E402
from pipeline.eval.leaderboard import IncomparableRuns  # noqa: E402
from pipeline.eval.rollout import evaluate  # noqa: E402
from pipeline.models.baselines import CopyLastFrame, LinearExtrapolation  # noqa: E402


@pytest.fixture(scope="module")
def evals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evals")
    # brightness ramps: linear extrapolation is exact, copying the last frame is not
    ramp = moving_clips(n=4, frames=6)[:, :1].float() * 0.5 + 12 * torch.arange(6).view(1, 6, 1, 1, 1)
    ramp = ramp.round().clamp(0, 255).to(torch.uint8)
    out = {}
    for name, model, samples in (("copy", CopyLastFrame(2), 4), ("linear", LinearExtrapolation(2), 4),
                                 ("copy_n3", CopyLastFrame(2), 3)):
        out[name] = root / name / "eval.json"
        evaluate(model, [{"video": ramp}], horizons=[1, 2, 4], samples=samples, out=out[name], fvd=False,
                 lpips=False)
    return out


def test_leaderboard_ranks_and_writes_everything(evals: dict[str, Path], tmp_path: Path) -> None:
    board = write_leaderboard([evals["copy"], evals["linear"]], tmp_path / "lb")
    assert board["rank_by"] == "psnr@4"  # fvd and lpips were disabled
    assert [r["run"] for r in board["runs"]] == ["linear", "copy"]
    linear = board["runs"][0]["metrics"]
    assert linear["psnr@1"] > board["runs"][1]["metrics"]["psnr@1"] and linear["fvd@4"] == "absent"
    assert {"psnr@1", "psnr@2", "psnr@4", "ssim@4", "lpips@1", "fvd@2"} <= set(board["columns"])
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "| 1 | linear |" in md and "| 2 | copy |" in md and "- copy: fvd: disabled" in md
    assert board["plots"] == ["psnr.png", "ssim.png"]  # fvd and lpips have no numbers: no empty plots
    assert json.loads((tmp_path / "lb" / "leaderboard.json").read_text())["runs"][0]["run"] == "linear"
    for metric in ("psnr", "ssim"):
        with Image.open(tmp_path / "lb" / f"{metric}.png") as png:
            assert png.size == (500, 350)
    with Image.open(tmp_path / "lb" / "copy.gif") as gif:
        assert gif.n_frames == 2 + 4 and gif.size == (3 * 32 + 4, 4 * 32)  # context | truth | prediction, 4 clips


def test_leaderboard_refuses_incomparable_runs(evals: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(IncomparableRuns, match=r"samples differs \(copy: 4; copy_n3: 3\)"):
        write_leaderboard([evals["copy"], evals["copy_n3"]], tmp_path / "a")
    record = json.loads(evals["linear"].read_text())
    record["features"]["i3d"] = {"file": "/w/i3d_pretrained_400.pt", "sha256": "ab" * 32}
    other = tmp_path / "other" / "eval.json"
    other.parent.mkdir()
    other.write_text(json.dumps(record))
    assert board_command.main([str(evals["copy"]), str(other), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "i3d weights differs" in err and "refusing to rank" in err
    assert not (tmp_path / "b" / "leaderboard.md").exists()
    assert board_command.main([str(evals["copy"]), "--out", str(tmp_path / "c"), "--rank-by", "nope@1"]) == 1
    record = json.loads(evals["linear"].read_text())
    record["data_manifest_hash"] = "f" * 64
    (tmp_path / "data2").mkdir()
    (tmp_path / "data2" / "eval.json").write_text(json.dumps(record))
    with pytest.raises(IncomparableRuns, match="data manifest differs"):
        write_leaderboard([evals["copy"], tmp_path / "data2" / "eval.json"], tmp_path / "d")
