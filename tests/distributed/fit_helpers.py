"""Helpers of the multi-process fit tests: real shards, `wm fit` command lines, kills, and the probe's records.

Not a test module; the tests import it with their own folder on sys.path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.data.shards import Sample, ShardWriter
from pipeline.data.sources.encode import encode_frames

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BASE = ["--config", "configs/vjepa/tiny.yaml"]


def write_clips(root: Path, count: int = 24, per_shard: int = 4) -> list[str]:
    """Real mp4 shards of `count` distinct 12-frame 32x32 clips; returns the keys."""
    rng = np.random.default_rng(0)
    keys = [f"clip{i:03d}" for i in range(count)]
    with ShardWriter(root, shard_size=per_shard) as writer:
        for key in keys:
            base = rng.integers(0, 255, (1, 4, 4, 3)).astype(np.float32)
            frames = np.repeat(np.repeat(base, 8, 1), 8, 2) + np.arange(12)[:, None, None, None] * 4
            meta = {"fps": 10, "num_frames": 12, "width": 32, "height": 32}
            writer.write(Sample(key=key, mp4=encode_frames(np.clip(frames, 0, 255).astype(np.uint8), 10.0), meta=meta))
    return keys


def run_config(tmp: Path, shards: Path, steps: int, workers: int, val: bool = False, every: int = 1,
               stop_at: int | None = None) -> Path:  # fmt: skip
    """Overrides of the tiny V-JEPA config for a short run that checkpoints every `every` steps.

    The callbacks are the trainer configs' (guard, checkpoint without a dirpath, resume state, preemption) plus the
    probe, with a checkpoint interval short enough for a test; the CSV logger opens a new version_N on every
    launch, as in a user's run, and the checkpoints go where a user's go (ROOT/checkpoints).
    """
    out = {
        "model": {"init_args": {"monitor_every": 1000}},
        "data": {"init_args": {
            "train_shards": str(shards), "val_shards": str(shards) if val else None, "resolution": 32,
            "frame_stride": 1, "batch_size": 2, "num_workers": workers, "steps_per_epoch": 4, "val_samples": None,
            "shuffle_buffer": 4, "decoder": "pyav",
        }},
        "trainer": {
            "max_steps": steps, "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp)}},
            "num_sanity_val_steps": 0, "check_val_every_n_epoch": 1 if val else 1000, "default_root_dir": str(tmp),
            "callbacks": [
                {"class_path": "pipeline.distributed.guard.NonFiniteGuard"},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
                    "save_last": True, "every_n_train_steps": every, "save_top_k": 0}},
                {"class_path": "pipeline.distributed.resume.ResumeState"},
                {"class_path": "pipeline.distributed.preemption.Preemption"},
                {"class_path": "pipeline.distributed.run_stats.RunStats", "init_args": {"every_n_steps": 1}},
                {"class_path": "resume_probe.Probe", "init_args": {"out": str(tmp / "probe"), "stop_at": stop_at}},
            ],
        },
    }  # fmt: skip
    path = tmp / "run.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(out))
    return path


def last_ckpt(run: Path) -> Path:
    """Where a run's `last.ckpt` lands: ROOT/checkpoints, whatever logger version the launch got."""
    return run / "checkpoints" / "last.ckpt"


def fit_cmd(trainer: list[str], config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "fit", *trainer, *BASE, "--config", str(config), *extra]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
            **extra}  # fmt: skip


def start(cmd: list[str], log: Path, **extra_env: str) -> subprocess.Popen:
    # own session: a kill takes the whole job (Lightning's extra ranks and the data workers) with it
    return subprocess.Popen(cmd, cwd=ROOT, env=env(**extra_env), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert rc == 0, log.read_text()[-4000:]


def ckpt_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def kill_after(proc: subprocess.Popen, ckpt: Path, step: int, timeout: float = 300) -> int:
    """SIGKILL the job once its last checkpoint has reached `step` optimizer steps; returns the step it holds."""
    deadline = time.monotonic() + timeout
    while ckpt_step(ckpt) < step:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return ckpt_step(ckpt)


def records(probe: Path, rank: int, phase: str = "train") -> dict[int, dict]:
    lines = (probe / f"rank{rank}.jsonl").read_text().splitlines()
    out: dict[int, dict] = {}
    for rec in map(json.loads, lines):
        if rec["phase"] == phase:
            out.setdefault(rec["step"], rec) if phase == "train" else out.setdefault(len(out), rec)
    return out


def check_resume(straight: Path, resumed: Path, resumed_from: int, steps: int, ranks: int) -> None:
    # the masks come from the data workers' MaskCollator (configs/vjepa/tiny.yaml), seeded by stream position
    saved = sorted(resumed.rglob("config.yaml"))  # LightningCLI saves it in the logger's version_N
    assert saved and all("class_path: pipeline.nn.masks.MaskCollator" in p.read_text() for p in saved)
    for rank in range(ranks):
        a, b = records(straight / "probe", rank), records(resumed / "probe", rank)
        assert sorted(a) == list(range(steps))
        assert sorted(b) == list(range(resumed_from, steps)), f"rank {rank} resumed at {sorted(b)[:1]}"
        for step in range(resumed_from, steps):
            assert b[step]["keys"] == a[step]["keys"], f"rank {rank} step {step}: other samples after resume"
            assert b[step]["epoch"] == a[step]["epoch"], f"rank {rank} step {step}: epoch {b[step]['epoch']}"
            assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=1e-6), f"rank {rank} step {step}"
    for rank in range(ranks):
        torch.testing.assert_close(
            torch.load(resumed / "probe" / f"rank{rank}.weights.pt", weights_only=True),
            torch.load(straight / "probe" / f"rank{rank}.weights.pt", weights_only=True), rtol=1e-5, atol=1e-6,
        )  # fmt: skip




def check_run_stats(run: Path, ranks: int) -> None:
    """Per-rank throughput and data wait were logged, and device-hours grew across the restart."""
    import csv

    hours = []
    for version in sorted((run / "lightning_logs").iterdir()):
        with open(version / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("perf/device_hours")]
        assert rows, f"no perf/ metrics in {version}"
        for rank in range(ranks):
            assert all(float(r[f"perf/rank{rank}/samples_per_s"]) > 0 for r in rows)
            assert all(0.0 <= float(r[f"perf/rank{rank}/data_wait"]) <= 1.0 for r in rows)
        hours.append([float(r["perf/device_hours"]) for r in rows])
    saved = torch.load(last_ckpt(run), map_location="cpu", weights_only=True)["callbacks"]
    stats = next(v for k, v in saved.items() if k.startswith("RunStats"))
    assert hours[-1][0] > hours[0][-1] > 0 and stats["device_hours"] >= hours[-1][-1]
