"""Exact resume and multi-process fits of the real `wm fit` (tiny V-JEPA, real shards, DataLoader workers, gloo).

A run killed with SIGKILL mid-epoch and resumed from its last checkpoint sees the same next samples and
reproduces the uninterrupted run's losses, at world size 1 and 2. The 2-process runs also check that an eval
pass reads every validation sample exactly once across ranks and that the ranks end with identical weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.distributed.export import load_exported
from pipeline.distributed.export import main as export_main

sys.path.insert(0, str(Path(__file__).parent))
from fit_helpers import (  # noqa: E402
    BASE,
    ROOT,
    check_resume,
    check_run_stats,
    env,
    finish,
    fit_cmd,
    kill_after,
    last_ckpt,
    records,
    run_config,
    start,
    write_clips,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("resume_shards")
    return root, write_clips(root)


def kill_and_resume(tmp: Path, trainer: list[str], shards: Path, steps: int, workers: int, kill_at: int,
                    ranks: int, every: int = 1) -> None:  # fmt: skip
    """The README's resume as a user types it: the same command again with `--ckpt_path last`."""
    straight, broken = tmp / "straight", tmp / "broken"
    finish(start(fit_cmd(trainer, run_config(straight, shards, steps, workers, every=every)), tmp / "straight.log"),
           tmp / "straight.log")  # fmt: skip
    config = run_config(broken, shards, steps, workers, every=every)
    proc = start(fit_cmd(trainer, config), tmp / "broken.log")
    held = kill_after(proc, last_ckpt(broken), kill_at)
    assert kill_at <= held < steps, f"killed too late (checkpoint at step {held})"
    (broken / "probe").rename(broken / "probe_before_kill")
    finish(start(fit_cmd(trainer, config, "--ckpt_path", "last"), tmp / "resumed.log"), tmp / "resumed.log")
    assert f"resuming from {last_ckpt(broken)}" in (tmp / "resumed.log").read_text()
    assert sorted(p.name for p in (broken / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    check_resume(straight, broken, held, steps, ranks)
    check_step_labels(broken / "lightning_logs" / "version_1" / "metrics.csv", held, steps)
    check_run_stats(broken, ranks)


def check_step_labels(metrics: Path, first: int, steps: int) -> None:
    """The resumed run logs its training loss at the steps it ran, not shifted by one."""
    import csv

    with open(metrics) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert sorted({int(r["step"]) for r in rows}) == list(range(first, steps))


@pytest.mark.multiproc
@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_reproduces_the_run(tmp_path: Path, shards: tuple[Path, list[str]]) -> None:
    # 4 steps per epoch, 6 steps: killed inside epoch 0, resumed across the epoch boundary, 2 data workers
    kill_and_resume(tmp_path, ["--config", "configs/trainer/cpu.yaml"], shards[0], 6, 2, 1, 1)


@pytest.mark.multiproc
@pytest.mark.slow
def test_chained_resumes_across_an_epoch_end(tmp_path: Path, shards: tuple[Path, list[str]]) -> None:
    """A job requeued twice: stopped after the last step of epoch 0 (every checkpoint interval that divides into
    epochs lands there), resumed and stopped mid-epoch 1, resumed to the end: the same run as one without stops."""
    trainer, steps = ["--config", "configs/trainer/cpu.yaml"], 10
    straight, job = tmp_path / "straight", tmp_path / "job"
    finish(start(fit_cmd(trainer, run_config(straight, shards[0], steps, 2, every=2)), tmp_path / "s.log"),
           tmp_path / "s.log")  # fmt: skip
    for launch, stop in enumerate([4, 6, None]):
        if (job / "probe").exists():
            (job / "probe").rename(job / f"probe{launch}")
        config = run_config(job, shards[0], steps, 2, every=2, stop_at=stop)
        log = tmp_path / f"job{launch}.log"
        finish(start(fit_cmd(trainer, config, *(["--ckpt_path", "last"] if launch else [])), log), log)
        held = torch.load(last_ckpt(job), map_location="cpu", weights_only=True)["global_step"]
        assert held == (stop or steps)
    check_resume(straight, job, 6, steps, 1)


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
    held = kill_after(start(fit_cmd(trainer, config), tmp_path / "broken.log"), last_ckpt(broken), 1)
    assert 1 <= held < 6
    (broken / "probe").rename(broken / "probe_before_kill")
    finish(start(fit_cmd(trainer, config, "--ckpt_path", "last"), tmp_path / "r.log"), tmp_path / "r.log")
    check_resume(straight, broken, held, 6, 2)
    check_run_stats(broken, 2)
    # the DDP checkpoint exports to one file that rebuilds the trained model
    out = tmp_path / "ddp.safetensors"
    assert export_main(["--ckpt", str(last_ckpt(broken)), "--out", str(out)]) == 0
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
        **env(), "NNODES": "2", "NPROC_PER_NODE": "1", "RDZV_ENDPOINT": f"127.0.0.1:{port}", "ALLOW_LOOPBACK": "1",
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
