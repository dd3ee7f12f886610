"""Every configs/vjepa YAML parses into the real classes (unknown keys fail); paper sizes checked on the meta device."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from pipeline.models.vjepa import VJEPAModule
from pipeline.nn.masks import MaskCollator

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "vjepa").glob("*.yaml"))


def parser() -> ArgumentParser:
    p = ArgumentParser(exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile)
    p.add_subclass_arguments(pl.LightningModule, "model")
    p.add_subclass_arguments(pl.LightningDataModule, "data")
    p.add_class_arguments(pl.Trainer, "trainer", fail_untyped=False)
    return p


def test_the_four_configs_exist() -> None:
    assert {p.stem for p in CONFIGS} >= {"tiny", "vit_l16", "vit_h16", "ac_atari", "ac_tiny"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_model_builds(path: Path) -> None:
    cfg = parser().parse_args(["--config", str(ROOT / "configs/trainer/cpu.yaml"), "--config", str(path)])
    model = cfg.model
    assert model.class_path.startswith("pipeline.models.vjepa")
    data = cfg.data.init_args
    assert data.frames == model.init_args.frames  # the model's window is the clip length
    if data.get("batch_transform") is not None:
        bt = data.batch_transform.init_args
        assert (bt.tubelet_size, bt.patch_size) == (model.init_args.tubelet_size, model.init_args.patch_size)
    cls = VJEPAModule if model.class_path.endswith("VJEPAModule") else None
    if cls is None:
        from pipeline.models.vjepa_ac import VJEPAACModule as cls
    with torch.device("meta"):  # paper sizes without allocating them
        module = cls(**model.init_args)
    enc = sum(p.numel() for p in module.encoder.parameters())
    expected = {"vit_l16": 303e6, "vit_h16": 631e6}.get(path.stem)
    if expected:
        assert enc == pytest.approx(expected, rel=0.02)
        assert sum(p.numel() for p in module.predictor.parameters()) == pytest.approx(22e6, rel=0.05)


def test_unknown_keys_fail() -> None:
    with pytest.raises(Exception, match="masks_ratio"):
        parser().parse_args(["--config", str(CONFIGS[0]), "--model.init_args.masks_ratio", "0.5"])


def test_collator_from_the_tiny_config_matches_the_model() -> None:
    cfg = parser().parse_args(["--config", str(ROOT / "configs/vjepa/tiny.yaml")])
    init = parser().instantiate_classes(cfg)
    assert isinstance(init.data.batch_transform, MaskCollator)
    assert init.data.batch_transform.num_generators == init.model.masker.num_generators == 2
