from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from eval_helpers import save_tiny_detector  # noqa: E402

from pipeline.data.datamodule import ShardDataModule  # noqa: E402
from pipeline.data.manifest import manifest_hash  # noqa: E402
from pipeline.eval import commands  # noqa: E402
from pipeline.eval.callbacks import PerHorizonEval  # noqa: E402
from pipeline.models.baselines import CopyLastFrame, LinearExtrapolation  # noqa: E402


@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("WM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WM_I3D_WEIGHTS", raising=False)
    return tmp_path


def _data(corpus: Path, frames: int) -> ShardDataModule:
    shards = str(corpus / "videos")
    return ShardDataModule(train_shards=shards, val_shards=shards, frames=frames, resolution=32, batch_size=2,
                           num_workers=0, steps_per_epoch=1, val_samples=4, seed=0)


def test_callback_in_fit_writes_eval_json_every_n_val_epochs(sample_corpus: Path, offline_env: Path) -> None:
    model = CopyLastFrame(context_frames=2, latent_pool=8)
    callback = PerHorizonEval(every_n_val_epochs=2, horizons=[1, 2, 4], samples=3, out_dir=str(offline_env / "ev"),
                              i3d_weights=str(save_tiny_detector(offline_env / "det.pt")))
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[callback], num_sanity_val_steps=1)
    trainer.fit(model, datamodule=_data(sample_corpus, frames=6))
    files = sorted(p.name for p in (offline_env / "ev").glob("eval-step*.json"))
    assert len(files) == 1  # 3 validation epochs, every 2nd evaluated, sanity check excluded
    record = json.loads((offline_env / "ev" / "eval.json").read_text())
    assert record["samples"] == 3 and record["horizons"] == [1, 2, 4] and record["context_frames"] == 2
    assert record["data_manifest_hash"] == manifest_hash(sample_corpus / "videos")
    assert "resolution=32" in record["clip_rule"] and "9 frames" in record["fvd_clip_rule"]
    assert record["checkpoint"].startswith("in training: epoch 1")
    m = record["metrics"]
    assert set(m) == {"1", "2", "4"} and m["4"]["fvd"] >= 0 and 0 < m["1"]["psnr"] < 100
    assert m["1"]["latent_l1"] <= m["4"]["latent_l1"] + 1e-6
    assert "lpips" in record["absent"]
    logged = trainer.callback_metrics
    assert float(logged["eval/psnr@1"]) == pytest.approx(m["1"]["psnr"], rel=1e-5)
    with np.load(offline_env / "ev" / "eval.samples.npz", allow_pickle=False) as strips:
        assert strips["prediction"].shape == (3, 4, 3, 32, 32)
    gifs = list((offline_env / "ev").glob("eval-step*.gif"))
    assert len(gifs) == 1 and Image.open(gifs[0]).n_frames == 2 + 4


def test_callback_rejects_short_clips_before_training(sample_corpus: Path) -> None:
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         callbacks=[PerHorizonEval(horizons=[1, 8], fvd=False, lpips=False)])
    with pytest.raises(ValueError, match="context \\+ max horizon = 10 frames"):
        trainer.fit(CopyLastFrame(context_frames=2), datamodule=_data(sample_corpus, frames=6))


def test_callback_fails_before_training_on_a_missing_weights_file(sample_corpus: Path, offline_env: Path) -> None:
    callback = PerHorizonEval(horizons=[1, 2], i3d_weights=str(offline_env / "missing_i3d.pt"), lpips=False)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         callbacks=[callback])
    model = CopyLastFrame(context_frames=2)
    with pytest.raises(FileNotFoundError, match="missing_i3d.pt does not exist"):
        trainer.fit(model, datamodule=_data(sample_corpus, frames=6))
    assert trainer.global_step == 0


