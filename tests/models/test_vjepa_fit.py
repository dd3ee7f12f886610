"""End to end: `wm fit` of the tiny V-JEPA and the tiny action-conditioned V-JEPA on the real sample shards."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from pipeline import cli
from pipeline.models.vjepa import VJEPAModule
from pipeline.models.vjepa_ac import VJEPAACModule

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def fit(config: str, shards: Path, out: Path, steps: int, *extra: str) -> list[dict[str, str]]:
    """Run `wm fit` in this process with the CPU trainer and a CSV logger in `out`; return the metric rows."""
    args = [
        "fit", "--config", str(ROOT / "configs/trainer/cpu.yaml"), "--config", str(ROOT / config),
        "--data.init_args.train_shards", str(shards), "--data.init_args.val_shards", str(shards),
        "--data.init_args.val_samples", "4", "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(out), *extra,
    ]  # fmt: skip
    assert cli.main(args) == 0
    return list(csv.DictReader(open(next(out.rglob("metrics.csv")))))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name)]


def test_vjepa_tiny_fit_on_sample_videos_loss_falls(sample_corpus: Path, tmp_path: Path) -> None:
    rows = fit(
        "configs/vjepa/tiny.yaml", sample_corpus / "videos", tmp_path, 16, "--data.init_args.steps_per_epoch", "16"
    )
    loss = column(rows, "train/jepa_loss")
    assert len(loss) == 16
    first, last = sum(loss[:4]) / 4, sum(loss[-4:]) / 4
    assert last < first - 0.05, loss
    assert column(rows, "val/loss") and all(v > 0 for v in column(rows, "train/target_std"))
    assert column(rows, "train/target_rank")[0] > 2.0  # the monitors are logged and read a healthy encoder
    lrs, wds = column(rows, "train/lr"), column(rows, "train/wd")
    assert lrs[0] == pytest.approx(2e-4) and max(lrs) == pytest.approx(1e-3, rel=1e-3) and wds[-1] > wds[0]
    ckpt = next(tmp_path.rglob("last.ckpt"))
    model = VJEPAModule.load_from_checkpoint(ckpt, weights_only=True)
    clip = torch.randint(0, 256, (1, 8, 3, 64, 64), dtype=torch.uint8)
    r = model.rollout(clip[:, :4], None, 4, future=clip[:, 4:])
    assert r.target_latents.shape == (1, 4, 64, 32) and r.frames.shape == (1, 4, 3, 64, 64)  # the pixel decoder
    dec = column(rows, "train/decoder_loss")
    assert sum(dec[-4:]) / 4 < sum(dec[:4]) / 4, dec


def test_vjepa_ac_tiny_fit_on_atari_actions_loss_falls(sample_corpus: Path, tmp_path: Path) -> None:
    rows = fit(
        "configs/vjepa/ac_tiny.yaml", sample_corpus / "atari", tmp_path, 16, "--data.init_args.steps_per_epoch", "16"
    )
    tf, ar = column(rows, "train/tf_loss"), column(rows, "train/ar_loss")
    assert len(tf) == len(ar) == 16
    assert sum(tf[-4:]) / 4 < sum(tf[:4]) / 4 - 0.05, tf
    assert sum(ar[-4:]) / 4 < sum(ar[:4]) / 4 - 0.05, ar
    assert column(rows, "val/loss")
    model = VJEPAACModule.load_from_checkpoint(next(tmp_path.rglob("last.ckpt")), weights_only=True)
    clip = torch.randint(0, 256, (2, 2, 3, 64, 64), dtype=torch.uint8)
    actions = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 10)), 4).float()
    r = model.rollout(clip, actions, horizon=8)
    assert r.latents.shape == (2, 8, 64, 32) and r.frames is None
