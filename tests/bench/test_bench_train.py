"""`wm bench train`: counted FLOPs (also for the CPU attention kernels), the JSON it writes, and the GPU check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.bench.train import flop_counter, main, peak_tflops
from pipeline.models.vjepa import VJEPAModule

ROOT = Path(__file__).resolve().parents[2]


def test_linear_forward_and_backward_flops_are_counted_exactly() -> None:
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    with flop_counter() as counter:
        layer(x).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 8 * 64 * 32  # forward, grad of the input, grad of the weight


def test_cpu_attention_kernels_are_counted() -> None:
    b, h, n, d = 2, 4, 16, 8
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    with flop_counter() as counter:
        out = F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 4 * b * h * n * n * d
    with flop_counter() as counter:
        out.sum().backward()
    # five matmuls of the forward's size (scores recomputed; grads of scores, q, k, v), as for the GPU kernels
    assert counter.get_total_flops() == 5 * 2 * b * h * n * n * d


def test_peak_table_by_device_name() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert peak_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == pytest.approx(312.0)
    assert peak_tflops("Some Accelerator") is None


def test_bench_train_tiny_vjepa_on_cpu_writes_counted_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--config", str(ROOT / "configs/trainer/cpu.yaml"), "--config", str(ROOT / "configs/vjepa/tiny.yaml"),
            "--synthetic", "--steps", "2", "--warmup", "1", "--json", str(out), "--batch-size", "2"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["model"] == "VJEPAModule" and res["device"] == "cpu" and res["batch_size_per_device"] == 2
    assert res["timed_steps"] == 2 and res["steps_per_s"] > 0
    assert res["clips_per_s"] == pytest.approx(2 * res["steps_per_s"])
    assert "mfu" not in res  # no GPU, no MFU
    # independent count of one training step of the same model (masks vary, so token counts vary a little)
    model = VJEPAModule(frames=8, context_frames=4, patch_size=8, dim=32, depth=2, heads=4, pred_dim=32,
                        pred_depth=2, pred_heads=4)  # fmt: skip
    video = torch.randint(0, 256, (2, 8, 3, 64, 64), dtype=torch.uint8)
    with flop_counter() as counter:
        model.jepa_loss({"video": video}, salt=0)[0].backward()
    assert res["flops_per_clip"] == pytest.approx(counter.get_total_flops() / 2, rel=0.3)


def test_compiled_training_step_matches_eager_in_the_same_run(tmp_path: Path) -> None:
    """`--compile both`: eager, then the blocks compiled through inductor, on the same data and seed."""
    out = tmp_path / "compile.json"
    argv = ["--config", str(ROOT / "configs/trainer/cpu.yaml"), "--config", str(ROOT / "configs/vjepa/tiny.yaml"),
            "--synthetic", "--steps", "3", "--warmup", "2", "--json", str(out), "--batch-size", "2",
            "--compile", "both"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.read_text())
    eager, compiled = res["runs"]["eager"], res["runs"]["compiled"]
    assert (eager["compile"], compiled["compile"]) == ("off", "blocks") and len(compiled["losses"]) == 5
    # counted eagerly in both runs (masks vary the token counts from step to step)
    assert compiled["flops_per_step_per_device"] == pytest.approx(eager["flops_per_step_per_device"], rel=0.3)
    assert res["compiled_vs_eager"]["max_abs_loss_difference"] < 1e-5 and res["compiled_vs_eager"]["speedup"] > 0


def test_batch_size_search_runs_each_size_in_its_own_process(tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    argv = ["--config", str(ROOT / "configs/trainer/cpu.yaml"), "--config", str(ROOT / "configs/vjepa/tiny.yaml"),
            "--synthetic", "--steps", "1", "--warmup", "1", "--json", str(out), "--batch-sizes", "2", "1",
            "--activation-checkpointing", "blocks"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert [t["batch_size"] for t in res["tried"]] == [1, 2] and all(t["fits"] for t in res["tried"])
    assert res["largest_that_fits"] == 2 and res["activation_checkpointing"] == "blocks"
    assert all(t["clips_per_s"] > 0 for t in res["tried"])


def test_bench_train_rejects_bad_overrides(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="'--key value' pairs"):
        main(["--config", str(ROOT / "configs/vjepa/tiny.yaml"), "--json", str(tmp_path / "x.json"), "--trainer.x"])


@pytest.mark.gpu
def test_gpu_vit_l16_vjepa_throughput_and_mfu(tmp_path: Path) -> None:
    """The GPU check: ViT-L/16 V-JEPA at 16x224x224, bf16, 50 steps on synthetic clips (figures into the JSON)."""
    out = Path(ROOT / "runs" / "bench" / "vjepa_vit_l16_gpu.json")
    argv = ["--config", str(ROOT / "configs/trainer/ddp.yaml"), "--config", str(ROOT / "configs/vjepa/vit_l16.yaml"),
            "--synthetic", "--steps", "50", "--warmup", "5", "--json", str(out), "--trainer.devices", "1"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["precision"] == "bf16-mixed" and res["flops_per_clip"] > 1e12
    assert res["mfu"] is not None and 0 < res["mfu"] < 1 and res["peak_memory_gib"] > 1
