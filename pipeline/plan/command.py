"""`wm plan`: plan with a learned world model, online in a real Atari game or offline toward goal frames.

Online: the planner (CEM or language-model proposals, scored by the model's predicted return) plays
N seeded episodes, and a random policy plays the same N seeds in the same run. Offline (--offline):
held-out episodes give a start and the frame k steps later as the goal; the planner's actions and
predicted final latent are compared with the recorded ones and with random plans.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.plan.cem import CEMConfig
from pipeline.plan.env import AtariEnv, AtariSettings
from pipeline.plan.episodes import goal_tasks, read_episodes
from pipeline.plan.mpc import MPCController, run_episode
from pipeline.plan.objectives import GoalObjective, ReturnObjective, embed_goal, make_score_fn
from pipeline.plan.proposers import ActionSpace, LanguageModelProposer, RandomProposer, SamplerProposer


def load_model(ckpt: str | Path, device: str = "cpu") -> torch.nn.Module:
    """Rebuild a registered world-model family from a Lightning checkpoint (pipeline.models.loading)."""
    from pipeline.models.loading import load_world_model

    return load_world_model(ckpt, map_location=device)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wm plan", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint of an action-conditioned world model")
    p.add_argument("--game", default="breakout", help="ALE game (online; overridden by --data's manifest)")
    p.add_argument("--data", help="Atari shard dir: its manifest sets game/frameskip/size; --offline reads episodes")
    p.add_argument("--offline", action="store_true", help="goal-reaching benchmark on the episodes in --data")
    p.add_argument("--episodes", type=int, default=3, help="online: seeded episodes; offline: episodes to use")
    p.add_argument("--seed", type=int, default=0, help="base seed (episode i uses seed + i)")
    p.add_argument("--max-steps", type=int, default=200, help="agent steps per online episode at most")
    p.add_argument("--noop-max", type=int, default=30, help="online: up to this many seeded no-ops start each episode")
    p.add_argument("--frameskip", type=int, default=4, help="without --data: emulator frames per step")
    p.add_argument("--horizon", type=int, default=8, help="planned steps")
    p.add_argument("--replan-every", type=int, default=1, help="MPC: execute this many actions per plan")
    p.add_argument("--population", type=int, default=64, help="CEM candidates per iteration")
    p.add_argument("--elites", type=int, default=8, help="CEM elites")
    p.add_argument("--iterations", type=int, default=3, help="CEM iterations")
    p.add_argument("--momentum", type=float, default=0.1, help="CEM momentum")
    p.add_argument("--discount", type=float, default=0.99, help="discount of the predicted-return objective")
    p.add_argument("--proposer", choices=("cem", "llm"), default="cem", help="where candidate plans come from")
    p.add_argument("--llm-url", default="http://127.0.0.1:8000", help="OpenAI-compatible server base URL")
    p.add_argument("--llm-model", default="local", help="model name sent to the server")
    p.add_argument("--llm-plans", type=int, default=8, help="plans asked per decision")
    p.add_argument("--llm-timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--goal-steps", type=int, default=4, help="offline: goal is this many steps after the start")
    p.add_argument("--starts", type=int, default=2, help="offline: start frames per episode")
    p.add_argument("--device", default="cpu", help="torch device of the model")
    p.add_argument("--json", help="write the results here as JSON")
    args = p.parse_args(argv)
    if args.offline and not args.data:
        p.error("--offline needs --data DIR (held-out Atari shards)")
    return args


def build_proposer(args: argparse.Namespace, space: ActionSpace) -> SamplerProposer | LanguageModelProposer:
    cem = SamplerProposer(space, CEMConfig(args.population, args.elites, args.iterations, args.momentum))
    if args.proposer == "cem":
        return cem
    return LanguageModelProposer(space, base_url=args.llm_url, model=args.llm_model, num_plans=args.llm_plans,
                                 timeout=args.llm_timeout, fallback=cem)


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def random_policy(n: int, seed: int) -> Callable[[], int]:
    """Uniform random action indices from a generator seeded per episode."""
    rng = torch.Generator().manual_seed(seed)
    return lambda: int(torch.randint(n, (1,), generator=rng))


def run_online(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    settings = (AtariSettings.from_dataset(args.data) if args.data
                else AtariSettings(game=args.game, frameskip=args.frameskip,
                                size=int(getattr(model.hparams, "resolution", 64))))
    env = AtariEnv(settings, seed=args.seed, noop_max=args.noop_max)
    space = ActionSpace(True, env.num_actions, env.meanings)
    proposer = build_proposer(args, space)
    planner, random_ = [], []
    for i in range(args.episodes):
        seed = args.seed + i
        controller = MPCController(model, proposer, lambda: ReturnObjective(args.discount), space.n,
                                   args.horizon, args.replan_every, model.context_frames, seed)
        # both players start from the same seeded no-op start
        planner.append(run_episode(env, controller, args.max_steps, seed=seed)["return"])
        random_.append(run_episode(env, None, args.max_steps, random_policy(space.n, seed), seed=seed)["return"])
        print(f"episode {i} (seed {seed}): planner {planner[-1]:.1f}  random {random_[-1]:.1f}", flush=True)
    out = {"mode": "online", "env": env.describe(), "noop_max": args.noop_max, "episodes": args.episodes,
           "max_steps": args.max_steps,
           "planner": {"returns": planner, **_summary(planner)}, "random": {"returns": random_, **_summary(random_)}}
    if isinstance(proposer, LanguageModelProposer):
        out["llm"] = vars(proposer.stats)
    return out


def run_offline(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    episodes, skipped = read_episodes(args.data, limit=args.episodes)
    if not episodes:
        raise SystemExit(f"wm plan: no usable episodes in {args.data} ({skipped} skipped)")
    n = AtariSettings.action_count(args.data)
    space = ActionSpace(True, n)
    proposer, rand = build_proposer(args, space), RandomProposer(space)
    gen = torch.Generator().manual_seed(args.seed)
    Tc, k = model.context_frames, args.goal_steps
    rows: dict[str, list[float]] = {k_: [] for k_ in ("plan_first", "random_first", "plan_all", "random_all",
                                                      "plan_l1", "random_l1", "recorded_l1")}
    for ep in episodes:
        for t0 in goal_tasks(ep, Tc, k, args.starts):
            onehot = torch.eye(n)[ep.actions]
            objective = GoalObjective(embed_goal(model, ep.frames[t0 + k: t0 + k + 1]))
            score = make_score_fn(model, ep.frames[t0 - Tc + 1: t0 + 1], onehot[t0 - Tc + 1: t0], objective)
            recorded = ep.actions[t0: t0 + k]
            plan = proposer.propose(score, k, gen).best
            guess = rand.propose(score, k, gen).best
            for name, cand in (("plan", plan), ("random", guess)):
                acts = cand.argmax(-1)
                rows[f"{name}_first"].append(float(acts[0] == recorded[0]))
                rows[f"{name}_all"].append(float((acts == recorded).float().mean()))
                rows[f"{name}_l1"].append(-float(score(cand[None])[0]))
            rows["recorded_l1"].append(-float(score(onehot[t0: t0 + k][None])[0]))
    if not rows["plan_l1"]:
        raise SystemExit(f"wm plan: episodes in {args.data} are too short for {Tc} context + {k} goal steps")
    means = {name: statistics.fmean(v) for name, v in rows.items()}
    return {"mode": "offline", "data": str(args.data), "episodes": len(episodes), "skipped": skipped,
            "tasks": len(rows["plan_l1"]), "goal_steps": k, "context_frames": Tc,
            "planner": {"first_action_acc": means["plan_first"], "action_acc": means["plan_all"],
                        "final_latent_l1": means["plan_l1"]},
            "random": {"first_action_acc": means["random_first"], "action_acc": means["random_all"],
                       "final_latent_l1": means["random_l1"]},
            "recorded": {"final_latent_l1": means["recorded_l1"]}}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        model = load_model(args.ckpt, args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"wm plan: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    result = run_offline(args, model) if args.offline else run_online(args, model)
    result.update({"ckpt": str(args.ckpt), "seed": args.seed, "horizon": args.horizon if not args.offline
                   else args.goal_steps, "proposer": args.proposer, "seconds": time.perf_counter() - start})
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0
