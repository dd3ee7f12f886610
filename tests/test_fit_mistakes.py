"""Ordinary mistakes in `wm fit` end with one line that says what to do (exit 1), never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli

ROOT = Path(__file__).resolve().parents[1]
FIT = ["fit", "--config", str(ROOT / "configs/trainer/cpu.yaml"), "--config", str(ROOT / "configs/vjepa/tiny.yaml")]


def fit_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["wm"])
    with pytest.raises(SystemExit) as exc:
        cli.main([*FIT, "--trainer.default_root_dir", str(tmp_path / "run"), *args])
    message = str(exc.value.code)
    assert message.startswith("wm: ") and "\n" not in message
    return message


def test_a_missing_shard_folder_names_the_key_and_the_fix(monkeypatch, tmp_path: Path) -> None:
    message = fit_error(monkeypatch, tmp_path, "--data.init_args.train_shards", "data/sample/typo")
    assert "data.init_args.train_shards" in message and "wm shards sample --out data/sample" in message
    (tmp_path / "empty").mkdir()
    message = fit_error(monkeypatch, tmp_path, "--data.init_args.train_shards", str(tmp_path / "empty"))
    assert "no shards found" in message


def test_resuming_what_does_not_exist(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"")  # a shard that exists, so the checks reach --ckpt_path
    shards = ["--data.init_args.train_shards", str(tmp_path), "--data.init_args.val_shards", "null"]
    message = fit_error(monkeypatch, tmp_path, *shards, "--ckpt_path", str(tmp_path / "missing.ckpt"))
    assert "no such checkpoint" in message and "missing.ckpt" in message
    message = fit_error(monkeypatch, tmp_path, *shards, "--ckpt_path", "last")
    assert f"no complete checkpoint in {tmp_path / 'run' / 'checkpoints'}" in message and "--ckpt_path auto" in message


def test_the_command_line_prints_the_line_alone(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *FIT, "--data.init_args.train_shards",
                           str(tmp_path / "none"), "--trainer.default_root_dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("wm: data.init_args.train_shards: ")


def test_a_gpu_trainer_config_on_a_machine_without_gpus(monkeypatch, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        return
    monkeypatch.setattr(sys, "argv", ["wm"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", "--config", str(ROOT / "configs/trainer/ddp.yaml"), "--config",
                  str(ROOT / "configs/vjepa/tiny.yaml"), "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    message = str(exc.value.code)
    assert message.startswith("wm: trainer: ") and "--trainer.accelerator cpu --trainer.precision 32-true" in message
