"""Exact resume and multi-process fits of the real `wm fit` (tiny V-JEPA, real shards, DataLoader workers, gloo).

A run killed with SIGKILL mid-epoch and resumed from its last checkpoint sees the same next samples and
reproduces the uninterrupted run's losses, at world size 1 and 2. The 2-process runs also check that an eval
pass reads every validation sample exactly once across ranks and that the ranks end with identical weights.
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
from pipeline.distributed.export import load_exported
from pipeline.distributed.export import main as export_main

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


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("resume_shards")
    return root, write_clips(root)


def run_config(tmp: Path, shards: Path, steps: int, workers: int, val: bool = False) -> Path:
    """Overrides of the tiny V-JEPA config for a short run that checkpoints every step."""
    out = {
        "model": {"init_args": {"monitor_every": 1000}},
        "data": {"init_args": {
            "train_shards": str(shards), "val_shards": str(shards) if val else None, "resolution": 32,
            "frame_stride": 1, "batch_size": 2, "num_workers": workers, "steps_per_epoch": 4, "val_samples": None,
            "shuffle_buffer": 4, "decoder": "pyav",
        }},
        "trainer": {
            "max_steps": steps, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0, "check_val_every_n_epoch": 1 if val else 1000, "default_root_dir": str(tmp),
            "callbacks": [
                {"class_path": "pipeline.distributed.guard.NonFiniteGuard"},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
                    "dirpath": str(tmp / "ckpt"), "save_last": True, "every_n_train_steps": 1, "save_top_k": 0}},
                {"class_path": "pipeline.distributed.resume.ResumeState"},
                {"class_path": "resume_probe.Probe", "init_args": {"out": str(tmp / "probe")}},
            ],
        },
    }  # fmt: skip
    path = tmp / "run.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(out))
    return path


def fit_cmd(trainer: list[str], config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "fit", *trainer, *BASE, "--config", str(config), *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    # own session: a kill takes the whole job (Lightning's extra ranks and the data workers) with it
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
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
    assert "class_path: pipeline.nn.masks.MaskCollator" in (resumed / "config.yaml").read_text()
    for rank in range(ranks):
        a, b = records(straight / "probe", rank), records(resumed / "probe", rank)
        assert sorted(a) == list(range(steps))
        assert sorted(b) == list(range(resumed_from, steps)), f"rank {rank} resumed at {sorted(b)[:1]}"
        for step in range(resumed_from, steps):
            assert b[step]["keys"] == a[step]["keys"], f"rank {rank} step {step}: other samples after resume"
            assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=1e-6), f"rank {rank} step {step}"
    for rank in range(ranks):
        torch.testing.assert_close(
            torch.load(resumed / "probe" / f"rank{rank}.weights.pt", weights_only=True),
            torch.load(straight / "probe" / f"rank{rank}.weights.pt", weights_only=True), rtol=1e-5, atol=1e-6,
        )  # fmt: skip


def kill_and_resume(tmp: Path, trainer: list[str], shards: Path, steps: int, workers: int, kill_at: int,
                    ranks: int) -> None:  # fmt: skip
    straight, broken = tmp / "straight", tmp / "broken"
    finish(start(fit_cmd(trainer, run_config(straight, shards, steps, workers)), tmp / "straight.log"),
           tmp / "straight.log")  # fmt: skip
    config = run_config(broken, shards, steps, workers)
    proc = start(fit_cmd(trainer, config), tmp / "broken.log")
    held = kill_after(proc, broken / "ckpt" / "last.ckpt", kill_at)
    assert kill_at <= held < steps, f"killed too late (checkpoint at step {held})"
    (broken / "probe").rename(broken / "probe_before_kill")
    last = broken / "ckpt" / "last.ckpt"
    finish(start(fit_cmd(trainer, config, "--ckpt_path", str(last)), tmp / "resumed.log"), tmp / "resumed.log")
    check_resume(straight, broken, held, steps, ranks)


@pytest.mark.multiproc
@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_reproduces_the_run(tmp_path: Path, shards: tuple[Path, list[str]]) -> None:
    # 4 steps per epoch, 6 steps: killed inside epoch 0, resumed across the epoch boundary, 2 data workers
    kill_and_resume(tmp_path, ["--config", "configs/trainer/cpu.yaml"], shards[0], 6, 2, 1, 1)


DDP_CPU = ["--config", "configs/trainer/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]


def check_replicas(probe: Path, keys: list[str], ranks: int) -> None:
    """Every validation sample read exactly once across ranks; identical weights on every rank."""
    seen = [k for rank in range(ranks) for rec in records(probe, rank, "val").values() for k in rec["keys"]]
    assert sorted(seen) == sorted(keys), "an eval pass must read every sample exactly once across ranks"
    train = [records(probe, rank) for rank in range(ranks)]
    for step in train[0]:
        assert len({tuple(t[step]["keys"]) for t in train}) == ranks, f"ranks trained on the same batch at {step}"
    weights = [torch.load(probe / f"rank{r}.weights.pt", weights_only=True) for r in range(ranks)]
    for rank in range(1, ranks):
        assert torch.equal(weights[rank], weights[0]), f"rank {rank} weights differ from rank 0"
    assert not torch.equal(weights[0], torch.zeros_like(weights[0]))


@pytest.mark.multiproc
@pytest.mark.slow
def test_two_process_ddp_fit_resumes_exactly(tmp_path: Path, shards: tuple[Path, list[str]]) -> None:
    root, keys = shards
    trainer = [*DDP_CPU, "--trainer.devices", "2"]
    straight = tmp_path / "straight"
    config = run_config(straight, root, 6, 1, val=True)
    finish(start(fit_cmd(trainer, config), tmp_path / "straight.log"), tmp_path / "straight.log")
    check_replicas(straight / "probe", keys, 2)
    broken = tmp_path / "broken"
    config = run_config(broken, root, 6, 1, val=True)
    held = kill_after(start(fit_cmd(trainer, config), tmp_path / "broken.log"), broken / "ckpt" / "last.ckpt", 1)
    assert 1 <= held < 6
    (broken / "probe").rename(broken / "probe_before_kill")
    resumed = start(fit_cmd(trainer, config, "--ckpt_path", str(broken / "ckpt" / "last.ckpt")), tmp_path / "r.log")
    finish(resumed, tmp_path / "r.log")
    check_resume(straight, broken, held, 6, 2)
    # the DDP checkpoint exports to one file that rebuilds the trained model
    out = tmp_path / "ddp.safetensors"
    assert export_main(["--ckpt", str(broken / "ckpt" / "last.ckpt"), "--out", str(out)]) == 0
    flat = torch.cat([p.detach().double().flatten() for p in load_exported(out).parameters()])
    assert torch.equal(flat, torch.load(broken / "probe" / "rank0.weights.pt", weights_only=True))


@pytest.mark.multiproc
@pytest.mark.slow
def test_two_node_torchrun_fit(tmp_path: Path, shards: tuple[Path, list[str]]) -> None:
    """Two torchrun agents on 127.0.0.1 (c10d rendezvous) started by launch/torchrun.sh, one process each."""
    root, keys = shards
    config = run_config(tmp_path, root, 3, 1, val=True)
    with open(config) as f:
        data = yaml.safe_load(f)
    data["data"]["init_args"]["steps_per_epoch"] = 2
    config.write_text(yaml.safe_dump(data))
    port = 29000 + os.getpid() % 1000
    launcher_env = {
        **env(), "NNODES": "2", "NPROC_PER_NODE": "1", "RDZV_ENDPOINT": f"127.0.0.1:{port}",
        "RDZV_ID": f"test{os.getpid()}", "TORCHRUN": str(Path(sys.executable).with_name("torchrun")),
    }  # fmt: skip
    cmd = ["bash", "launch/torchrun.sh", *DDP_CPU, *BASE, "--config", str(config)]
    agents = []
    for node in range(2):
        log = open(tmp_path / f"node{node}.log", "w")
        agents.append(subprocess.Popen(cmd, cwd=ROOT, env=launcher_env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True))  # fmt: skip
    for node, agent in enumerate(agents):
        finish(agent, tmp_path / f"node{node}.log")
    assert sorted(records(tmp_path / "probe", 0)) == [0, 1, 2] == sorted(records(tmp_path / "probe", 1))
    check_replicas(tmp_path / "probe", keys, 2)
