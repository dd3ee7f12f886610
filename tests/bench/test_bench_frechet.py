from __future__ import annotations

import json
from pathlib import Path

from pipeline.bench import main as bench_main


def test_wm_bench_frechet_writes_both_timings(tmp_path: Path) -> None:
    out = tmp_path / "frechet.json"
    assert bench_main(["frechet", "--dim", "64", "--samples", "256", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dim"] == 64 and len(result["ours"]["times_s"]) == len(result["baseline"]["times_s"]) == 2
    assert result["relative_difference"] < 1e-6 and result["ours"]["value"] > 0
    assert result["speedup"] == result["baseline"]["median_s"] / result["ours"]["median_s"]
