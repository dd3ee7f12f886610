"""End to end: `wm fit` of the tiny RSSM on the real sample Atari shards, then `wm plan --offline` on its checkpoint."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rssm_fit")
    atari = str(sample_corpus / "atari")
    cmd = [sys.executable, "-m", "pipeline.cli", "fit", "--config", "configs/trainer/cpu.yaml",
           "--config", "configs/rssm/tiny.yaml",
           "--data.init_args.train_shards", atari, "--data.init_args.val_shards", atari,
           "--data.init_args.steps_per_epoch", "12", "--data.init_args.val_samples", "2",
           "--data.init_args.batch_size", "2",
           "--trainer.max_steps", "12", "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps", "0",
           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_wm_fit_on_atari_shards_loss_falls(fitted: Path) -> None:
    rows = list(csv.DictReader(open(next(fitted.rglob("metrics.csv")))))
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    recon = [float(r["train/recon"]) for r in rows if r.get("train/recon")]
    reward = [float(r["train/reward"]) for r in rows if r.get("train/reward")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(train) == 12 and len(val) == 1
    assert sum(train[-3:]) / 3 < 0.7 * sum(train[:3]) / 3
    assert recon[-1] < recon[0] and reward[-1] < reward[0]
    assert val[0] < train[0]
    cfg = (next(fitted.rglob("config.yaml"))).read_text()
    assert "pipeline.models.rssm.RSSMModule" in cfg and "free_bits: 1.0" in cfg


def test_wm_plan_offline_on_the_fitted_checkpoint(fitted: Path, sample_corpus: Path, tmp_path: Path) -> None:
    from pipeline import cli

    ckpt = next(fitted.rglob("last.ckpt"))
    out = tmp_path / "offline.json"
    rc = cli.main(["plan", "--ckpt", str(ckpt), "--offline", "--data", str(sample_corpus / "atari"),
                   "--episodes", "2", "--starts", "1", "--goal-steps", "3", "--population", "6", "--elites", "2",
                   "--iterations", "2", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["mode"] == "offline" and res["tasks"] == 2 and res["episodes"] == 2 and res["skipped"] == 0
    for who in ("planner", "random"):
        assert 0 <= res[who]["first_action_acc"] <= 1 and res[who]["final_latent_l1"] >= 0
    # the planner picks the best of 12 scored plans: its predicted latent is at least as close as a random plan's
    assert res["planner"]["final_latent_l1"] <= res["random"]["final_latent_l1"] + 1e-6
    assert res["recorded"]["final_latent_l1"] >= 0
