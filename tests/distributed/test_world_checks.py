"""A launcher world that does not match devices x num_nodes fails loudly, under every launcher."""

from __future__ import annotations

import pytest
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

from pipeline.distributed.env import DistEnv, LaunchError, check_rank, check_world, dist_env, node_rank_from_env
from pipeline.distributed.strategy import ConfigError, DDPStrategy, DeepSpeedLauncherEnvironment, default_environment

LAUNCHER_VARS = [
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "NODE_RANK", "GROUP_RANK", "CROSS_RANK",
    "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_PROCID", "SLURM_NODEID",
    "SLURM_LOCALID", "SLURM_JOB_NAME", "SLURM_NTASKS_PER_NODE", "TORCHELASTIC_RUN_ID", "SLURM_STEP_NUM_TASKS",
    "SLURM_STEP_NUM_NODES", "SLURM_STEP_ID", "SLURM_JOB_ID",
]  # fmt: skip


def srun_task(monkeypatch: pytest.MonkeyPatch, tasks: int, nodes: int, procid: int = 0) -> None:
    """The variables srun gives one task of a step of `tasks` tasks on `nodes` nodes."""
    per_node = max(1, tasks // nodes)
    variables = {
        "SLURM_JOB_ID": "42", "SLURM_NTASKS": tasks, "SLURM_STEP_NUM_TASKS": tasks, "SLURM_JOB_NUM_NODES": nodes,
        "SLURM_STEP_NUM_NODES": nodes, "SLURM_NTASKS_PER_NODE": per_node, "SLURM_PROCID": procid,
        "SLURM_LOCALID": procid % per_node, "SLURM_NODEID": procid // per_node, "SLURM_STEP_ID": 0,
        "SLURM_JOB_NAME": "train",
    }  # fmt: skip
    for name, value in variables.items():
        monkeypatch.setenv(name, str(value))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)


def test_no_launcher_is_fine_on_one_node() -> None:
    check_world(devices=4, num_nodes=1, slurm_managed=False)  # Lightning starts the 4 processes itself
    assert dist_env().world_size == 1


def test_multi_node_without_a_launcher_fails() -> None:
    with pytest.raises(LaunchError, match="num_nodes=2 needs a launcher"):
        check_world(devices=1, num_nodes=2, slurm_managed=False)


def test_slurm_tasks_must_match_devices_times_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    srun_task(monkeypatch, tasks=8, nodes=2)
    check_world(devices=4, num_nodes=2, slurm_managed=True)
    with pytest.raises(LaunchError, match=r"SLURM started 8 tasks on 2 nodes .* devices=8 x num_nodes=2 = 16"):
        check_world(devices=8, num_nodes=2, slurm_managed=True)
    with pytest.raises(LaunchError, match="num_nodes=1"):
        check_world(devices=8, num_nodes=1, slurm_managed=True)


def test_slurm_tasks_without_slurm_ranks_never_train_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    srun_task(monkeypatch, tasks=2, nodes=1)
    with pytest.raises(LaunchError, match="each task would train alone"):
        check_world(devices=2, num_nodes=1, slurm_managed=False)


def test_world_size_mismatch_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(LaunchError, match=r"WORLD_SIZE=4 .* devices=1 x num_nodes=1 = 1"):
        check_world(devices=1, num_nodes=1, slurm_managed=False)
    check_world(devices=2, num_nodes=2, slurm_managed=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with pytest.raises(LaunchError, match="started 1 processes on this node but trainer.devices=2"):
        check_world(devices=2, num_nodes=2, slurm_managed=False)


def test_rank_must_agree_with_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    check_rank(3)
    with pytest.raises(LaunchError, match="RANK=3 but the trainer computed rank 1"):
        check_rank(1)


def test_deepspeed_launcher_node_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSS_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert DeepSpeedLauncherEnvironment.detect() and DeepSpeedLauncherEnvironment().node_rank() == 1
    assert node_rank_from_env() == 1


def test_ddp_strategy_refuses_a_mismatched_world_when_the_trainer_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch import Trainer

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="WORLD_SIZE=3"):
        Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(), logger=False)


def test_srun_then_torchrun_on_every_node_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchtitan's multi-node recipe: `srun --ntasks-per-node=1 torchrun --nproc-per-node 8 ...` on 2 nodes."""
    srun_task(monkeypatch, tasks=2, nodes=2, procid=1)
    monkeypatch.setenv("SLURM_NTASKS", "16")  # the job's allocation: 8 tasks per node
    for name, value in {"TORCHELASTIC_RUN_ID": "job42", "WORLD_SIZE": 16, "RANK": 11, "LOCAL_RANK": 3,
                        "LOCAL_WORLD_SIZE": 8, "GROUP_RANK": 1}.items():  # fmt: skip
        monkeypatch.setenv(name, str(value))
    check_world(devices=8, num_nodes=2, slurm_managed=False)
    check_rank(11)
    assert dist_env() == DistEnv(rank=11, world_size=16, local_rank=3, node_rank=1)
    with pytest.raises(LaunchError, match="WORLD_SIZE=16"):
        check_world(devices=4, num_nodes=2, slurm_managed=False)
    assert default_environment() is None  # Lightning's TorchElastic environment


def test_salloc_shell_then_local_launcher_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """`salloc --ntasks-per-node=8` then launch/local.sh: one process in the allocation starts the other seven."""
    for name, value in {"SLURM_JOB_ID": "42", "SLURM_NTASKS": 8, "SLURM_JOB_NUM_NODES": 1, "SLURM_NNODES": 1,
                        "SLURM_NTASKS_PER_NODE": 8, "SLURM_JOB_NAME": "interactive"}.items():  # fmt: skip
        monkeypatch.setenv(name, str(value))
    check_world(devices=8, num_nodes=1, slurm_managed=False)
    assert dist_env() == DistEnv(rank=0, world_size=1, local_rank=0, node_rank=0)
    monkeypatch.setenv("SLURM_JOB_NAME", "train")  # a batch script without srun: same, whatever the job name
    assert isinstance(default_environment(), LightningEnvironment)
    check_world(devices=8, num_nodes=1, slurm_managed=False)
    with pytest.raises(LaunchError, match="num_nodes=2 needs a launcher"):
        check_world(devices=8, num_nodes=2, slurm_managed=False)


def test_srun_task_gets_slurm_ranks_without_lightnings_requeue(monkeypatch: pytest.MonkeyPatch) -> None:
    srun_task(monkeypatch, tasks=4, nodes=1, procid=2)
    environment = default_environment()
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    assert dist_env() == DistEnv(rank=2, world_size=4, local_rank=2, node_rank=0)
