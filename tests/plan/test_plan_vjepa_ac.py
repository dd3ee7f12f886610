"""The planner drives the action-conditioned V-JEPA through the same contract as the RSSM (goal images)."""

from __future__ import annotations

import pytest
import torch

from pipeline.plan.cem import CEMConfig
from pipeline.plan.mpc import MPCController
from pipeline.plan.objectives import GoalObjective, embed_goal, make_score_fn, rollout_actions
from pipeline.plan.proposers import ActionSpace, SamplerProposer

vjepa_ac = pytest.importorskip("pipeline.models.vjepa_ac")

TINY = dict(action_dim=4, frames=6, context_frames=2, patch_size=8, tubelet_size=2, dim=32, depth=2, heads=4,
            pred_dim=32, pred_depth=2, pred_heads=4, auto_steps=2)


def test_goal_planning_with_action_conditioned_vjepa() -> None:
    torch.manual_seed(0)
    model = vjepa_ac.VJEPAACModule(**TINY).eval()
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=g)
    goal = embed_goal(model, frames[3:4])
    objective = GoalObjective(goal)
    score = make_score_fn(model, frames[:2], torch.eye(4)[[1]], objective)
    res = SamplerProposer(ActionSpace(True, 4), CEMConfig(12, 3, 2, 0.1)).propose(score, 3, g)
    assert res.best.shape == (3, 4) and res.evaluated == 24
    # the reported score is the model's own judgement of that plan, recomputed through the contract
    acts = rollout_actions(torch.eye(4)[[1]], res.best[None])
    again = objective(model.rollout(frames[:2][None], acts, 3)).item()
    assert res.score == pytest.approx(again, rel=1e-4, abs=1e-5)
    # the best of 24 scored plans beats the average random plan
    rand = ActionSpace(True, 4).random(12, 3, torch.Generator().manual_seed(5))
    assert res.score >= score(rand).mean().item() - 1e-6
    controller = MPCController(model, SamplerProposer(ActionSpace(True, 4), CEMConfig(6, 2, 1)),
                               lambda: objective, 4, horizon=3, replan_every=3, context_frames=2)
    controller.reset(frames[0])
    action = controller.act()
    controller.observe(action, frames[1])
    assert action.shape == (4,) and action.sum() == 1 and controller.plans_made == 1
