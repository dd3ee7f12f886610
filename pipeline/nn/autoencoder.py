"""A small per-frame convolutional autoencoder for latent-space diffusion. Torch only.

Saved as a directory holding `config.json` (constructor arguments) and `model.safetensors`
(weights): nothing is unpickled when loading. The diffusion module loads it frozen and trains in
its latent space.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class FrameAutoencoder(nn.Module):
    """Per-frame conv encoder/decoder: [N, C, H, W] in [-1, 1] <-> latents [N, L, H / f, W / f], f = 2^levels."""

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        hidden: int = 32,
        levels: int = 2,
        scale: float = 1.0,
    ) -> None:
        """
        Args:
            in_channels: channels of a frame (3 for RGB).
            latent_channels: channels of the latent map.
            hidden: channels of the first conv; doubled at each downsampling level.
            levels: number of stride-2 downsamplings (spatial factor 2^levels).
            scale: multiplies the encoder output so latents have about unit variance (decode divides).
        """
        super().__init__()
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        self.config = {
            "in_channels": in_channels,
            "latent_channels": latent_channels,
            "hidden": hidden,
            "levels": levels,
            "scale": scale,
        }
        self.latent_channels, self.factor, self.scale = latent_channels, 2**levels, scale
        chans = [hidden * 2**i for i in range(levels + 1)]
        enc: list[nn.Module] = [nn.Conv2d(in_channels, chans[0], 3, padding=1), nn.SiLU()]
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU()]
        enc.append(nn.Conv2d(chans[-1], latent_channels, 1))
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, chans[-1], 3, padding=1), nn.SiLU()]
        for a, b in zip(chans[:0:-1], chans[-2::-1], strict=True):
            dec += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
            dec += [nn.Conv2d(b, b, 3, padding=1), nn.SiLU()]
        dec.append(nn.Conv2d(chans[0], in_channels, 3, padding=1))
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def encode(self, x: Tensor) -> Tensor:
        """x: [N, C, H, W] in [-1, 1] -> [N, L, H / f, W / f] (H, W divisible by f)."""
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            size = tuple(x.shape[-2:])
            raise ValueError(f"frame size {size} is not divisible by the autoencoder factor {self.factor}")
        return self.encoder(x) * self.scale

    def decode(self, z: Tensor) -> Tensor:
        """z: [N, L, h, w] -> [N, C, h * f, w * f] (about [-1, 1])."""
        return self.decoder(z / self.scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json and model.safetensors into `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config, indent=2, sort_keys=True))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> FrameAutoencoder:
        """Load a directory written by save_pretrained; unknown config keys and missing weights fail."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"autoencoder file {path} not found: a saved autoencoder directory holds {CONFIG_FILE} and "
                    f"{WEIGHTS_FILE} (written by FrameAutoencoder.save_pretrained)"
                )
        config = json.loads(config_path.read_text())
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        if not isinstance(config, dict) or set(config) - allowed:
            unknown = sorted(set(config) - allowed) if isinstance(config, dict) else config
            raise ValueError(f"{config_path}: unknown autoencoder config keys {unknown}; allowed: {sorted(allowed)}")
        model = cls(**config)
        model.load_state_dict(load_file(str(weights_path), device=str(map_location)), strict=True)
        return model


def load_frozen_autoencoder(directory: str | Path) -> FrameAutoencoder:
    """from_pretrained, then eval mode with gradients off (the diffusion model trains in its latent space)."""
    model = FrameAutoencoder.from_pretrained(directory)
    model.eval().requires_grad_(False)
    return model
