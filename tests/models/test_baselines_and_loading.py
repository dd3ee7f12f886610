from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from pipeline.models.baselines import CopyLastFrame, LinearExtrapolation
from pipeline.models.loading import Ensemble, load_world_model
from pipeline.models.protocol import WorldModel


def _clip() -> torch.Tensor:
    # brightness rising by 10 per frame: linear extrapolation is exact, copying the last frame is not
    return (torch.arange(6).view(1, 6, 1, 1, 1) * 10 + 50).expand(2, 6, 3, 8, 8).to(torch.uint8)


def test_copy_last_frame_and_linear_extrapolation() -> None:
    video = _clip()
    copy, lin = CopyLastFrame(context_frames=2), LinearExtrapolation(context_frames=2)
    assert isinstance(copy, WorldModel) and isinstance(lin, WorldModel)
    out = copy.rollout(video[:, :2], None, 3)
    assert out.frames.shape == (2, 3, 3, 8, 8) and out.latents is None
    assert torch.allclose(out.frames, torch.full_like(out.frames, 60 / 255))
    out = lin.rollout(video[:, :2], None, 4)
    assert torch.allclose(out.frames * 255, video[:, 2:6].float(), atol=1e-4)
    # clipped to [0, 1] when the extrapolation leaves the range
    assert lin.rollout(torch.tensor([0, 250], dtype=torch.uint8).view(1, 2, 1, 1, 1), None, 2).frames.max() == 1.0
    with pytest.raises(ValueError, match="horizon"):
        copy.rollout(video[:, :2], None, 0)


def test_pooled_latents_and_targets() -> None:
    video = _clip()
    out = CopyLastFrame(context_frames=2, latent_pool=4).rollout(video[:, :2], None, 2, future=video[:, 2:4])
    assert out.latents.shape == out.target_latents.shape == (2, 2, 3 * 2 * 2)
    assert torch.allclose(out.target_latents[:, 1] - out.latents[:, 1], torch.full((2, 12), 20 / 255), atol=1e-6)


def test_checkpoint_round_trip_and_ensemble(tmp_path: Path) -> None:
    model = LinearExtrapolation(context_frames=3, latent_pool=2)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "lin.ckpt")
    loaded = load_world_model(tmp_path / "lin.ckpt")
    assert type(loaded) is LinearExtrapolation and loaded.context_frames == 3 and loaded.latent_pool == 2
    assert not loaded.training
    video = _clip()
    ens = Ensemble([loaded, CopyLastFrame(context_frames=3)])
    out = ens.rollout(video[:, :3], None, 2)
    members = [loaded.rollout(video[:, :3], None, 2), CopyLastFrame(3).rollout(video[:, :3], None, 2)]
    expected = (members[0].frames + members[1].frames) / 2
    assert torch.allclose(out.frames, expected) and out.latents is None  # one member has no latents
    with pytest.raises(ValueError, match="context_frames"):
        Ensemble([CopyLastFrame(2), CopyLastFrame(3)])


def test_loading_refuses_foreign_or_unknown_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_world_model(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="wm_class_path"):
        load_world_model(tmp_path / "plain.ckpt")
    torch.save({"state_dict": {}, "wm_class_path": "os.system", "hyper_parameters": {}}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="not a registered world-model family"):
        load_world_model(tmp_path / "evil.ckpt")
    torch.save({"state_dict": {}, "wm_class_path": "pipeline.models.protocol.Rollout"}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="not a registered world-model family"):
        load_world_model(tmp_path / "x.ckpt")


def test_checkpoint_written_under_lightning_cli_loads(tmp_path: Path) -> None:
    """LightningCLI stores _class_path/_instantiator in the hyperparameters; loading must not pass them on."""
    from pipeline.train_cli import build_cli

    cli = build_cli(["--model", "pipeline.models.baselines.LinearExtrapolation",
                     "--model.init_args.context_frames", "3",
                     "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    cli.trainer.strategy.connect(cli.model)
    cli.trainer.save_checkpoint(tmp_path / "cli.ckpt")
    saved = torch.load(tmp_path / "cli.ckpt", weights_only=True)["hyper_parameters"]
    assert "_class_path" in saved
    loaded = load_world_model(tmp_path / "cli.ckpt")
    assert type(loaded) is LinearExtrapolation and loaded.context_frames == 3
