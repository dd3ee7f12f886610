"""Launch scripts: valid bash (shellcheck when installed) and a DRY_RUN=1 mode printing the exact `wm fit` line."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
SCRIPTS = ["local.sh", "torchrun.sh", "deepspeed.sh", "slurm.sbatch", "gpu_check.sh"]


def _dry_run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMP_"))}
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args], env={**clean, "DRY_RUN": "1", **env},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_parses(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_is_clean(script: str) -> None:
    proc = subprocess.run(["shellcheck", str(LAUNCH / script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def test_local_dry_run() -> None:
    proc = _dry_run("local.sh", "--config", "configs/trainer/ddp.yaml", DEVICES="4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "OMP_NUM_THREADS=4 wm fit --config configs/trainer/ddp.yaml --trainer.num_nodes 1 --trainer.devices 4"
    )


def test_torchrun_dry_run_uses_c10d_rendezvous() -> None:
    proc = _dry_run("torchrun.sh", "--config", "a.yaml", NNODES="2", NPROC_PER_NODE="8", RDZV_ENDPOINT="n0:29400")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "OMP_NUM_THREADS=4 torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint n0:29400 "
        "--rdzv-id wm-fit -m pipeline.cli fit --config a.yaml --trainer.num_nodes 2 --trainer.devices 8"
    )


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
        "OMP_NUM_THREADS=6 srun --kill-on-bad-exit=1 wm fit --config a.yaml --trainer.num_nodes 3 --trainer.devices 4"
    )


def test_deepspeed_dry_run_reads_the_hostfile(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode0 slots=8\n\nnode1 slots=8\n")
    proc = _dry_run("deepspeed.sh", "--config", "z3.yaml", HOSTFILE=str(hostfile))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"OMP_NUM_THREADS=4 deepspeed --hostfile {hostfile} --master_addr node0 --master_port 29500 --no_local_rank "
        "--module pipeline.cli fit --config z3.yaml --trainer.num_nodes 2 --trainer.devices 8"
    )


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
