"""`wm bench train`: training throughput of any model config, with counted FLOPs, MFU and peak memory on GPUs.

    wm bench train --config configs/trainer/cpu.yaml --config configs/vjepa/tiny.yaml --json out.json --steps 10
    wm bench train --config configs/trainer/ddp.yaml --config configs/vjepa/vit_l16.yaml --synthetic \
        --steps 50 --json runs/bench/vjepa_vit_l16.json --trainer.devices 1

The run is a real Lightning fit of the configured model, data and strategy (logging, checkpoints and
validation off). Steps/s are timed after `--warmup` steps; model FLOPs of one training step (forward and
backward, per rank) are counted by torch.utils.flop_counter.FlopCounterMode on a warmup step. `--synthetic`
replaces the data module by random uint8 clips of the data config's shape (plus one-hot actions when the
model takes actions and the configured batch_transform), so a model can be measured without shards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from pipeline.bench import write_json

# dense bf16 tensor-core peaks (TFLOP/s) by a substring of torch.cuda.get_device_name(), most specific first
PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.2),
    ("V100", 125.0),
)


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# the CPU fused attention kernels are missing from FlopCounterMode's registry; count them like the GPU ones
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that also counts the CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by name, or None when the name is not in the table."""
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


class SyntheticClips(IterableDataset):
    """Endless batches of random uint8 clips [B, T, C, H, W] (+ one-hot actions), cycling a few pregenerated ones."""

    def __init__(
        self, batch_size: int, frames: int, resolution: int, action_dim: int | None, transform: Any, seed: int = 0
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.batches = []
        for _ in range(2):  # fresh random content per step would make the CPU, not the model, the bottleneck
            batch: dict[str, Any] = {
                "video": torch.randint(0, 256, (batch_size, frames, 3, resolution, resolution), generator=gen).byte(),
                "key": [f"synthetic-{i}" for i in range(batch_size)],
            }
            if action_dim:
                idx = torch.randint(0, action_dim, (batch_size, frames), generator=gen)
                batch["actions"] = torch.nn.functional.one_hot(idx, action_dim).float()
            self.batches.append(batch)
        self.transform = transform

    def __iter__(self):
        step = 0
        while True:
            batch = dict(self.batches[step % len(self.batches)])
            yield self.transform(batch) if self.transform is not None else batch
            step += 1


class SyntheticDataModule(pl.LightningDataModule):
    """Random clips of a given shape for benchmarks."""

    def __init__(
        self,
        batch_size: int = 8,
        frames: int = 16,
        resolution: int = 224,
        action_dim: int | None = None,
        batch_transform: Any = None,
    ) -> None:
        """
        Args:
            batch_size: clips per batch (per rank).
            frames: frames per clip.
            resolution: square frame side.
            action_dim: width of one-hot actions to add, or None for none.
            batch_transform: callable applied to each batch (e.g. pipeline.nn.masks.MaskCollator).
        """
        super().__init__()
        self.batch_size = batch_size
        self.args = (batch_size, frames, resolution, action_dim, batch_transform)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SyntheticClips(*self.args), batch_size=None, pin_memory=torch.cuda.is_available())


class StepTimer(pl.Callback):
    """Counts FLOPs of training step `flop_step` and times the steps from `warmup` on; with `compile_mode` it
    compiles the model right after the counted step (FLOPs are counted eagerly: FlopCounterMode is a dispatch mode
    compiled code refuses), so the warmup steps after it pay for the compilation."""

    def __init__(self, warmup: int, flop_step: int, compile_mode: str = "off") -> None:
        self.warmup, self.flop_step, self.compile_mode = warmup, flop_step, compile_mode
        self.counter: FlopCounterMode | None = None
        self.flops = 0
        self.start: float | None = None
        self.end: float | None = None
        self.losses: list[float] = []
        self.batches = 0  # over the whole fit: batch_idx restarts with every epoch

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self.batches == self.warmup:
            self._sync()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()
        if self.batches == self.flop_step:
            self.counter = flop_counter()
            self.counter.__enter__()

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, out: Any, batch: Any, idx: int
    ) -> None:
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.flops, self.counter = self.counter.get_total_flops(), None
            if self.compile_mode != "off":
                from pipeline.models.compile import compile_model, reset

                reset()
                compile_model(module, self.compile_mode)
        loss = out["loss"] if isinstance(out, dict) else out
        if loss is not None:
            self.losses.append(float(loss.detach()))
        self.batches += 1
        self._sync()
        self.end = time.perf_counter()


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge YAML configs like LightningCLI's repeated --config: dicts merge, a new class_path replaces init_args."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            same_class = old.get("class_path") == value.get("class_path", old.get("class_path"))
            out[key] = deep_merge(old, value) if same_class else value
        else:
            out[key] = value
    return out


