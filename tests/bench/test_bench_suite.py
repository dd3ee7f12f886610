"""`wm bench suite --dry`: the GPU performance check's steps run on the CPU with the tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.bench.suite import DRY, GPU, main, steps

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_plan_names_configs_that_exist() -> None:
    for plan in (GPU, DRY):
        for args in steps(plan, Path("out")).values():
            configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
            assert configs and all((ROOT / c).is_file() for c in configs), configs
    assert {"tiny_fsdp2", "tiny_zero2", "tiny_zero3", "vjepa_train", "dit_train", "vjepa_profile", "dit_profile",
            "dit_sample", "vjepa_batch"} == set(steps(GPU, Path("out")))  # fmt: skip


def test_dry_run_of_two_steps_collects_their_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["--dry", "--out", str(tmp_path), "--only", "dit_sample", "tiny_ddp"]) == 0
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert sorted(suite["steps"]) == ["dit_sample", "tiny_ddp"] and suite["dry"]
    assert all(step["ok"] and step["seconds"] > 0 for step in suite["steps"].values())
    assert suite["steps"]["tiny_ddp"]["result"]["steps_per_s"] > 0
    with pytest.raises(SystemExit):
        main(["--dry", "--out", str(tmp_path), "--only", "nonsense"])
