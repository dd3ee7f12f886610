"""Diffusion objectives (EDM, rectified flow), samplers (Euler, Heun) and guidance. Torch only.

Both objectives share one convention so that one sampler serves both: a noise *level* l per frame
(EDM: sigma; rectified flow: t in [0, 1]), a noised input x_l, and a denoiser D(x_l, l) that
estimates the clean x_0. For both, the probability-flow ODE is dx/dl = (x - D(x, l)) / l
(EDM: x = x_0 + sigma * n; rectified flow: x = (1 - t) x_0 + t n, where (x - x_0_hat) / t is the
velocity n - x_0), and sampling starts from x = l_max * n.

Levels are per frame, [B, T], broadcast over the frame's [C, H, W]; a frame mask says which frames
a loss counts (the noised future, not the context).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Net = Callable[[Tensor, Tensor], Tensor]
"""net(x_in: [B, T, C, H, W], c_noise: [B, T]) -> raw output [B, T, C, H, W] (conditioning bound by the caller)."""
Denoiser = Callable[[Tensor, Tensor], Tensor]
"""denoise(x: [B, T, C, H, W], level: [B, T]) -> x_0 estimate."""
Sampler = Literal["euler", "heun"]


def _frames(level: Tensor, x: Tensor) -> Tensor:
    """[B, T] per-frame level -> [B, T, 1, 1, 1] (broadcast over a frame of x)."""
    return level.to(x.dtype).reshape(*level.shape, *([1] * (x.dim() - level.dim())))


def masked_frame_mean(per_element: Tensor, mask: Tensor) -> Tensor:
    """Mean over the frames where mask [B, T] is true, each frame averaged over its [C, H, W]."""
    per_frame = per_element.flatten(2).mean(-1)
    mask = mask.to(per_frame.dtype)
    return (per_frame * mask).sum() / mask.sum().clamp_min(1.0)


class EDM:
    """EDM (Karras et al. 2022) preconditioning, training noise distribution, loss weight and schedule."""

    name = "edm"

    def __init__(
        self,
        sigma_data: float = 0.5,
        p_mean: float = -0.4,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 5.0,
        rho: float = 7.0,
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.min_level = sigma_min

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """c_skip, c_out, c_in, c_noise of EDM table 1 for sigma (any shape)."""
        sd2 = self.sigma_data**2
        var = sigma**2 + sd2
        c_skip = sd2 / var
        c_out = sigma * self.sigma_data / var.sqrt()
        c_in = 1.0 / var.sqrt()
        c_noise = sigma.log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 = 1 / c_out^2."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def train_levels(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> Tensor:
        """log sigma ~ N(p_mean, p_std^2)."""
        z = torch.randn(shape, generator=generator, device=device)
        return (self.p_mean + self.p_std * z).exp()

    def add_noise(self, x0: Tensor, level: Tensor, noise: Tensor) -> Tensor:
        return x0 + _frames(level, x0) * noise

    def denoise(self, net: Net, x: Tensor, level: Tensor) -> Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)."""
        c_skip, c_out, c_in, c_noise = self.scalings(level.float())
        out = net(x * _frames(c_in, x), c_noise)
        return _frames(c_skip, x) * x + _frames(c_out, x) * out.to(x.dtype)

    def loss(self, net: Net, x0: Tensor, level: Tensor, noise: Tensor, mask: Tensor) -> Tensor:
        """Weighted denoising loss lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2 over the masked frames."""
        denoised = self.denoise(net, self.add_noise(x0, level, noise), level)
        weight = _frames(self.loss_weight(level.float()), x0)
        return masked_frame_mean(weight * (denoised.float() - x0.float()) ** 2, mask)

    def sampling_levels(self, steps: int) -> Tensor:
        """Karras schedule: `steps` sigmas from sigma_max down to sigma_min (rho spacing), then 0."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigmas = (hi + ramp * (lo - hi)) ** self.rho
        if steps == 1:
            sigmas = torch.tensor([self.sigma_max], dtype=torch.float64)
        return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


class RectifiedFlow:
    """Rectified flow: x_t = (1 - t) x_0 + t n, the network predicts the velocity n - x_0.

    t ~ logit-normal(loc, scale) in training (SD3); sampling walks t from 1 to 0, optionally
    shifted towards high noise (t' = s t / (1 + (s - 1) t)).
    """

    name = "rectified_flow"

    def __init__(self, loc: float = 0.0, scale: float = 1.0, shift: float = 1.0) -> None:
        self.loc, self.scale, self.shift = loc, scale, shift
        self.min_level = 0.0

    def train_levels(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> Tensor:
        return torch.sigmoid(self.loc + self.scale * torch.randn(shape, generator=generator, device=device))

    def add_noise(self, x0: Tensor, level: Tensor, noise: Tensor) -> Tensor:
        t = _frames(level, x0)
        return (1 - t) * x0 + t * noise

    def denoise(self, net: Net, x: Tensor, level: Tensor) -> Tensor:
        """x_0 = x - t v."""
        v = net(x, level.float())
        return x - _frames(level, x) * v.to(x.dtype)

    def loss(self, net: Net, x0: Tensor, level: Tensor, noise: Tensor, mask: Tensor) -> Tensor:
        """|v(x_t, t) - (n - x_0)|^2 over the masked frames."""
        v = net(self.add_noise(x0, level, noise), level.float())
        return masked_frame_mean((v.float() - (noise - x0).float()) ** 2, mask)

    def sampling_levels(self, steps: int) -> Tensor:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        return (self.shift * t / (1 + (self.shift - 1) * t)).float()


Objective = EDM | RectifiedFlow


def build_objective(name: str, **kwargs: float) -> Objective:
    """'edm' or 'rectified_flow' with that objective's keyword arguments."""
    if name == "edm":
        return EDM(**kwargs)
    if name == "rectified_flow":
        return RectifiedFlow(**kwargs)
    raise ValueError(f"objective must be 'edm' or 'rectified_flow', got {name!r}")


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + scale (cond - uncond); scale 1 is the conditional prediction."""
    return uncond + scale * (cond - uncond)


def sample(denoise: Denoiser, noise: Tensor, levels: Tensor, method: Sampler = "euler") -> Tensor:
    """Integrate the probability-flow ODE from levels[0] to levels[-1] (= 0).

    denoise(x, level [B, T]) -> x_0 estimate; noise: [B, T, C, H, W] standard normal, drawn by the
    caller from a seeded generator (that makes sampling deterministic); levels: descending [S + 1].
    Euler costs S network evaluations, Heun 2S - 1 (no correction on the last step to 0).
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"sampler must be 'euler' or 'heun', got {method!r}")
    levels = levels.tolist()
    x = noise * levels[0]
    b, t = noise.shape[:2]

    def derivative(x: Tensor, level: float) -> Tensor:
        lv = torch.full((b, t), level, device=x.device)
        return (x - denoise(x, lv)) / level

    for cur, nxt in zip(levels[:-1], levels[1:], strict=True):
        d = derivative(x, cur)
        x_next = x + (nxt - cur) * d
        if method == "heun" and nxt > 0:
            x_next = x + (nxt - cur) * 0.5 * (d + derivative(x_next, nxt))
        x = x_next
    return x


def network_evaluations(steps: int, method: Sampler) -> int:
    """Denoiser calls per sample (without guidance)."""
    return steps if method == "euler" else 2 * steps - 1

