from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.eval import analyze_command
from pipeline.eval.compounding import CompoundingFit, compounding_curve, fit_compounding, normalised_error

HORIZONS = [1, 2, 4, 8, 16]


def test_fit_recovers_known_e_exactly_and_under_noise() -> None:
    for e in (0.003, 0.05, 0.3):
        fit = fit_compounding(HORIZONS, compounding_curve(e, HORIZONS))
        assert fit.e == pytest.approx(e, rel=1e-6) and fit.rmse < 1e-8 and fit.r2 == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = compounding_curve(0.05, HORIZONS) + rng.normal(0, 0.01, len(HORIZONS))
    fit = fit_compounding(HORIZONS, noisy)
    assert fit.e == pytest.approx(0.05, rel=0.1) and 0.95 < fit.r2 < 1.0 and 0.001 < fit.rmse < 0.03


def test_bad_fit_is_reported_as_bad() -> None:
    # a linear ramp that does not saturate: the compounding model cannot follow it well
    fit = fit_compounding([1, 2, 4, 8, 16, 32], [0.02, 0.04, 0.08, 0.16, 0.32, 0.64])
    assert fit.r2 < 0.99 and fit.rmse > 0.02


def test_safe_horizon() -> None:
    fit = CompoundingFit(e=0.01, r2=1.0, rmse=0.0, horizons=[1], errors=[0.01])
    t = fit.safe_horizon(0.1)  # 1 - 0.99^t <= 0.1  <=>  t <= log(0.9) / log(0.99) = 10.48
    assert t == 10 and compounding_curve(0.01, [t])[0] <= 0.1 < compounding_curve(0.01, [t + 1])[0]
    assert CompoundingFit(0.0, None, 0.0, [1], [0.0]).safe_horizon(0.1) is None
    with pytest.raises(ValueError):
        fit.safe_horizon(1.5)


def test_normalisation() -> None:
    assert normalised_error("psnr", np.array([20.0, 40.0])) == pytest.approx([0.1, 0.01])
    assert normalised_error("ssim", np.array([0.75, 1.2])) == pytest.approx([0.25, 0.0])
    with pytest.raises(ValueError, match="--worst"):
        normalised_error("fvd", np.array([100.0]))
    assert normalised_error("fvd", np.array([100.0, 900.0]), worst=500) == pytest.approx([0.2, 1.0])


def _eval_json(path: Path, e: float, samples: int = 8, checkpoint: object = None) -> Path:
    # written as `wm eval` would: PSNR whose RMSE follows the compounding curve
    psnr = {str(h): {"count": samples, "psnr": float(-20 * np.log10(compounding_curve(e, [h])[0]))} for h in HORIZONS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "wm-eval/1", "samples": samples, "clip_rule": "rule", "metrics": psnr,
                                "absent": {"lpips": "weights absent"}, "checkpoint": checkpoint}))
    return path


def test_wm_analyze_compounding_with_ensemble(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    single = _eval_json(tmp_path / "single" / "eval.json", 0.04)
    ens = _eval_json(tmp_path / "ens" / "eval.json", 0.025, checkpoint={"ensemble": [{}, {}, {}]})
    assert analyze_command.main(["compounding", str(single), "--ensemble", str(ens), "--acceptable", "0.2",
                                 "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "compounding.json").read_text())
    assert result["metric"] == "psnr"  # lpips absent
    assert result["fits"]["model"]["e"] == pytest.approx(0.04, rel=1e-5)
    assert result["fits"]["ensemble1 (K=3)"]["e"] == pytest.approx(0.025, rel=1e-5)
    assert result["ensemble_effect"]["ensemble1 (K=3)"]["e_ratio"] == pytest.approx(0.625, rel=1e-4)
    assert result["fits"]["model"]["safe_horizon"] == 5  # log(0.8) / log(0.96) = 5.47
    assert [row["step"] for row in result["table"]] == [1, 5, 10, 20, 50, 100]
    assert result["table"][1]["model fit"] == pytest.approx(1 - 0.96**5, rel=1e-5)
    assert result["table"][1]["model measured"] is None and result["table"][0]["model measured"] is not None
    assert "| model | 0.04000 |" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "compounding.png") as png:
        assert png.size == (550, 380)
    other = _eval_json(tmp_path / "other" / "eval.json", 0.02, samples=4)
    assert analyze_command.main(["compounding", str(single), "--ensemble", str(other)]) == 1
    assert "evaluated differently" in capsys.readouterr().err
    assert analyze_command.main(["compounding", str(single), "--metric", "lpips"]) == 1
    assert "weights absent" in capsys.readouterr().err
