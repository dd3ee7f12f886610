"""GPU check of the distributed stack (run by launch/gpu_check.sh on a CUDA machine).

For ZeRO stage 2 and 3, on every visible GPU: a real `wm fit` of V-JEPA for a few dozen steps in bf16, with
`StepStats` recording throughput, MFU (counted FLOPs / step time / peak FLOPs) and peak memory, and
`EmaReference` comparing the bf16 target encoder with an fp32 reference EMA of the gathered online weights
(it must move wherever the reference moves). Then each
checkpoint is exported with `wm export`, reloaded, and its embeddings compared with the trained module's.
Everything lands in one JSON file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense, per GPU


def _gathered(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        return [p.detach().float().clone() for p in params]


class StepStats(pl.Callback):
    """Seconds per step after `warmup` steps, samples/s, forward FLOPs x 3 per step, MFU and peak memory."""

    def __init__(self, out: str, warmup: int = 5) -> None:
        """
        Args:
            out: JSON file for the numbers.
            warmup: steps excluded from the timing (compilation, allocator warm-up).
        """
        self.out, self.warmup = Path(out), warmup
        self.times: list[float] = []
        self.flops: float | None = None
        self.batch = 0
        self._t = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        torch.cuda.synchronize()
        self._t = time.perf_counter()
        self.batch = int(batch["video"].shape[0])
        if self.flops is None:
            # the bf16 autocast of the training step is not active in callbacks (DeepSpeed keeps bf16 weights)
            with torch.no_grad(), bf16(), FlopCounterMode(display=False) as counter:
                pl_module.jepa_loss(batch, salt=0)
            self.flops = 3.0 * counter.get_total_flops()  # forward + backward (about twice the forward)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        timed = self.times[self.warmup :] or self.times
        step = sum(timed) / len(timed)
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        stats = {
            "device": name, "world_size": trainer.world_size, "steps_timed": len(timed), "step_seconds": step,
            "samples_per_second": self.batch * trainer.world_size / step, "flops_per_step": self.flops,
            "mfu": (self.flops / step / peak) if (peak and self.flops) else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        }  # fmt: skip
        if trainer.is_global_zero:
            _merge(self.out, stats)


class EmaReference(pl.Callback):
    """fp32 reference EMA of the gathered online encoder, compared with the (possibly ZeRO-3 partitioned, bf16)
    target: the error, and how many target weights stayed put where the reference moved by more than bf16 can
    hide (a bf16 EMA without fp32 accumulation freezes most of them)."""

    def __init__(self, out: str) -> None:
        """
        Args:
            out: JSON file for the result.
        """
        self.out = Path(out)
        self.reference: list[torch.Tensor] | None = None
        self.start: list[torch.Tensor] | None = None

    def _advance(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the module logged the momentum it used for the EMA update that just happened
        m = float(trainer.callback_metrics["train/ema_momentum"])
        online = _gathered(list(pl_module.encoder.parameters()))
        self.reference = [m * r + (1 - m) * o for r, o in zip(self.reference, online, strict=True)]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reference = _gathered(list(pl_module.target_encoder.parameters()))
        self.start = [r.clone() for r in self.reference]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step > 0:
            self._advance(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._advance(trainer, pl_module)
        target = _gathered(list(pl_module.target_encoder.parameters()))
        error = max(float((a - b).abs().max()) for a, b in zip(target, self.reference, strict=True))
        scale = max(float(r.abs().max()) for r in self.reference)
        moved = [(r - s).abs() > 2 * r.abs() * 2.0**-8 for r, s in zip(self.reference, self.start, strict=True)]
        frozen = sum(int(((t == s) & m).sum()) for t, s, m in zip(target, self.start, moved, strict=True))
        dtype = str(next(pl_module.target_encoder.parameters()).dtype)
        side = int(trainer.datamodule.hparams.resolution)
        with torch.no_grad(), bf16():
            embed = pl_module.embed(probe_clip(pl_module.hparams.frames, side).to(pl_module.device)).float().cpu()
        if trainer.is_global_zero:
            torch.save(embed, self.out.with_suffix(".embed.pt"))
            _merge(self.out, {"ema_max_abs_error": error, "ema_reference_max_abs": scale, "probe_side": side,
                              "ema_target_dtype": dtype, "ema_moved_by_reference": sum(int(m.sum()) for m in moved),
                              "ema_frozen_where_reference_moved": frozen})  # fmt: skip


def bf16() -> torch.autocast:
    """The autocast the bf16-mixed trainer configs train under."""
    return torch.autocast("cuda", dtype=torch.bfloat16)


def probe_clip(frames: int, side: int) -> torch.Tensor:
    """Fixed uint8 [2, frames, 3, side, side] clip for comparing embeddings before and after export."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, frames, 3, side, side), generator=gen, dtype=torch.uint8)


