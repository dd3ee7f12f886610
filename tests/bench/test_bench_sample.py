from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.bench import main as bench_main
from pipeline.models.diffusion import VideoDiffusionModule

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--model.init_args.resolution", "16", "--model.init_args.patch_size", "4", "--model.init_args.width", "32",
         "--model.init_args.depth", "2"]  # fmt: skip


def test_bench_sample_writes_counted_results_with_a_baseline(tmp_path: Path) -> None:
    out = tmp_path / "sample.json"
    argv = ["sample", "--config", str(REPO / "configs/diffusion/atari.yaml"), *SMALL, "--steps", "2", "--frames", "6",
            "--batch-size", "2", "--repeats", "1", "--baseline-steps", "3", "--json", str(out)]  # fmt: skip
    assert bench_main(argv) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "VideoDiffusionModule" and result["resolution"] == 16 and result["window"] == 8
    euler, heun = result["results"]
    base = result["baseline"]
    # 6 frames past 4 context frames with a window of 8: chunks of 4 + 2 frames
    assert (euler["sampler"], euler["network_calls_per_rollout"]) == ("euler", 2 * 2)
    assert (heun["sampler"], heun["network_calls_per_rollout"]) == ("heun", 2 * 3)
    assert (base["sampler"], base["steps"], base["network_calls_per_rollout"]) == ("heun", 3, 2 * 5)
    for r in (euler, heun, base):
        assert r["frames_generated"] == 2 * 6 and r["seconds"] > 0
        assert r["frames_per_s"] == pytest.approx(r["frames_generated"] / r["seconds"])
    assert euler["speedup_vs_baseline"] == pytest.approx(euler["frames_per_s"] / base["frames_per_s"])


def test_bench_sample_from_a_checkpoint_and_bad_input(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VideoDiffusionModule(frames=4, context_frames=2, resolution=16, patch_size=4, width=32, depth=2)
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "wm_class_path": "pipeline.models.diffusion.VideoDiffusionModule"}, ckpt)  # fmt: skip
    out = tmp_path / "ckpt.json"
    argv = ["sample", "--ckpt", str(ckpt), "--steps", "1", "--frames", "2", "--batch-size", "1", "--repeats", "1",
            "--baseline-steps", "1", "--json", str(out)]  # fmt: skip
    assert bench_main(argv) == 0
    result = json.loads(out.read_text())
    assert result["context_frames"] == 2 and result["results"][0]["network_calls_per_rollout"] == 1
    with pytest.raises(SystemExit, match="--config and/or --ckpt"):
        bench_main(["sample", "--json", str(out)])
    with pytest.raises(SystemExit, match="must be >= 1"):
        bench_main(["sample", "--ckpt", str(ckpt), "--steps", "0", "--json", str(out)])
    with pytest.raises(SystemExit, match="overrides come as"):
        bench_main(["sample", "--config", str(REPO / "configs/diffusion/tiny.yaml"), "--trainer.max_steps", "3",
                    "--json", str(out)])  # fmt: skip
    with pytest.raises(Exception, match="widht"):
        bench_main(["sample", "--config", str(REPO / "configs/diffusion/tiny.yaml"), "--model.init_args.widht", "3",
                    "--json", str(out)])  # fmt: skip
