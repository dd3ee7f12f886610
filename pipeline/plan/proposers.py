"""Where candidate plans come from: a sampler refined by CEM, uniform random plans, or a language model.

Every proposer returns a PlanResult for a score function over candidates [N, H, A] (higher is better):
proposers propose, the world model (inside the score function) evaluates and the best plan wins.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pipeline.plan.cem import CEMConfig, PlanResult, ScoreFn, cem_continuous, cem_discrete

log = logging.getLogger(__name__)


@dataclass
class ActionSpace:
    """Discrete (n one-hot actions, optional names) or continuous (dim values in [low, high])."""

    discrete: bool = True
    n: int = 4
    meanings: list[str] = field(default_factory=list)
    low: float = -1.0
    high: float = 1.0

    def random(self, count: int, horizon: int, generator: torch.Generator | None = None) -> Tensor:
        """[count, horizon, n] uniformly random plans (one-hot rows when discrete)."""
        if self.discrete:
            idx = torch.randint(self.n, (count, horizon), generator=generator)
            return torch.eye(self.n)[idx]
        return torch.rand(count, horizon, self.n, generator=generator) * (self.high - self.low) + self.low


@dataclass
class SamplerProposer:
    """Samples plans from a distribution refined by CEM (iterations=1 is plain random shooting)."""

    space: ActionSpace
    config: CEMConfig = field(default_factory=CEMConfig)

    def propose(self, score_fn: ScoreFn, horizon: int, generator: torch.Generator | None = None,
                proposals: Tensor | None = None) -> PlanResult:
        if self.space.discrete:
            return cem_discrete(score_fn, horizon, self.space.n, self.config, generator, proposals=proposals)
        return cem_continuous(score_fn, horizon, self.space.n, self.config, generator, self.space.low,
                              self.space.high, proposals=proposals)


@dataclass
class RandomProposer:
    """One uniformly random plan, never scored by the model: the random-policy baseline."""

    space: ActionSpace

    def propose(self, score_fn: ScoreFn, horizon: int, generator: torch.Generator | None = None,
                proposals: Tensor | None = None) -> PlanResult:
        plan = self.space.random(1, horizon, generator)[0]
        return PlanResult(plan, float("nan"), [], 0)


PLAN_LINE = re.compile(r"^\s*(?:[-*]\s*)?PLAN\s*\d*\s*:\s*(.*?)\s*$", re.IGNORECASE)


def parse_plans(text: str, space: ActionSpace, horizon: int) -> tuple[list[Tensor], int]:
    """Plans [H, A] from lines `PLAN: a1 a2 ... aH` -> (valid plans, rejected count).

    Discrete: H integers in [0, n) or action names; continuous: H steps separated by `;`, each n
    comma-separated numbers in [low, high]. Lines without `PLAN:` are commentary and ignored.
    """
    plans, rejected = [], 0
    names = {m.upper(): i for i, m in enumerate(space.meanings)}
    for line in text.splitlines():
        match = PLAN_LINE.match(line)
        if match is None:
            continue
        try:
            plans.append(_parse_one(match.group(1), space, horizon, names))
        except ValueError as err:
            rejected += 1
            log.debug("rejected plan %r: %s", line, err)
    return plans, rejected


def _parse_one(body: str, space: ActionSpace, horizon: int, names: dict[str, int]) -> Tensor:
    if space.discrete:
        tokens = body.replace(",", " ").split()
        if len(tokens) != horizon:
            raise ValueError(f"{len(tokens)} actions, expected {horizon}")
        idx = [names[t.upper()] if t.upper() in names else int(t) for t in tokens]
        if any(not 0 <= i < space.n for i in idx):
            raise ValueError(f"action outside [0, {space.n})")
        return torch.eye(space.n)[torch.tensor(idx)]
    steps = [s for s in body.split(";") if s.strip()]
    if len(steps) != horizon:
        raise ValueError(f"{len(steps)} steps, expected {horizon}")
    values = torch.tensor([[float(v) for v in s.split(",")] for s in steps])
    if values.shape != (horizon, space.n) or not torch.isfinite(values).all():
        raise ValueError(f"steps must have {space.n} finite values each")
    if (values < space.low).any() or (values > space.high).any():
        raise ValueError(f"values outside [{space.low}, {space.high}]")
    return values


@dataclass
class LLMStats:
    """Counters of a language-model proposer over its lifetime."""

    requests: int = 0
    failed_requests: int = 0
    plans: int = 0
    rejected: int = 0
    fallbacks: int = 0


@dataclass
class LanguageModelProposer:
    """Asks an OpenAI-compatible chat-completions endpoint for `num_plans` candidate plans per decision.

    Valid plans are scored by the world model and the best is returned; malformed ones are rejected and
    counted. When the endpoint fails or no plan parses, the `fallback` proposer (random plans if None)
    decides instead: planning never crashes on the language model.
    """

    space: ActionSpace
    base_url: str = "http://127.0.0.1:8000"
    model: str = "local"
    num_plans: int = 8
    timeout: float = 30.0
    temperature: float = 0.7
    task: str = "Play the game well: collect as much reward as possible."
    fallback: SamplerProposer | RandomProposer | None = None
    stats: LLMStats = field(default_factory=LLMStats)

    def prompt(self, horizon: int) -> list[dict[str, str]]:
        """The chat messages asking for plans in the constrained format."""
        if self.space.discrete:
            legend = ", ".join(f"{i}={m}" for i, m in enumerate(self.space.meanings)) or f"0..{self.space.n - 1}"
            fmt = f"PLAN: followed by exactly {horizon} action numbers separated by spaces (actions: {legend})"
        else:
            fmt = (f"PLAN: followed by exactly {horizon} steps separated by ';', each {self.space.n} comma-separated "
                   f"numbers in [{self.space.low}, {self.space.high}]")
        system = "You propose action plans for an agent. Answer only with plan lines, no other text."
        user = f"{self.task}\nGive {self.num_plans} different candidate plans, one per line, each line: {fmt}."
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def request(self, horizon: int) -> str | None:
        """One POST to /v1/chat/completions; the reply's text, or None on any failure (no retries)."""
        body = json.dumps({"model": self.model, "messages": self.prompt(horizon), "temperature": self.temperature,
                           "n": 1}).encode()
        url = self.base_url.rstrip("/") + "/v1/chat/completions"
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        self.stats.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read(1 << 20).decode("utf-8"))
            return str(reply["choices"][0]["message"]["content"])
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
            self.stats.failed_requests += 1
            log.warning("language-model request to %s failed: %s", url, err)
            return None

    def propose(self, score_fn: ScoreFn, horizon: int, generator: torch.Generator | None = None,
                proposals: Tensor | None = None) -> PlanResult:
        text = self.request(horizon)
        plans, rejected = parse_plans(text, self.space, horizon) if text is not None else ([], 0)
        self.stats.plans += len(plans)
        self.stats.rejected += rejected
        if not plans:
            self.stats.fallbacks += 1
            fallback = self.fallback or RandomProposer(self.space)
            return fallback.propose(score_fn, horizon, generator, proposals)
        candidates = torch.stack(plans)
        if proposals is not None and len(proposals):
            candidates = torch.cat([candidates, proposals.float()])
        scores = torch.nan_to_num(score_fn(candidates).float(), nan=-float("inf"))
        best = int(scores.argmax())
        return PlanResult(candidates[best], float(scores[best]), [float(scores[best])], len(candidates))
