"""Model-predictive control: plan `horizon` actions with a world model, execute `replan_every`, re-plan.

The controller keeps the last `context_frames` observed frames and the actions between them, so any
model of the WorldModel contract that takes actions can be plugged in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from pipeline.plan.cem import PlanResult, ScoreFn
from pipeline.plan.objectives import Objective, make_score_fn


class Proposer(Protocol):
    def propose(self, score_fn: ScoreFn, horizon: int, generator: torch.Generator | None = None,
                proposals: Tensor | None = None) -> PlanResult: ...


@dataclass
class MPCController:
    """Chooses actions by re-planning every `replan_every` steps.

    objective_fn: builds the objective for the current situation (e.g. a fixed goal or the return).
    """

    model: object
    proposer: Proposer
    objective_fn: Callable[[], Objective]
    num_actions: int
    horizon: int = 8
    replan_every: int = 1
    context_frames: int = 4
    seed: int = 0
    frames: list[Tensor] = field(default_factory=list)
    actions: list[Tensor] = field(default_factory=list)
    plan: Tensor | None = None
    step_in_plan: int = 0
    plans_made: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.replan_every <= self.horizon:
            raise ValueError(f"replan_every must be in [1, horizon={self.horizon}], got {self.replan_every}")
        self.generator = torch.Generator().manual_seed(self.seed)

    def reset(self, frame: Tensor) -> None:
        """Start an episode from its first frame uint8 [C, H, W]."""
        self.frames, self.actions, self.plan, self.step_in_plan = [frame], [], None, 0

    def observe(self, action: Tensor, frame: Tensor) -> None:
        """Record the action taken [A] and the frame it led to uint8 [C, H, W]."""
        self.actions.append(action.float())
        self.frames.append(frame)
        # only the context window is needed
        self.frames = self.frames[-self.context_frames:]
        self.actions = self.actions[-(self.context_frames - 1):] if self.context_frames > 1 else []

    def act(self) -> Tensor:
        """The next action [A] (one-hot for discrete spaces) for the current situation."""
        if self.plan is None or self.step_in_plan >= self.replan_every:
            context = torch.stack(self.frames)
            # observe() keeps one action fewer than frames: the actions between the context frames
            past = torch.stack(self.actions) if self.actions else torch.zeros(0, self.num_actions)
            score_fn = make_score_fn(self.model, context, past, self.objective_fn())
            self.plan = self.proposer.propose(score_fn, self.horizon, self.generator).best
            self.step_in_plan = 0
            self.plans_made += 1
        action = self.plan[self.step_in_plan]
        self.step_in_plan += 1
        return action


def run_episode(env: object, controller: MPCController | None, max_steps: int,
                random_policy: Callable[[], int] | None = None, seed: int | None = None) -> dict[str, float]:
    """Play one episode of `env` (reset(seed) -> frame, step(a) -> (frame, reward, done)); the controller or a
    random policy chooses actions. Returns {"return", "steps"}."""
    frame = env.reset() if seed is None else env.reset(seed)
    if controller is not None:
        controller.reset(frame)
    total, steps = 0.0, 0
    for steps in range(1, max_steps + 1):  # noqa: B007 - steps is reported after the loop
        if controller is not None:
            onehot = controller.act()
            action = int(onehot.argmax())
        else:
            action = random_policy()
            onehot = torch.eye(env.num_actions)[action]
        frame, reward, done = env.step(action)
        total += reward
        if controller is not None:
            controller.observe(onehot, frame)
        if done:
            break
    return {"return": total, "steps": float(steps)}
