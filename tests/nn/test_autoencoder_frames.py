from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.nn.autoencoder import CONFIG_FILE, WEIGHTS_FILE, FrameAutoencoder, load_frozen_autoencoder


def test_shapes_per_level() -> None:
    torch.manual_seed(0)
    for levels, side in ((0, 32), (1, 16), (2, 8)):
        ae = FrameAutoencoder(hidden=8, latent_channels=4, levels=levels)
        z = ae.encode(torch.randn(2, 3, 32, 32))
        assert z.shape == (2, 4, side, side) and ae.factor == 32 // side
        assert ae.decode(z).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="not divisible by the autoencoder factor 4"):
        FrameAutoencoder(levels=2).encode(torch.zeros(1, 3, 30, 32))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ae = FrameAutoencoder(hidden=8, latent_channels=2, levels=1, scale=0.7)
    out_dir = ae.save_pretrained(tmp_path / "ae")
    assert json.loads((out_dir / CONFIG_FILE).read_text()) == {
        "hidden": 8, "in_channels": 3, "latent_channels": 2, "levels": 1, "scale": 0.7,
    }
    assert set(load_file(str(out_dir / WEIGHTS_FILE))) == set(ae.state_dict())
    loaded = load_frozen_autoencoder(out_dir)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode(x), ae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), ae(x), rtol=0, atol=0)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    # the scale multiplies latents and is undone by decode
    assert loaded.scale == 0.7


def test_loading_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        FrameAutoencoder.from_pretrained(tmp_path)
    FrameAutoencoder(hidden=8).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "hiden": 4}))
    with pytest.raises(ValueError, match=r"unknown autoencoder config keys \['hiden'\]"):
        FrameAutoencoder.from_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "hidden": 16}))  # weights no longer fit
    with pytest.raises(RuntimeError, match="size mismatch"):
        FrameAutoencoder.from_pretrained(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors not found"):
        FrameAutoencoder.from_pretrained(tmp_path)