def _merge(path: Path, values: dict[str, Any]) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    path.write_text(json.dumps(data, indent=2))


def run_stage(stage: int, work: Path, steps: int, devices: int, extra: list[str]) -> dict[str, Any]:
    """Fit V-JEPA under ZeRO `stage`, export the last checkpoint, reload it; returns the stage's numbers."""
    from pipeline.distributed.export import load_exported

    stats = work / f"zero{stage}.json"
    stats.unlink(missing_ok=True)
    ckpt_dir = work / f"zero{stage}_ckpt"
    callbacks = [
        {"class_path": "pipeline.distributed.gpu_check.StepStats", "init_args": {"out": str(stats)}},
        {"class_path": "pipeline.distributed.gpu_check.EmaReference", "init_args": {"out": str(stats)}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(ckpt_dir), "save_last": True, "every_n_train_steps": steps, "save_top_k": 0}},
    ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "pipeline.cli", "fit", "--config", f"configs/trainer/deepspeed_stage_{stage}.yaml",
        "--config", "configs/vjepa/tiny.yaml", "--trainer.devices", str(devices), "--trainer.max_steps", str(steps),
        "--trainer.logger", "false", "--trainer.callbacks", json.dumps(callbacks),
        "--trainer.default_root_dir", str(work / f"zero{stage}"), "--trainer.limit_val_batches", "0", *extra,
    ]  # fmt: skip
    started = time.time()
    subprocess.run(cmd, check=True)
    result = json.loads(stats.read_text())
    result["fit_wall_seconds"] = time.time() - started
    out = work / f"zero{stage}.safetensors"
    subprocess.run([sys.executable, "-m", "pipeline.cli", "export", "--ckpt", str(ckpt_dir / "last.ckpt"),
                    "--out", str(out), "--weights", "both"], check=True)  # fmt: skip
    model = load_exported(out).cuda()
    with torch.no_grad(), bf16():
        embed = model.embed(probe_clip(model.hparams.frames, result["probe_side"]).cuda()).float().cpu()
    trained = torch.load(stats.with_suffix(".embed.pt"), weights_only=True)
    result["export_embed_max_abs_diff"] = float((embed - trained).abs().max())
    result["export_embed_max_abs"] = float(trained.abs().max())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="launch/gpu_check.json", help="results JSON (committed with the repo)")
    parser.add_argument("--work", default="runs/gpu_check", help="scratch directory for runs and checkpoints")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per stage")
    parser.add_argument("--devices", type=int, default=None, help="GPUs (default: every visible one, ZeRO needs 2+ "
                        "to shard)")
    parser.add_argument("extra", nargs="*", help="more `wm fit` arguments (e.g. a bigger model config)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.exit(2, "gpu_check: needs a CUDA device\n")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    devices = args.devices or torch.cuda.device_count()
    results: dict[str, Any] = {"torch": torch.__version__, "steps": args.steps, "devices": devices, "stages": {}}
    for stage in (2, 3):
        results["stages"][f"zero{stage}"] = run_stage(stage, work, args.steps, devices, args.extra)
    results["ema_ok"] = all(
        s["ema_max_abs_error"] <= 1e-2 * max(1.0, s["ema_reference_max_abs"]) and s["ema_moved_by_reference"] > 0
        and s["ema_frozen_where_reference_moved"] == 0 for s in results["stages"].values()
    )  # fmt: skip
    results["export_ok"] = all(
        s["export_embed_max_abs_diff"] <= 5e-2 * max(1.0, s["export_embed_max_abs"]) for s in results["stages"].values()
    )
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0 if results["ema_ok"] and results["export_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
