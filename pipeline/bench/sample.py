"""`wm bench sample`: generated frames per second of a video diffusion model at a number of sampler steps.

    wm bench sample --config configs/diffusion/tiny.yaml --steps 3 --frames 8 --json runs/bench/sample.json
    wm bench sample --ckpt runs/diffusion_tiny/version_0/checkpoints/last.ckpt --steps 3 --frames 16 --json out.json

Times `rollout` (the EMA network, autoregressive in chunks past the training window) from seeded random
context clips with the Euler and the Heun sampler at `--steps`, and, in the same run on the same inputs,
the baseline: EDM's reference deterministic sampler (Heun, 18 steps, 35 network evaluations). The network
evaluations are counted, not assumed. The model comes from `--config` (model section; overrides as
`--model.init_args.KEY VALUE`) or from a checkpoint (`--ckpt`, read with weights_only=True), or both
(config builds, checkpoint fills the weights).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline.bench import write_json
from pipeline.models.base import WorldModelModule

SAMPLERS = ("euler", "heun")


def build_model(configs: list[str], overrides: list[str], ckpt: Path | None) -> WorldModelModule:
    """The model section of the merged configs (validated like LightningCLI: unknown keys fail), or the checkpoint's."""
    from pipeline.bench.train import deep_merge, set_dotted

    if not configs:
        if ckpt is None:
            raise SystemExit("wm bench sample: give --config and/or --ckpt")
        from pipeline.models.loading import load_world_model

        return load_world_model(ckpt)
    cfg: dict[str, Any] = {}
    for path in configs:
        cfg = deep_merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
    if len(overrides) % 2 or any(not k.startswith("--model.") for k in overrides[::2]):
        raise SystemExit(f"wm bench sample: overrides come as '--model.init_args.KEY VALUE' pairs, got {overrides}")
    for key, value in zip(overrides[::2], overrides[1::2], strict=True):
        set_dotted(cfg, key[2:], yaml.safe_load(value))
    if "model" not in cfg:
        raise SystemExit("wm bench sample: no `model:` in the given configs")
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(WorldModelModule, "model", required=True)
    model = parser.instantiate_classes(parser.parse_object({"model": cfg["model"]})).model
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"], strict=True)
    return model.eval()


def synthetic_context(model: WorldModelModule, batch: int, frames: int, seed: int) -> tuple[torch.Tensor, Any]:
    """Seeded uint8 context [B, Tc, C, H, W] and one-hot actions [B, Tc + frames, A] (or None)."""
    hp = model.hparams
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, model.context_frames, hp.channels, hp.resolution, hp.resolution)
    context = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    actions = None
    if hp.get("action_dim", 0):
        idx = torch.randint(0, hp.action_dim, (batch, model.context_frames + frames), generator=gen)
        actions = torch.nn.functional.one_hot(idx, hp.action_dim).float()
    return context, actions


def time_sampler(
    model: WorldModelModule, context: torch.Tensor, actions: Any, frames: int, sampler: str, steps: int, repeats: int
) -> dict[str, Any]:
    """Frames/s of `repeats` rollouts of `frames` frames (after one untimed rollout), with counted network calls."""
    hp = model.hparams
    saved = hp.sampler, hp.sampling_steps
    hp.sampler, hp.sampling_steps = sampler, steps
    calls = [0]
    hook = model.ema_net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    cuda = context.is_cuda
    try:
        model.rollout(context, actions, frames)  # warmup (allocator, kernels)
        calls[0] = 0
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            out = model.rollout(context, actions, frames).frames
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    finally:
        hook.remove()
        hp.sampler, hp.sampling_steps = saved
    if not torch.isfinite(out).all():
        raise RuntimeError(f"{sampler} with {steps} steps produced non-finite frames")
    generated = context.shape[0] * frames * repeats
    return {
        "sampler": sampler, "steps": steps, "network_calls_per_rollout": calls[0] // repeats,
        "seconds": elapsed, "frames_generated": generated, "frames_per_s": generated / elapsed,
    }  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wm bench sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=[], help="LightningCLI YAML with a model (repeatable)")
    parser.add_argument("--ckpt", type=Path, default=None, help="Lightning checkpoint of the model")
    parser.add_argument("--json", required=True, type=Path, help="where to write the results")
    parser.add_argument("--steps", type=int, default=3, help="sampler steps of the measured samplers")
    parser.add_argument("--frames", type=int, default=8, help="frames generated per rollout (after the context)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per rollout")
    parser.add_argument("--repeats", type=int, default=2, help="timed rollouts per sampler")
    parser.add_argument("--baseline-steps", type=int, default=18, help="steps of the Heun baseline (EDM: 18)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32", help="bf16 autocast on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args(argv)
    if min(args.steps, args.frames, args.batch_size, args.repeats, args.baseline_steps) < 1:
        raise SystemExit("wm bench sample: --steps, --frames, --batch-size, --repeats, --baseline-steps must be >= 1")
    model = build_model(args.config, overrides, args.ckpt).to(args.device)
    if not hasattr(model, "ema_net") or "sampler" not in model.hparams:
        raise SystemExit(f"wm bench sample: {type(model).__name__} is not a diffusion model (no sampler)")
    context, actions = synthetic_context(model, args.batch_size, args.frames, args.seed)
    context = context.to(args.device)
    actions = actions.to(args.device) if actions is not None else None
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if args.precision == "bf16" and args.device.startswith("cuda")
        else contextlib.nullcontext()
    )
    with autocast:
        runs = [time_sampler(model, context, actions, args.frames, s, args.steps, args.repeats) for s in SAMPLERS]
        baseline = time_sampler(model, context, actions, args.frames, "heun", args.baseline_steps, args.repeats)
    for r in runs:
        r["speedup_vs_baseline"] = r["frames_per_s"] / baseline["frames_per_s"]
    hp = model.hparams
    result = {
        "model": type(model).__name__, "configs": args.config, "overrides": overrides,
        "ckpt": str(args.ckpt) if args.ckpt else None, "device": args.device, "precision": args.precision,
        "batch_size": args.batch_size, "frames": args.frames, "context_frames": model.context_frames,
        "window": hp.frames, "resolution": hp.resolution, "objective": hp.objective,
        "guidance_scale": hp.guidance_scale, "results": runs,
        "baseline": {**baseline, "what": f"Heun, {args.baseline_steps} steps (EDM's reference sampler: 18)"},
        "torch": torch.__version__,
    }  # fmt: skip
    if args.device.startswith("cuda"):
        result["device_name"] = torch.cuda.get_device_name(torch.device(args.device))
    write_json(args.json, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
