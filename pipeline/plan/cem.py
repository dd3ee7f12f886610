"""Cross-entropy method over action sequences, discrete (categorical per step) or continuous (Gaussian).

A score function maps candidate sequences [N, H, A] to scores [N] (higher is better); candidates are
one-hot rows for discrete actions and real vectors for continuous ones. Torch only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class CEMConfig:
    """Search settings shared by the discrete and continuous variants."""

    population: int = 64
    """candidate sequences scored per iteration."""
    elites: int = 8
    """best candidates that refit the sampling distribution."""
    iterations: int = 4
    """refits of the sampling distribution."""
    momentum: float = 0.1
    """weight of the previous distribution in each refit (0: elites only)."""
    min_std: float = 0.05
    """floor of the Gaussian std (continuous) so that the search never collapses early."""
    min_prob: float = 0.01
    """floor of each class probability (discrete), renormalised."""

    def __post_init__(self) -> None:
        if not 1 <= self.elites <= self.population:
            raise ValueError(f"need 1 <= elites <= population, got elites={self.elites}, population={self.population}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


@dataclass
class PlanResult:
    """best: [H, A] the best sequence seen; score: its score; scores: best score per iteration."""

    best: Tensor
    score: float
    scores: list[float]
    evaluated: int


def _score(score_fn: ScoreFn, candidates: Tensor) -> Tensor:
    scores = score_fn(candidates).detach().float().reshape(-1)
    if scores.shape[0] != candidates.shape[0]:
        raise ValueError(f"score function returned {scores.shape[0]} scores for {candidates.shape[0]} candidates")
    # a non-finite score (diverged model) must never win
    return torch.nan_to_num(scores, nan=-float("inf"), posinf=-float("inf"))


class _Best:
    """Tracks the best candidate over all iterations."""

    def __init__(self) -> None:
        self.best: Tensor | None = None
        self.score = -float("inf")
        self.history: list[float] = []
        self.evaluated = 0

    def update(self, candidates: Tensor, scores: Tensor) -> None:
        i = int(scores.argmax())
        self.evaluated += candidates.shape[0]
        if self.best is None or scores[i] > self.score:
            self.best, self.score = candidates[i].clone(), float(scores[i])
        self.history.append(self.score)

    def result(self) -> PlanResult:
        assert self.best is not None
        return PlanResult(self.best, self.score, self.history, self.evaluated)


def cem_discrete(
    score_fn: ScoreFn,
    horizon: int,
    num_actions: int,
    config: CEMConfig = CEMConfig(),
    generator: torch.Generator | None = None,
    init_probs: Tensor | None = None,
    proposals: Tensor | None = None,
) -> PlanResult:
    """CEM with an independent categorical per step.

    init_probs: [H, A] starting distribution (uniform if None), e.g. the shifted previous plan.
    proposals:  [M, H, A] one-hot candidates (e.g. from a language model) scored in the first iteration.
    """
    probs = torch.full((horizon, num_actions), 1.0 / num_actions) if init_probs is None else init_probs.clone()
    eye = torch.eye(num_actions)
    best = _Best()
    for it in range(config.iterations):
        idx = torch.multinomial(probs, config.population, replacement=True, generator=generator).T  # (N, H)
        candidates = eye[idx]  # (N, H, A)
        if it == 0 and proposals is not None and len(proposals):
            candidates = torch.cat([proposals.float(), candidates], 0)
        scores = _score(score_fn, candidates)
        best.update(candidates, scores)
        elites = candidates[scores.topk(min(config.elites, len(scores))).indices]
        probs = config.momentum * probs + (1 - config.momentum) * elites.mean(0)
        probs = probs.clamp_min(config.min_prob)
        probs = probs / probs.sum(-1, keepdim=True)
    return best.result()


def cem_continuous(
    score_fn: ScoreFn,
    horizon: int,
    action_dim: int,
    config: CEMConfig = CEMConfig(),
    generator: torch.Generator | None = None,
    low: float = -1.0,
    high: float = 1.0,
    init_mean: Tensor | None = None,
    init_std: float | None = None,
    proposals: Tensor | None = None,
) -> PlanResult:
    """CEM with a diagonal Gaussian per step, samples clipped to [low, high].

    init_mean: [H, A] starting mean (centre of the box if None); init_std: starting std (half the box if None).
    proposals: [M, H, A] candidates scored in the first iteration.
    """
    mean = torch.full((horizon, action_dim), (low + high) / 2) if init_mean is None else init_mean.clone()
    std = torch.full((horizon, action_dim), (high - low) / 2 if init_std is None else init_std)
    best = _Best()
    for it in range(config.iterations):
        noise = torch.randn(config.population, horizon, action_dim, generator=generator)
        candidates = (mean + std * noise).clamp(low, high)  # (N, H, A)
        if it == 0 and proposals is not None and len(proposals):
            candidates = torch.cat([proposals.float().clamp(low, high), candidates], 0)
        scores = _score(score_fn, candidates)
        best.update(candidates, scores)
        elites = candidates[scores.topk(min(config.elites, len(scores))).indices]
        mean = config.momentum * mean + (1 - config.momentum) * elites.mean(0)
        std = config.momentum * std + (1 - config.momentum) * elites.std(0, unbiased=False)
        std = std.clamp_min(config.min_std)
    return best.result()
