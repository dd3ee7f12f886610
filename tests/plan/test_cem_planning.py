from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pipeline.plan.cem import CEMConfig, cem_continuous, cem_discrete
from pipeline.plan.mpc import MPCController, run_episode
from pipeline.plan.objectives import GoalObjective, ReturnObjective, embed_goal, make_score_fn, rollout_actions
from pipeline.plan.proposers import ActionSpace, RandomProposer, SamplerProposer


def _toy():
    spec = importlib.util.spec_from_file_location("toy_dynamics", Path(__file__).with_name("toy_dynamics.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_dynamics"] = module
    spec.loader.exec_module(module)
    return module


toy = _toy()


def test_cem_continuous_finds_quadratic_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(5, 2, generator=g) * 1.6 - 0.8  # [H, A] inside the box

    def score(c: torch.Tensor) -> torch.Tensor:
        return -((c - target) ** 2).sum((1, 2))

    res = cem_continuous(score, 5, 2, CEMConfig(population=200, elites=20, iterations=12, momentum=0.1,
                                                min_std=0.01), g)
    assert (res.best - target).abs().max() < 0.05
    assert res.score > -0.01 and res.scores == sorted(res.scores)  # best-so-far never decreases
    assert res.evaluated == 200 * 12
    # one iteration of random shooting is much worse than the refined search
    rs = cem_continuous(score, 5, 2, CEMConfig(population=200, elites=20, iterations=1), torch.Generator())
    assert rs.score < res.score - 0.1


def test_cem_discrete_finds_known_best_sequence_and_uses_proposals() -> None:
    want = torch.tensor([3, 0, 2, 2, 1, 3])

    def score(c: torch.Tensor) -> torch.Tensor:
        return (c.argmax(-1) == want).float().sum(1)

    g = torch.Generator().manual_seed(0)
    res = cem_discrete(score, 6, 4, CEMConfig(population=64, elites=6, iterations=6, momentum=0.1), g)
    assert torch.equal(res.best.argmax(-1), want) and res.score == 6
    # random search with the same budget rarely hits all 6 (4^6 = 4096 sequences)
    rnd = cem_discrete(score, 6, 4, CEMConfig(population=64, elites=6, iterations=1), torch.Generator().manual_seed(0))
    assert rnd.score < 6
    # a proposal with the answer is scored first and wins at once
    res2 = cem_discrete(score, 6, 4, CEMConfig(population=8, elites=2, iterations=1), g,
                        proposals=torch.eye(4)[want][None])
    assert torch.equal(res2.best.argmax(-1), want)
    with pytest.raises(ValueError, match="elites"):
        CEMConfig(population=4, elites=5)


def test_cem_on_tiny_known_dynamics_reaches_optimal_return() -> None:
    model = toy.GridModel(target=(6, 6))
    context = toy.draw(torch.tensor([[1, 1], [1, 1]]))  # [Tc=2, 1, 8, 8]
    past = torch.eye(5)[torch.tensor([0])]
    score = make_score_fn(model, context, past, ReturnObjective(discount=1.0))
    res = SamplerProposer(ActionSpace(True, 5), CEMConfig(128, 12, 6, 0.1)).propose(
        score, 10, torch.Generator().manual_seed(0))
    # L1 distance 10 from the target, one step closer per move: -(9 + 8 + ... + 0) is the optimum
    assert res.score == -45.0
    # goal objective: the predicted final latent reaches the goal frame's embedding exactly
    goal = embed_goal(model, toy.draw(torch.tensor([[4, 2]])))
    score_goal = make_score_fn(model, context, past, GoalObjective(goal))
    res_goal = SamplerProposer(ActionSpace(True, 5), CEMConfig(128, 12, 5, 0.1)).propose(
        score_goal, 6, torch.Generator().manual_seed(1))
    assert res_goal.score == 0.0
    acts = rollout_actions(past, res_goal.best[None])
    assert acts.shape == (1, 2 + 6, 5) and acts[0, -1].abs().sum() == 0
    final = model.rollout(context[None], acts, 6).latents[0, -1]
    assert final.tolist() == [4.0, 2.0]


def test_mpc_planner_beats_random_on_tiny_known_dynamics() -> None:
    model, space = toy.GridModel(target=(6, 6)), ActionSpace(True, 5)
    planner = MPCController(model, SamplerProposer(space, CEMConfig(64, 8, 3, 0.1)), ReturnObjective, 5,
                            horizon=6, replan_every=2, context_frames=2, seed=0)
    planned = [run_episode(toy.GridEnv(steps=12), planner, 50)["return"] for _ in range(2)]
    gen = torch.Generator().manual_seed(0)
    random_ = [run_episode(toy.GridEnv(steps=12), None, 50, lambda: int(torch.randint(5, (1,), generator=gen)))
               ["return"] for _ in range(4)]
    # optimal: distance 10 -> -(9 + ... + 0) - 0 * 2 = -45; random walks stay far away
    assert min(planned) >= -47 and max(random_) < -70
    assert planner.plans_made == 2 * 6  # 12 steps, a new plan every 2


def test_random_proposer_and_objective_errors() -> None:
    space = ActionSpace(True, 3)
    plan = RandomProposer(space).propose(lambda c: torch.zeros(len(c)), 4, torch.Generator().manual_seed(0))
    assert plan.best.shape == (4, 3) and torch.equal(plan.best.sum(-1), torch.ones(4))
    cont = ActionSpace(False, 2, low=-2, high=2).random(100, 3, torch.Generator())
    assert cont.shape == (100, 3, 2) and cont.min() >= -2 and cont.max() <= 2
    from pipeline.models.protocol import Rollout

    with pytest.raises(ValueError, match="predicts rewards"):
        ReturnObjective()(Rollout(latents=torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match="does not match"):
        GoalObjective(torch.zeros(5))(Rollout(latents=torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match="past actions"):
        make_score_fn(toy.GridModel(), torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.zeros(1, 5), ReturnObjective())
    value = ReturnObjective(discount=0.5, value_fn=lambda z: z.sum(-1))
    r = Rollout(latents=torch.ones(1, 2, 3), rewards=torch.tensor([[1.0, 2.0]]))
    assert value(r).item() == pytest.approx(1 + 0.5 * 2 + 0.25 * 3)
