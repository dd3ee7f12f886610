"""ShardDataModule under a real Lightning fit: steps per epoch, fresh shard order per epoch, skip metrics,
the data configs, and exact resume of the stream position (with DataLoader workers)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import webdataset as wds
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from pipeline.data.datamodule import ShardDataModule
from pipeline.data.sources.encode import encode_frames

ROOT = Path(__file__).resolve().parents[2]


def write_dataset(root: Path, shards: int = 4, per_shard: int = 3, bad: bool = True) -> None:
    """Actions-carrying episodes (discrete, n=3) of 10 frames at 32x32; one bad sample in shard 0."""
    meta = {"fps": 10, "num_frames": 10, "width": 32, "height": 32, "action_space": {"type": "discrete", "n": 3}}
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(root / f"d-{s:03d}.tar")) as sink:
            if bad and s == 0:
                sink.write({"__key__": "broken", "mp4": b"\x00" * 64, "json": json.dumps(meta).encode()})
            for i in range(per_shard):
                rng = np.random.default_rng(100 * s + i)
                frames = rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
                sink.write({
                    "__key__": f"e{s}x{i}", "mp4": encode_frames(frames, 10.0), "json": json.dumps(meta).encode(),
                    "actions.npy": rng.integers(0, 3, 10), "rewards.npy": rng.random(10).astype(np.float32),
                    "terminals.npy": np.arange(10) == 9,
                })  # fmt: skip


class Recorder(pl.LightningModule):
    """A tiny model that records what it was fed (keys per epoch, losses)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)
        self.keys: dict[int, list[str]] = {}
        self.losses: list[float] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video, actions = batch["video"], batch["actions"]
        assert video.dtype == torch.uint8 and tuple(video.shape) == (2, 4, 3, 16, 16)
        assert actions.dtype == torch.float32 and tuple(actions.shape) == (2, 4, 3)
        assert torch.all(actions.sum(-1) == 1) and tuple(batch["rewards"].shape) == (2, 4)
        self.keys.setdefault(self.current_epoch, []).extend(batch["key"])
        x = video.float().mean(dim=(1, 3, 4)) / 255  # (B, C)
        loss = (self.layer(x) - batch["rewards"].mean(1, keepdim=True)).pow(2).mean()
        self.losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.keys.setdefault(-1, []).extend(batch["key"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_dm(root: Path, **kw) -> ShardDataModule:
    args = dict(train_shards=str(root), frames=4, frame_stride=2, resolution=16, batch_size=2, num_workers=2,
                steps_per_epoch=5, shuffle_buffer=4, seed=3)  # fmt: skip
    args.update(kw)
    return ShardDataModule(**args)


def trainer(tmp_path: Path, **kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, max_epochs=2, logger=CSVLogger(tmp_path, name="log"),
                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1)
    args.update(kw)
    return pl.Trainer(**args)


def test_fit_runs_steps_per_epoch_with_fresh_order_and_logs_skips(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data")
    model, dm = Recorder(), make_dm(tmp_path / "data", val_shards=str(tmp_path / "data"))
    with pytest.warns(RuntimeWarning, match="broken"):
        fit = trainer(tmp_path)
        fit.fit(model, dm)
    assert fit.global_step == 10
    assert len(model.keys[0]) == len(model.keys[1]) == 10
    assert model.keys[0] != model.keys[1]  # a fresh shard order in epoch 1
    assert sorted(set(model.keys[-1])) == sorted(f"e{s}x{i}" for s in range(4) for i in range(3))
    assert dm.skip_counts.get("bad_video", 0) >= 1
    rows = list(csv.DictReader(open(Path(fit.logger.log_dir) / "metrics.csv")))
    logged = [float(r["data/skipped_bad_video"]) for r in rows if r.get("data/skipped_bad_video")]
    assert logged and logged[-1] == dm.skip_counts["bad_video"]


def test_stream_position_resumes_exactly_with_workers(tmp_path: Path) -> None:
    write_dataset(tmp_path, bad=False)
    full = list(make_dm(tmp_path, steps_per_epoch=7).train_dataloader())
    dm = make_dm(tmp_path, steps_per_epoch=7)
    loader = dm.train_dataloader()
    for n, _ in enumerate(loader, start=1):
        if n == 3:  # stop after an odd number of batches: the next one comes from worker 1
            break
    state = dm.state_dict()
    assert state["epoch"] == 0 and state["batches"] == 3 and state["num_workers"] == 2
    resumed_dm = make_dm(tmp_path, steps_per_epoch=7)
    resumed_dm.load_state_dict(state)
    rest = list(resumed_dm.train_dataloader())
    assert [b["key"] for b in rest] == [b["key"] for b in full[3:]]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(rest, full[3:], strict=True))
    with pytest.raises(ValueError, match="num_workers"):
        make_dm(tmp_path, num_workers=1).load_state_dict(state)


def test_fit_resumed_from_a_mid_epoch_checkpoint_sees_the_same_samples(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", bad=False)
    reference = Recorder()
    trainer(tmp_path / "a", max_epochs=1).fit(reference, make_dm(tmp_path / "data"))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    first = Recorder()
    trainer(tmp_path / "b", max_steps=3, enable_checkpointing=True, callbacks=[ckpt]).fit(
        first, make_dm(tmp_path / "data")
    )
    path = next((tmp_path / "ckpt").glob("*step=3*.ckpt"))
    assert torch.load(path, weights_only=True)["ShardDataModule"]["batches"] == 3
    resumed = Recorder()
    trainer(tmp_path / "c", max_epochs=1).fit(resumed, make_dm(tmp_path / "data"), ckpt_path=path)
    assert first.keys[0] == reference.keys[0][:6]
    assert resumed.keys[0] == reference.keys[0][6:]
    np.testing.assert_allclose(resumed.losses, reference.losses[3:], rtol=1e-6)


def test_data_configs_parse_into_the_datamodule() -> None:
    from lightning.pytorch.cli import LightningCLI

    for name, frames in (("sample_videos", 8), ("sample_atari", 16)):
        cli = LightningCLI(Recorder, ShardDataModule, subclass_mode_data=True, run=False,
                           args=["--config", str(ROOT / "configs" / "data" / f"{name}.yaml")])  # fmt: skip
        assert isinstance(cli.datamodule, ShardDataModule) and cli.datamodule.spec.frames == frames
    with pytest.raises(SystemExit):
        LightningCLI(Recorder, ShardDataModule, subclass_mode_data=True, run=False,
                     args=["--config", str(ROOT / "configs/data/sample_atari.yaml"), "--data.init_args.framez=3"])


def test_sample_corpus_streams_with_actions(sample_corpus: Path) -> None:
    atari = ShardDataModule(train_shards=str(sample_corpus / "atari"), val_shards=str(sample_corpus / "atari"),
                            frames=8, resolution=32, batch_size=3, steps_per_epoch=2, shuffle_buffer=4)  # fmt: skip
    batches = list(atari.train_dataloader())
    assert len(batches) == 2
    batch = batches[0]
    assert batch["video"].dtype == torch.uint8 and tuple(batch["video"].shape) == (3, 8, 3, 32, 32)
    assert tuple(batch["actions"].shape) == (3, 8, 4) and torch.all(batch["actions"].sum(-1) == 1)
    assert batch["rewards"].dtype == torch.float32 and tuple(batch["terminals"].shape) == (3, 8)
    manifest = json.loads((sample_corpus / "videos" / "manifest.json").read_text())
    videos = ShardDataModule(val_shards=str(sample_corpus / "videos"), frames=8, frame_stride=2, batch_size=4)
    keys = [k for b in videos.val_dataloader() for k in b["key"]]
    assert len(keys) == len(set(keys)) == manifest["num_samples"]  # every real clip decodes, each once


def test_resume_at_another_world_size_warns_and_restarts_the_epoch(tmp_path: Path) -> None:
    write_dataset(tmp_path, bad=False)
    full = [b["key"] for b in make_dm(tmp_path, steps_per_epoch=4).train_dataloader()]
    saved = {"epoch": 0, "batches": 2, "seed": 3, "num_workers": 2, "skips": {},
             "workers": {0: {"cursor": 2, "batches": 1}, 1: {"cursor": 2, "batches": 1}},
             "ranks": {0: {0: {"cursor": 2, "batches": 1}}, 1: {0: {"cursor": 4, "batches": 1}}}}  # fmt: skip
    dm = make_dm(tmp_path, steps_per_epoch=4)
    dm.load_state_dict(saved)
    with pytest.warns(RuntimeWarning, match="world size 2 and resumes at 1"):
        loader = dm.train_dataloader()
    assert [b["key"] for b in loader] == full  # the whole epoch again, in the same order