def test_wm_eval_single_and_ensemble(sample_corpus: Path, offline_env: Path, capsys: pytest.CaptureFixture) -> None:
    ckpts = []
    for cls in (CopyLastFrame, LinearExtrapolation):
        trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
        model = cls(context_frames=2)
        trainer.strategy.connect(model)
        trainer.save_checkpoint(offline_env / f"{cls.__name__}.ckpt")
        ckpts.append(str(offline_env / f"{cls.__name__}.ckpt"))
    data = str(sample_corpus / "videos")
    common = ["--data", data, "--horizons", "1", "3", "--samples", "4", "--resolution", "32", "--no-fvd"]
    assert commands.main(["--ckpt", ckpts[0], *common, "--out", str(offline_env / "copy.json")]) == 0
    assert commands.main(["--ckpt", ckpts[0], "--ckpt", ckpts[1], *common, "--out", str(offline_env / "ens.json")]) == 0
    out = capsys.readouterr().out
    assert "lpips: absent" in out and "wrote" in out
    copy, ens = (json.loads((offline_env / f"{n}.json").read_text()) for n in ("copy", "ens"))
    assert copy["model"].endswith("CopyLastFrame") and ens["model"].endswith("Ensemble")
    assert len(ens["checkpoint"]["ensemble"]) == 2 and len(copy["checkpoint"]["sha256"]) == 64
    assert copy["samples"] == ens["samples"] == 4 and copy["clip_rule"] == ens["clip_rule"]
    assert copy["features"]["i3d"]["reason"] == "disabled"
    assert copy["metrics"]["1"]["psnr"] != ens["metrics"]["1"]["psnr"]
    assert commands.main(["--ckpt", str(offline_env / "nope.ckpt"), *common, "--out", "x.json"]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_evaluate_rssm_checkpoint_with_actions(sample_corpus: Path, offline_env: Path) -> None:
    """A real family through the contract: RSSM with discrete actions on the Atari shards."""
    from pipeline.eval.rollout import evaluate
    from pipeline.models.loading import load_world_model
    from pipeline.models.rssm import RSSMModule

    model = RSSMModule(action_dim=4, resolution=32, depth=4, deter=16, stoch=4, classes=4, hidden=16,
                       head_layers=1, context_frames=2)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(offline_env / "rssm.ckpt")
    record = evaluate(load_world_model(offline_env / "rssm.ckpt"), sample_corpus / "atari", horizons=[1, 2],
                      samples=2, resolution=32, fvd=False, lpips=False, out=offline_env / "rssm" / "eval.json")
    assert record["model"] == "pipeline.models.rssm.RSSMModule" and record["samples"] == 2
    assert {"psnr", "ssim", "latent_l1", "latent_cos_err"} <= set(record["metrics"]["2"])
    assert record["data_manifest_hash"] == manifest_hash(sample_corpus / "atari")


@pytest.mark.slow
def test_wandb_gets_the_table_and_the_sample_strip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import WandbLogger

    from pipeline.eval.callbacks import _log_wandb
    from pipeline.eval.leaderboard import strip_frames, write_gif

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rng = np.random.default_rng(0)
    strips = {"context": rng.integers(0, 255, (2, 2, 3, 16, 16), dtype=np.uint8),
              "truth": rng.integers(0, 255, (2, 3, 3, 16, 16), dtype=np.uint8),
              "prediction": rng.integers(0, 255, (2, 3, 3, 16, 16), dtype=np.uint8)}
    write_gif(strip_frames(strips), tmp_path / "strip.gif")
    record = {"metrics": {"1": {"count": 2.0, "psnr": 20.0}, "3": {"count": 2.0, "psnr": 15.0}}}
    logger = WandbLogger(offline=True, save_dir=str(tmp_path / "wb"), project="wm-test")
    trainer = pl.Trainer(logger=logger, enable_progress_bar=False, enable_checkpointing=False)
    _log_wandb(trainer, record, tmp_path / "strip.gif")
    logger.experiment.finish()
    media = tmp_path / "wb" / "wandb"
    tables = list(media.rglob("*.table.json"))
    assert len(tables) == 1 and len(list(media.rglob("media/videos/**/*.gif"))) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["horizon", "count", "psnr"] and table["data"] == [[1, 2.0, 20.0], [3, 2.0, 15.0]]
