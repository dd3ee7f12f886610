"""SLURM time-limit requeue, simulated the way slurmstepd does it: SIGUSR1 to every process of the step.

The SLURM variables of an srun step, a stub `scontrol` on PATH that records its calls, the signal to every
process (trainer ranks and their DataLoader workers). The run must stop within a bounded time with one
checkpoint, requeue exactly once, and the requeued job (the same command with `--ckpt_path auto`, as
launch/slurm.sbatch runs it) must continue with the same samples, losses and step labels as a run that was
never interrupted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fit_helpers import (  # noqa: E402
    check_resume,
    finish,
    fit_cmd,
    last_ckpt,
    records,
    run_config,
    start,
    write_clips,
)

STEPS = 8
DDP_CPU = ["--config", "configs/trainer/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preempt_shards")
    write_clips(root)
    return root


def slurm_env(tmp: Path, tasks: int, procid: int, port: str) -> dict[str, str]:
    """An srun task's environment plus a stub scontrol that appends its arguments to tmp/scontrol.log."""
    stub = tmp / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp / "scontrol.log"}\n')
    (stub / "scontrol").chmod(0o755)
    return {
        "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "wm-test",
        "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_NTASKS_PER_NODE": str(tasks),
        "SLURM_JOB_NUM_NODES": "1", "SLURM_STEP_NUM_NODES": "1", "SLURM_NODELIST": "localhost", "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid), "SLURM_NODEID": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
    }  # fmt: skip


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(cmd: list[str], tmp: Path, tasks: int, name: str) -> list[subprocess.Popen]:
    port = free_port()
    return [start(cmd, tmp / f"{name}{r}.log", **slurm_env(tmp, tasks, r, port)) for r in range(tasks)]


def wait_all(procs: list[subprocess.Popen], tmp: Path, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for rank, proc in enumerate(procs):
        try:
            finish(proc, tmp / f"{name}{rank}.log", timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"the run did not stop within {timeout:.0f} s of the signal (hang):\n"
                        + (tmp / f"{name}{rank}.log").read_text()[-3000:])  # fmt: skip


def preempt_and_requeue(tmp: Path, shards: Path, trainer: list[str], tasks: int, workers: int) -> None:
    straight, job = tmp / "straight", tmp / "job"
    config = run_config(straight, shards, STEPS, workers, every=1000)  # no periodic checkpoint: only the signal's
    wait_all(launch(fit_cmd(trainer, config), straight, tasks, "straight"), straight, "straight", 300)

    config = run_config(job, shards, STEPS, workers, every=1000)
    cmd = fit_cmd(trainer, config, "--ckpt_path", "auto")
    procs = launch(cmd, job, tasks, "first")
    deadline = time.monotonic() + 300
    while not (job / "probe" / "rank0.jsonl").exists() or len(records(job / "probe", 0)) < 2:
        assert all(p.poll() is None for p in procs), "the run ended before the signal"
        assert time.monotonic() < deadline, "no training step within 300 s"
        time.sleep(0.05)
    for proc in procs:  # slurmstepd signals every process of the step: ranks and their data workers
        os.killpg(proc.pid, signal.SIGUSR1)
    wait_all(procs, job, "first", 120)

    assert (job / "scontrol.log").read_text().splitlines() == ["requeue 4242"]
    held = int(torch.load(last_ckpt(job), map_location="cpu", weights_only=True)["global_step"])
    assert 2 <= held < STEPS
    for rank in range(tasks):
        assert sorted(records(job / "probe", rank)) == list(range(held)), "every rank stops after the saved step"
    assert not list(job.glob("hpc_ckpt_*")) and [p.name for p in (job / "checkpoints").iterdir()] == ["last.ckpt"]

    (job / "probe").rename(job / "probe_before_requeue")
    wait_all(launch(cmd, job, tasks, "requeued"), job, "requeued", 300)
    assert f"resuming from {last_ckpt(job)}" in (job / "requeued0.log").read_text()
    check_resume(straight, job, held, STEPS, tasks)
    assert (job / "scontrol.log").read_text().splitlines() == ["requeue 4242"]  # the finished job requeues nothing


@pytest.mark.multiproc
@pytest.mark.slow
def test_requeue_signal_to_one_task_and_its_workers(tmp_path: Path, shards: Path) -> None:
    preempt_and_requeue(tmp_path, shards, ["--config", "configs/trainer/cpu.yaml"], tasks=1, workers=2)


@pytest.mark.multiproc
@pytest.mark.slow
def test_requeue_signal_to_two_gloo_ranks_and_their_workers(tmp_path: Path, shards: Path) -> None:
    preempt_and_requeue(tmp_path, shards, [*DDP_CPU, "--trainer.devices", "2"], tasks=2, workers=1)
