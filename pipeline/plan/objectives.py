"""Planning objectives: how a world model's rollout under a candidate plan is scored (higher is better).

Works with any model of the WorldModel contract that takes actions (RSSM, action-conditioned V-JEPA):
`rollout(context [B, Tc, C, H, W] uint8, actions [B, Tc + H, A], H) -> Rollout`, and, for goal images,
`embed(video) -> [B, T, ...]` (LatentWorldModel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.models.protocol import Rollout

Objective = Callable[[Rollout], Tensor]


@dataclass
class ReturnObjective:
    """Predicted return: sum_t discount^t * rewards[:, t], plus discount^H * value(last latent) if given.

    Needs a model with a reward head (Rollout.rewards, e.g. the RSSM).
    """

    discount: float = 1.0
    value_fn: Callable[[Tensor], Tensor] | None = None

    def __call__(self, rollout: Rollout) -> Tensor:
        if rollout.rewards is None:
            raise ValueError("the return objective needs a model that predicts rewards (Rollout.rewards is None)")
        H = rollout.rewards.shape[1]
        weights = self.discount ** torch.arange(H, dtype=rollout.rewards.dtype, device=rollout.rewards.device)
        score = (rollout.rewards * weights).sum(1)
        if self.value_fn is not None:
            if rollout.latents is None:
                raise ValueError("a terminal value needs Rollout.latents")
            score = score + self.discount**H * self.value_fn(rollout.latents[:, -1]).reshape(-1)
        return score


@dataclass
class GoalObjective:
    """Negative mean L1 distance between the last predicted latent and a goal embedding (V-JEPA 2-AC).

    goal: [...] the goal's latent, shaped like one time step of Rollout.latents.
    """

    goal: Tensor

    def __call__(self, rollout: Rollout) -> Tensor:
        if rollout.latents is None:
            raise ValueError("the goal objective needs a model that predicts latents (Rollout.latents is None)")
        last = rollout.latents[:, -1]
        if last.shape[1:] != self.goal.shape:
            raise ValueError(f"goal latent {tuple(self.goal.shape)} does not match predicted {tuple(last.shape[1:])}")
        return -(last - self.goal.to(last)).abs().flatten(1).mean(1)


@torch.no_grad()
def embed_goal(model: object, goal: Tensor) -> Tensor:
    """goal uint8 [T, C, H, W] (T >= 1 frames ending at the goal) -> latent of its last frame [...]."""
    embed = getattr(model, "embed", None)
    if embed is None:
        raise TypeError(f"{type(model).__name__} has no embed(video); goal images need a LatentWorldModel")
    return embed(goal.unsqueeze(0))[0, -1]


def rollout_actions(past: Tensor, candidates: Tensor) -> Tensor:
    """Actions in the contract's layout for context + candidates.

    past:       [Tc - 1, A] actions taken between the context frames (row t: after frame t)
    candidates: [N, H, A] planned actions, the first taken after the last context frame
    returns:    [N, Tc + H, A]; the final row (after the last predicted frame) is zero and unused.
    """
    N, H, A = candidates.shape
    rows = [past.to(candidates).unsqueeze(0).expand(N, -1, -1), candidates, candidates.new_zeros(N, 1, A)]
    return torch.cat(rows, 1)


def make_score_fn(
    model: object,
    context: Tensor,
    past_actions: Tensor,
    objective: Objective,
    chunk: int = 256,
) -> Callable[[Tensor], Tensor]:
    """Score function over candidates [N, H, A] -> [N] for the planner, from the current situation.

    context: uint8 [Tc, C, H, W] the last observed frames; past_actions: [Tc - 1, A].
    Rollouts are batched `chunk` candidates at a time to bound memory.
    """
    if past_actions.shape[0] != context.shape[0] - 1:
        raise ValueError(f"need {context.shape[0] - 1} past actions for {context.shape[0]} context frames, "
                         f"got {past_actions.shape[0]}")
    device = _device(model)

    @torch.no_grad()
    def score(candidates: Tensor) -> Tensor:
        out = []
        for part in candidates.split(chunk):
            n, H = part.shape[:2]
            ctx = context.to(device).unsqueeze(0).expand(n, *context.shape)
            acts = rollout_actions(past_actions, part.to(device))
            out.append(objective(model.rollout(ctx, acts, H)).float().cpu())
        return torch.cat(out)

    return score


def _device(model: object) -> torch.device:
    params = getattr(model, "parameters", None)
    if params is None:
        return torch.device("cpu")
    first = next(iter(params()), None)
    return first.device if first is not None else torch.device("cpu")
