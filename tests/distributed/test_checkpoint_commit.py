"""Commit points of checkpoint files and ZeRO checkpoint directories, and what `--ckpt_path last|auto` resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

from pipeline.distributed import checkpoint
from pipeline.distributed.checkpoint import (
    ResumeError,
    commit_tag,
    committed_tag,
    newest_checkpoint,
    partial_path,
    remove_stale,
    resolve_ckpt_path,
    write_atomic,
)
from pipeline.distributed.checkpoint_io import AtomicCheckpointIO

POINTS = ["tag_written", "file_written", "latest_replaced", "old_tags_removed"]


class Killed(BaseException):
    """Stands for the process dying at a commit point (nothing after it runs, no handler catches it)."""


def kill_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    def hook(name: str) -> None:
        if name == point:
            raise Killed(name)

    monkeypatch.setattr(checkpoint, "commit_hook", hook)


def zero_dir(root: Path, tags: dict[str, str], latest: str | None) -> Path:
    """A ZeRO checkpoint directory with one shard file per tag (its content names the tag)."""
    for tag, content in tags.items():
        (root / tag).mkdir(parents=True, exist_ok=True)
        (root / tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_text(content)
    if latest is not None:
        (root / "latest").write_text(latest)
    return root


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_zero_commit_point_leaves_a_complete_checkpoint(tmp_path: Path, monkeypatch, point) -> None:
    ckpt = zero_dir(tmp_path / "last.ckpt", {"step-1": "one", "step-2": "two"}, latest="step-1")
    kill_at(monkeypatch, point)
    with pytest.raises(Killed):
        commit_tag(ckpt, "step-2")
    monkeypatch.setattr(checkpoint, "commit_hook", lambda name: None)
    tag = committed_tag(ckpt)
    assert tag in ("step-1", "step-2")
    content = {"step-1": "one", "step-2": "two"}[tag]
    assert (ckpt / tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").read_text() == content
    assert tag == ("step-1" if point in ("tag_written", "file_written") else "step-2")
    remove_stale(tmp_path)  # what the next launch does first
    assert committed_tag(ckpt) == tag and sorted(p.name for p in ckpt.iterdir()) == sorted([tag, "latest"])
    assert newest_checkpoint([tmp_path]) == ckpt


def test_an_uncommitted_first_save_is_not_a_checkpoint(tmp_path: Path) -> None:
    ckpt = zero_dir(tmp_path / "last.ckpt", {"step-1": "one"}, latest=None)
    assert newest_checkpoint([tmp_path]) is None
    assert remove_stale(tmp_path) == [ckpt / "step-1"]


@pytest.mark.parametrize("point", ["file_written"])
def test_a_kill_while_writing_a_file_keeps_the_previous_one(tmp_path: Path, monkeypatch, point) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    kill_at(monkeypatch, point)
    with pytest.raises(Killed):
        io.save_checkpoint({"global_step": 2}, path)
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the partial was removed on the way out


def test_temporary_names_are_never_taken_for_checkpoints(tmp_path: Path) -> None:
    """Lightning read `.hpc_ckpt_2.ckpt.tmp4242` as hpc version 24242 and took `.last.ckpt.tmpN` for a last file."""
    for name in ("hpc_ckpt_2.ckpt", "last.ckpt", "epoch=0-step=5.ckpt"):
        partial = partial_path(tmp_path / name)
        partial.write_bytes(b"half a checkpoint")
        assert "ckpt" not in partial.name and "last" not in partial.name
    assert _CheckpointConnector.hpc_save_path(str(tmp_path)).endswith("hpc_ckpt_1.ckpt")
    callback = ModelCheckpoint(dirpath=str(tmp_path))
    assert callback._find_last_checkpoints(trainer=None) == set()
    assert newest_checkpoint([tmp_path]) is None
    assert len(remove_stale(tmp_path)) == 3 and list(tmp_path.iterdir()) == []


def test_resolve_ckpt_path_last_auto_and_paths(tmp_path: Path) -> None:
    dirs = [tmp_path / "checkpoints", tmp_path / "other"]
    with pytest.raises(ResumeError, match=r"--ckpt_path last: no complete checkpoint in .*checkpoints.*other"):
        resolve_ckpt_path("last", dirs)
    assert resolve_ckpt_path("auto", dirs) is None
    assert resolve_ckpt_path(None, dirs) is None and resolve_ckpt_path("best", dirs) == "best"
    with pytest.raises(ResumeError, match="no such checkpoint"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), dirs)
    old, new = dirs[0] / "step=1.ckpt", dirs[1] / "last.ckpt"
    write_atomic(old, lambda p: p.write_bytes(b"1"))
    write_atomic(new, lambda p: p.write_bytes(b"2"))
    os.utime(old, (1, 1))
    assert resolve_ckpt_path("last", dirs) == resolve_ckpt_path("auto", dirs) == str(new)
    assert resolve_ckpt_path(str(old), dirs) == str(old)


@pytest.mark.multiproc
@pytest.mark.slow
def test_real_zero3_checkpoints_killed_at_every_commit_point_stay_resumable(tmp_path: Path) -> None:
    """DeepSpeed ZeRO-3 on the CPU writes the shards; SIGKILL at each commit point; the next launch loads."""
    worker = Path(__file__).with_name("zero_commit_worker.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": str(root)}  # fmt: skip
    dirs = []
    for point in POINTS:
        if point == "file_written":
            continue  # inside write_atomic, covered above; the ZeRO points around it follow
        directory = tmp_path / point / "last.ckpt"
        directory.parent.mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        proc = subprocess.run([sys.executable, str(worker), "save", str(directory), point], cwd=root,
                              env={**env, "MASTER_PORT": port}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-3000:]
        dirs.append(directory)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    proc = subprocess.run([sys.executable, str(worker), "check", *map(str, dirs)], cwd=root,
                          env={**env, "MASTER_PORT": port}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {"tag_written": ("step-2", ["A"], ["step-4"]), "latest_replaced": ("step-4", ["B"], ["step-2"]),
                "old_tags_removed": ("step-4", ["B"], [])}  # fmt: skip
    assert sorted(results) == sorted(expected)
    for point, (tag, holds, removed) in expected.items():
        got = results[point]
        assert (got["tag"], got["holds"], got["removed"], got["left"]) == (tag, holds, removed, [tag]), point