def set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """cfg['a']['b'] = value for 'a.b' (creating dicts on the way)."""
    *path, last = dotted.split(".")
    for part in path:
        cfg = cfg.setdefault(part, {})
    cfg[last] = value


def bench_config(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """The merged config of the run, with the benchmark's trainer settings and the synthetic data module."""
    cfg: dict[str, Any] = {}
    for path in args.config:
        cfg = deep_merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
    if len(overrides) % 2:
        raise SystemExit(f"wm bench train: overrides come as '--key value' pairs, got {overrides}")
    for key, value in zip(overrides[::2], overrides[1::2], strict=True):
        if not key.startswith("--"):
            raise SystemExit(f"wm bench train: unexpected argument {key!r}")
        set_dotted(cfg, key[2:], yaml.safe_load(value))
    if "model" not in cfg:
        raise SystemExit("wm bench train: no `model:` in the given configs")
    trainer = cfg.setdefault("trainer", {})
    trainer.update(
        max_steps=args.warmup + args.steps, max_epochs=-1, logger=False, enable_checkpointing=False,
        limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[],
    )  # fmt: skip
    if args.synthetic:
        data = cfg.get("data", {}).get("init_args", {})
        init = {k: data[k] for k in ("batch_size", "frames", "resolution", "batch_transform") if k in data}
        init["action_dim"] = cfg["model"].get("init_args", {}).get("action_dim")
        if args.batch_size is not None:
            init["batch_size"] = args.batch_size
        cfg["data"] = {"class_path": f"{__name__}.SyntheticDataModule", "init_args": init}
    elif args.batch_size is not None:
        set_dotted(cfg, "data.init_args.batch_size", args.batch_size)
    return cfg


def matmul_ceiling_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> float | None:
    """The bf16 dense matmul throughput this device reaches (n x n x n, best of `iters`); None off CUDA.

    MFU against it says how far the model is from what the chip really sustains, next to the datasheet peak.
    """
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n**3 / best / 1e12


def run(
    cfg: dict[str, Any], warmup: int, extra_callbacks: list[pl.Callback] | None = None, compile_mode: str = "off",
    activation_checkpointing: str = "off",
) -> tuple[pl.Trainer, StepTimer, int]:
    """Fit the configured run (its model compiled as `wm fit --compile` would); return the trainer, the timer
    and the per-rank batch size."""
    from lightning.pytorch.cli import LightningCLI

    argv, sys.argv = sys.argv, sys.argv[:1]  # the config comes from `cfg`, not from this process's arguments
    try:
        cli = LightningCLI(
            subclass_mode_model=True, subclass_mode_data=True, run=False, save_config_callback=None, args=cfg,
            seed_everything_default=0,
        )  # fmt: skip
    finally:
        sys.argv = argv
    from pipeline.train_cli import configure_threads

    configure_threads(cli.trainer, cli.datamodule)  # the threads `wm fit` would run with
    if activation_checkpointing != "off":
        from pipeline.models.memory import checkpoint_activations

        checkpoint_activations(cli.model, activation_checkpointing)
    flop_step = 0 if compile_mode != "off" else max(0, warmup - 1)  # compiled: count first, compile, then warm up
    timer = StepTimer(warmup=warmup, flop_step=flop_step, compile_mode=compile_mode)
    cli.trainer.callbacks.extend([timer, *(extra_callbacks or [])])
    cli.trainer.fit(cli.model, cli.datamodule)
    dm = cli.datamodule
    batch = getattr(dm, "batch_size", None) or dm.hparams.get("batch_size")
    return cli.trainer, timer, int(batch)


def measure(args: argparse.Namespace, overrides: list[str], compile_mode: str) -> tuple[pl.Trainer, dict[str, Any]]:
    """One timed fit; its throughput, FLOPs, losses and (on a GPU) MFU and peak memory."""
    trainer, timer, batch = run(bench_config(args, overrides), args.warmup, compile_mode=compile_mode,
                                activation_checkpointing=args.activation_checkpointing)  # fmt: skip
    if timer.start is None or timer.end is None or trainer.global_step < args.warmup + args.steps:
        raise SystemExit(f"wm bench train: the fit stopped after {trainer.global_step} steps; nothing to time")
    elapsed = timer.end - timer.start
    timed = timer.batches - args.warmup  # batches, = optimizer steps unless gradients are accumulated
    steps_per_s = timed / elapsed
    world = trainer.world_size
    result: dict[str, Any] = {
        "compile": compile_mode, "model": type(trainer.lightning_module).__name__,
        "precision": str(trainer.precision), "devices": world, "batch_size_per_device": batch,
        "warmup_steps": args.warmup, "timed_steps": timed, "seconds": elapsed, "steps_per_s": steps_per_s,
        "clips_per_s": steps_per_s * batch * world, "flops_per_step_per_device": timer.flops,
        "flops_per_clip": timer.flops / batch,
        "loss_first": timer.losses[0] if timer.losses else None,
        "loss_last": timer.losses[-1] if timer.losses else None, "losses": timer.losses,
    }  # fmt: skip
    if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda":
        achieved = timer.flops * steps_per_s / 1e12
        result.update(achieved_tflops_per_device=achieved, peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30)
        torch.cuda.reset_peak_memory_stats()
    return trainer, result


def search_batch_size(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this benchmark at each of `--batch-sizes` in a fresh process (an out-of-memory error cannot be cleanly
    recovered in-process), stopping at the first size that fails; the JSON lists them all."""
    import subprocess
    import tempfile

    base, skip = [], False
    for arg in argv:  # the same command without --batch-sizes/--json
        if skip and not arg.startswith("--"):
            continue
        skip = arg in ("--batch-sizes", "--json", "--batch-size")
        if not skip:
            base.append(arg)
    tried, largest = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for size in sorted(args.batch_sizes):
            out = Path(tmp) / f"b{size}.json"
            proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "train", *base, "--batch-size",
                                   str(size), "--json", str(out)], capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0 or not out.is_file():
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
                tried.append({"batch_size": size, "fits": False, "error": tail[0][:300]})
                break
            numbers = json.loads(out.read_text())
            tried.append({"batch_size": size, "fits": True, **{k: numbers.get(k) for k in
                          ("clips_per_s", "steps_per_s", "mfu", "peak_memory_gib")}})  # fmt: skip
            largest = size
    result = {"configs": args.config, "tried": tried, "largest_that_fits": largest,
              "activation_checkpointing": args.activation_checkpointing}  # fmt: skip
    write_json(args.json, result)
    print(json.dumps(result, indent=2))
    return 0 if largest is not None else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wm bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="LightningCLI YAML (repeatable, merged)")
    parser.add_argument("--json", required=True, type=Path, help="where to write the results")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (FLOPs are counted on the last)")
    parser.add_argument("--synthetic", action="store_true", help="random clips of the data config's shape")
    parser.add_argument("--batch-size", type=int, default=None, help="override the per-rank batch size")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by GPU name)")
    parser.add_argument("--compile", choices=["off", "blocks", "both"], default="off",
                        help="eager, compiled blocks, or both one after the other in this run (same data, same seed)")
    parser.add_argument("--activation-checkpointing", choices=["off", "blocks"], default="off",
                        help="recompute each block's activations in the backward (as wm fit's option)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="try these per-device batch sizes in turn, each in its own process, up to the first that "
                             "does not fit; report every one and the largest that fit")
    args, overrides = parser.parse_known_args(argv)
    if args.batch_sizes:
        return search_batch_size(args, argv)
    if args.steps < 1 or args.warmup < 1 or (args.compile != "off" and args.warmup < 2):
        raise SystemExit("wm bench train: --steps and --warmup must be >= 1 (--warmup >= 2 with --compile)")
    modes = ["off", "blocks"] if args.compile == "both" else [args.compile]
    runs, trainer = {}, None
    for mode in modes:
        trainer, runs["eager" if mode == "off" else "compiled"] = measure(args, overrides, mode)
    device = trainer.strategy.root_device
    result: dict[str, Any] = {
        "configs": args.config, "overrides": overrides, "synthetic": args.synthetic, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode, one forward+backward training step",
    }  # fmt: skip
    if device.type == "cuda":
        peak = args.peak_tflops or peak_tflops(result["device"])
        ceiling = matmul_ceiling_tflops(device)
        result.update(peak_tflops=peak, matmul_ceiling_tflops=ceiling)
        for numbers in runs.values():
            achieved = numbers["achieved_tflops_per_device"]
            numbers["mfu"] = achieved / peak if peak else None
            numbers["mfu_vs_matmul_ceiling"] = achieved / ceiling if ceiling else None
    if len(runs) == 2:
        eager, compiled = runs["eager"]["losses"], runs["compiled"]["losses"]
        result["compiled_vs_eager"] = {
            "speedup": runs["compiled"]["steps_per_s"] / runs["eager"]["steps_per_s"],
            "max_abs_loss_difference": max((abs(a - b) for a, b in zip(eager, compiled, strict=False)), default=None),
        }
    if len(runs) == 1:  # one fit: its numbers at the top level too
        result.update(next(iter(runs.values())))
    result["runs"] = runs
    if trainer.global_rank == 0:
        write_json(args.json, result)
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
