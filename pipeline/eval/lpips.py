"""LPIPS through the `lpips` package, offline: backbone weights must already be in torchvision's cache.

`lpips.LPIPS` builds its backbone with torchvision's `pretrained=True`, which reads
$TORCH_HOME/hub/checkpoints/<file> and would try to download it when absent. We check the file first
and fail with its path instead; the lpips linear layers ship inside the package.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

# torchvision's published file names (the cache key torchvision uses)
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def backbone_path(net: str) -> Path:
    """Where torchvision looks for the backbone of `net` ("alex" or "vgg"): $TORCH_HOME/hub/checkpoints/."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"LPIPS backbone must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


class LPIPSMetric(nn.Module):
    """Per-image LPIPS distance. forward(a, b: [N, C, H, W] float in [0, 1]) -> [N] float32."""

    def __init__(self, net: str = "alex") -> None:
        """net: backbone, "alex" (default, as the LPIPS paper recommends for a metric) or "vgg"."""
        super().__init__()
        path = backbone_path(net)
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS backbone weights for {net!r} not found at {path}. They are torchvision's ImageNet "
                f"weights: on a machine with internet run `python -c \"import torchvision; "
                f"torchvision.models.{'alexnet' if net == 'alex' else 'vgg16'}(weights='DEFAULT')\"` "
                f"(or copy {BACKBONE_FILES[net]} there), and set TORCH_HOME to that cache when offline."
            )
        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation, inside lpips
            self.model = lpips.LPIPS(net=net, verbose=False).eval()
        self.net, self.weights_file = net, path
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape != b.shape or a.ndim != 4:
            raise ValueError(f"expected two [N, C, H, W] images of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return self.model(a.float() * 2 - 1, b.float() * 2 - 1).flatten()  # lpips wants [-1, 1]
