"""`wm bench profile`: where the time of one training step goes, by kernel category, as JSON.

    wm bench profile --config configs/trainer/ddp.yaml --config configs/vjepa/vit_l16.yaml --synthetic \
        --trainer.devices 1 --json launch/gpu_figures/vjepa_vit_l16_profile.json

A real Lightning fit of the configured run (as `wm bench train` builds it) is profiled with torch.profiler for
`--steps` steps after `--warmup`. The device time of every operator (its CUDA kernels on a GPU; its own CPU time
on the CPU) goes into one category: the step's own phases first, by the range it ran in
(`wm.ema`, `wm.masks`, `wm.optimizer`: the EMA update, the mask gathers and the optimizer update with gradient
clipping, marked with torch.profiler.record_function), then by operator name: communication, attention,
matmul, norm/elementwise, memory copies, other. `host_gap` is the rest of the step's wall time, when the device
ran nothing (launch overhead, Python, host synchronisation, data waits).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.profiler import ProfilerActivity, profile

from pipeline.bench import write_json

# record_function ranges of the training step's phases, innermost first: the EMA update (models/ema_module.py),
# the mask gathers (nn/masks.py), and the optimizer update (opened by StepProfiler after the backward pass)
PHASES = ("wm.ema", "wm.masks", "wm.optimizer")
PATTERNS = (  # first match wins; lower-case kernel or operator names
    ("communication", r"nccl|all_reduce|allreduce|all_gather|allgather|reduce_scatter|broadcast|gloo|c10d"),
    ("attention", r"flash|fmha|attention|sdpa|cudnn.*mha|softmax"),
    ("matmul", r"gemm|matmul|\bmm\b|aten::mm|addmm|bmm|linear|cutlass|xmma|cublas|conv|sm\d+_"),
    ("norm_elementwise", r"norm|elementwise|vectorized|reduce|gelu|silu|relu|add|mul|div|sub|exp|pow|sqrt|"
                         r"where|fill|triton|fused|sum|mean|cat|index|gather|scatter|embedding"),  # fmt: skip
    ("memcpy", r"memcpy|memset|copy_|to_copy|clone|contiguous"),
)


def category(name: str) -> str:
    """The category of a kernel or operator by its name."""
    lower = name.lower()
    for label, pattern in PATTERNS:
        if re.search(pattern, lower):
            return label
    return "other"


def _phase_of(event: Any) -> str | None:
    """The training-step phase range an operator ran inside, following its CPU parents."""
    node, depth = event, 0
    while node is not None and depth < 256:
        if node.name in PHASES:
            return node.name.removeprefix("wm.")
        node, depth = node.cpu_parent, depth + 1
    return None


def _device_time_us(event: Any, cuda: bool) -> float:
    """Device time an operator accounts for by itself: the kernels it launched (CUDA), or its own CPU time for
    an aten operator (CPU; parents are not counted twice)."""
    if cuda:
        return float(event.self_device_time_total)
    return float(event.self_cpu_time_total) if event.name.startswith("aten::") else 0.0


def summarize(prof: profile, wall_s: float, steps: int, cuda: bool) -> dict[str, Any]:
    """Device time per category (ms per step and fraction of the step), the top operators, and the host gap.

    The host gap is the step's wall time minus the device's busy time, counting kernels as if none overlapped
    (one stream; communication overlapping compute makes it an underestimate).
    """
    per_category: dict[str, float] = defaultdict(float)
    per_op: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type.name != "CPU":
            continue
        duration = _device_time_us(event, cuda)
        if duration <= 0:
            continue
        per_category[_phase_of(event) or category(event.name)] += duration
        per_op[event.name] += duration
    step_us = wall_s * 1e6 / steps
    busy_us = sum(per_category.values()) / steps
    out = {name: {"ms_per_step": us / steps / 1e3, "fraction_of_step": us / steps / step_us}
           for name, us in sorted(per_category.items(), key=lambda kv: -kv[1])}  # fmt: skip
    gap = max(0.0, step_us - busy_us)
    out["host_gap"] = {"ms_per_step": gap / 1e3, "fraction_of_step": gap / step_us}
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:15]
    return {
        "step_ms": step_us / 1e3, "device_busy_ms_per_step": busy_us / 1e3, "categories": out,
        "top_operators": [{"name": n[:160], "ms_per_step": us / steps / 1e3, "category": category(n)}
                          for n, us in top],
    }  # fmt: skip


class StepProfiler(pl.Callback):
    """Profiles training steps [warmup, warmup + steps) with torch.profiler; keeps the wall time of that window."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.prof: profile | None = None
        self.batches = 0
        self.start = self.end = 0.0
        self.cuda = torch.cuda.is_available()
        self._update: Any = None

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self.batches == self.warmup:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self.prof = profile(activities=activities, record_shapes=False)
            self._sync()
            self.prof.__enter__()
            self.start = time.perf_counter()

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        # called inside optimizer.step, after the closure's forward and backward, before the update itself
        if self.prof is not None and self._update is None:
            self._update = torch.profiler.record_function("wm.optimizer")
            self._update.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        if self._update is not None:
            self._update.__exit__(None, None, None)
            self._update = None
        self.batches += 1
        if self.prof is not None and self.batches == self.warmup + self.steps:
            self._sync()
            self.end = time.perf_counter()
            self.prof.__exit__(None, None, None)
            trainer.should_stop = True


def main(argv: list[str]) -> int:
    from pipeline.bench.train import bench_config, run

    parser = argparse.ArgumentParser(prog="wm bench profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="LightningCLI YAML (repeatable, merged)")
    parser.add_argument("--json", required=True, type=Path, help="where to write the results")
    parser.add_argument("--steps", type=int, default=3, help="profiled training steps")
    parser.add_argument("--warmup", type=int, default=3, help="unprofiled steps first")
    parser.add_argument("--synthetic", action="store_true", help="random clips of the data config's shape")
    parser.add_argument("--batch-size", type=int, default=None, help="override the per-rank batch size")
    args, overrides = parser.parse_known_args(argv)
    if args.steps < 1 or args.warmup < 1:
        raise SystemExit("wm bench profile: --steps and --warmup must be >= 1")
    bench_args = argparse.Namespace(config=args.config, warmup=args.warmup, steps=args.steps + 1,
                                    synthetic=args.synthetic, batch_size=args.batch_size)  # fmt: skip
    profiler = StepProfiler(args.warmup, args.steps)
    trainer, _, batch = run(bench_config(bench_args, overrides), args.warmup, extra_callbacks=[profiler])
    if profiler.prof is None or profiler.end == 0.0:
        raise SystemExit(f"wm bench profile: the fit stopped after {trainer.global_step} steps; nothing profiled")
    result = {
        "configs": args.config, "overrides": overrides, "synthetic": args.synthetic,
        "model": type(trainer.lightning_module).__name__, "precision": str(trainer.precision),
        "device": torch.cuda.get_device_name() if profiler.cuda else "cpu", "batch_size_per_device": batch,
        "profiled_steps": args.steps, "torch": torch.__version__,
        **summarize(profiler.prof, profiler.end - profiler.start, args.steps, profiler.cuda),
    }  # fmt: skip
    if trainer.global_rank == 0:
        write_json(args.json, result)
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
