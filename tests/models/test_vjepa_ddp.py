"""A 2-process DDP `wm fit` of the tiny V-JEPA on the CPU (gloo) ends with the same weights on both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PROBE_DIR = ROOT / "tests" / "distributed"  # resume_probe.Probe writes each rank's final weights


def test_two_rank_ddp_fit_ends_with_identical_weights(sample_corpus: Path, tmp_path: Path, master_port: str) -> None:
    shards = str(sample_corpus / "videos")
    run = {
        "data": {"init_args": {"train_shards": shards, "val_shards": None, "batch_size": 2, "num_workers": 0,
                               "steps_per_epoch": 4}},
        "trainer": {"max_steps": 4, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "resume_probe.Probe", "init_args": {"out": str(tmp_path / "probe")}},
                                  {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
    }  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    cmd = [sys.executable, "-m", "pipeline.cli", "fit", "--config", "configs/trainer/cpu.yaml",
           "--config", "configs/vjepa/tiny.yaml", "--config", str(tmp_path / "run.yaml"),
           "--trainer.devices", "2", "--trainer.strategy", "ddp"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{PROBE_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": master_port}  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    w0 = torch.load(tmp_path / "probe" / "rank0.weights.pt", weights_only=True)
    w1 = torch.load(tmp_path / "probe" / "rank1.weights.pt", weights_only=True)
    assert w0.numel() > 50_000 and torch.equal(w0, w1)
    # each rank drew its own masks and clips, so identical weights come from the all-reduce, not from identical inputs
    keys = [[line for line in open(tmp_path / "probe" / f"rank{r}.jsonl") if '"train"' in line] for r in (0, 1)]
    assert len(keys[0]) == len(keys[1]) == 4 and keys[0] != keys[1]
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    flat = torch.cat([v.double().flatten() for k, v in state["state_dict"].items()])
    assert flat.numel() == w0.numel()
    torch.testing.assert_close(flat.sort().values, w0.sort().values)  # the saved checkpoint holds those weights
