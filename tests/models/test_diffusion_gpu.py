"""GPU check of the video DiT: DiT-L in bf16 for 50 timed steps, and sampling speed. Skipped without CUDA.

    WM_GPU_BENCH_DIR=runs/bench python -m pytest -q tests/models/test_diffusion_gpu.py

writes diffusion_dit_l_train.json (steps/s, FLOPs per clip, MFU, peak memory) and
diffusion_dit_l_sample.json (frames/s, Euler and Heun at 3 steps vs the Heun 18-step baseline).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from pipeline.bench import main as bench_main

REPO = Path(__file__).resolve().parents[2]


def _out_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("WM_GPU_BENCH_DIR", tmp_path))


@pytest.mark.gpu
def test_dit_l_bf16_training_throughput(tmp_path: Path) -> None:
    out = _out_dir(tmp_path) / "diffusion_dit_l_train.json"
    argv = ["train", "--config", str(REPO / "configs/trainer/ddp.yaml"), "--config",
            str(REPO / "configs/diffusion/dit_l.yaml"), "--synthetic", "--warmup", "5", "--steps", "50",
            "--json", str(out), "--trainer.devices", "1"]  # fmt: skip
    assert bench_main(argv) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "VideoDiffusionModule" and result["precision"] == "bf16-mixed"
    assert result["timed_steps"] == 50 and math.isfinite(result["loss_last"])
    assert result["flops_per_clip"] > 1e12  # ~460M parameters over 16 x 256 tokens
    assert result["mfu"] is not None and 0.0 < result["mfu"] < 1.0
    print(f"DiT-L bf16: {result['steps_per_s']:.2f} steps/s, MFU {result['mfu']:.1%}, "
          f"peak memory {result['peak_memory_gib']:.1f} GiB (goal: MFU >= 45%)")  # fmt: skip


@pytest.mark.gpu
def test_dit_l_sampling_speed(tmp_path: Path) -> None:
    out = _out_dir(tmp_path) / "diffusion_dit_l_sample.json"
    argv = ["sample", "--config", str(REPO / "configs/diffusion/dit_l.yaml"), "--steps", "3", "--frames", "16",
            "--batch-size", "8", "--repeats", "3", "--precision", "bf16", "--json", str(out)]  # fmt: skip
    assert bench_main(argv) == 0
    result = json.loads(out.read_text())
    euler, heun = result["results"]
    assert euler["network_calls_per_rollout"] == 2 * 3 and heun["network_calls_per_rollout"] == 2 * 5
    assert euler["speedup_vs_baseline"] > 5.0  # 6 vs 70 network calls
