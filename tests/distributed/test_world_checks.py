"""A launcher world that does not match devices x num_nodes fails loudly, under every launcher."""

from __future__ import annotations

import pytest

from pipeline.distributed.env import LaunchError, check_rank, check_world, dist_env, node_rank_from_env
from pipeline.distributed.strategy import ConfigError, DDPStrategy, DeepSpeedLauncherEnvironment

LAUNCHER_VARS = [
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "NODE_RANK", "GROUP_RANK", "CROSS_RANK",
    "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_PROCID", "SLURM_NODEID",
    "SLURM_LOCALID", "SLURM_JOB_NAME", "SLURM_NTASKS_PER_NODE", "TORCHELASTIC_RUN_ID",
]  # fmt: skip


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
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    check_world(devices=4, num_nodes=2, slurm_managed=True)
    with pytest.raises(LaunchError, match=r"SLURM started 8 tasks on 2 nodes .* devices=8 x num_nodes=2 = 16"):
        check_world(devices=8, num_nodes=2, slurm_managed=True)
    with pytest.raises(LaunchError, match="num_nodes=1"):
        check_world(devices=8, num_nodes=1, slurm_managed=True)


def test_slurm_tasks_without_slurm_ranks_never_train_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "2")
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
