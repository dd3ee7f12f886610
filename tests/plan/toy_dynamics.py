"""A tiny world model with known dynamics (a point on a grid) and the matching environment, for planner tests."""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.models.protocol import Rollout

MOVES = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, 1], [0, -1]])  # noop, up, down, right, left
SIZE = 8


def draw(pos: Tensor) -> Tensor:
    """positions [..., 2] long -> frames uint8 [..., 1, SIZE, SIZE] with one lit pixel."""
    flat = pos[..., 0] * SIZE + pos[..., 1]
    img = torch.nn.functional.one_hot(flat, SIZE * SIZE).to(torch.uint8) * 255
    return img.view(*pos.shape[:-1], 1, SIZE, SIZE)


def locate(frames: Tensor) -> Tensor:
    """frames uint8 [..., 1, SIZE, SIZE] -> positions [..., 2] long."""
    flat = frames.flatten(-3).argmax(-1)
    return torch.stack([flat // SIZE, flat % SIZE], -1)


class GridModel:
    """Exact dynamics: rollout latents are positions [B, h, 2]; reward = -L1 distance to `target`."""

    context_frames = 2

    def __init__(self, target: tuple[int, int] = (6, 6)) -> None:
        self.target = torch.tensor(target)
        self.calls = 0

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, horizon: int, future: Tensor | None = None) -> Rollout:
        self.calls += 1
        Tc = context.shape[1]
        pos = locate(context[:, -1])
        path = []
        for t in range(horizon):
            move = MOVES[actions[:, Tc - 1 + t].argmax(-1)]
            pos = (pos + move).clamp(0, SIZE - 1)
            path.append(pos)
        latents = torch.stack(path, 1).float()  # (B, h, 2)
        rewards = -(latents - self.target.float()).abs().sum(-1)
        return Rollout(frames=None, latents=latents, rewards=rewards)

    @torch.no_grad()
    def embed(self, video: Tensor) -> Tensor:
        return locate(video).float()


class GridEnv:
    """The real environment the GridModel describes; episodes last `steps` steps."""

    num_actions = len(MOVES)

    def __init__(self, start: tuple[int, int] = (1, 1), target: tuple[int, int] = (6, 6), steps: int = 12) -> None:
        self.start, self.target, self.steps = torch.tensor(start), torch.tensor(target), steps

    def reset(self) -> Tensor:
        self.pos, self.t = self.start.clone(), 0
        return draw(self.pos)

    def step(self, action: int) -> tuple[Tensor, float, bool]:
        self.pos = (self.pos + MOVES[action]).clamp(0, SIZE - 1)
        self.t += 1
        reward = -float((self.pos - self.target).abs().sum())
        return draw(self.pos), reward, self.t >= self.steps
