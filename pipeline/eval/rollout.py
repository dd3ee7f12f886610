"""Per-horizon evaluation of any WorldModel on a fixed set of clips, and the eval.json it writes.

Used by `wm eval`, by the PerHorizonEval callback during training, and by `wm demo` (`evaluate`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.eval.features import Extractors, build_extractors
from pipeline.eval.i3d import MIN_FRAMES
from pipeline.eval.metrics import FVD_PAD_RULE, HorizonMetrics
from pipeline.models.protocol import to_unit

DEFAULT_HORIZONS = (1, 2, 4, 8, 16)
FORMAT = "wm-eval/1"


@dataclass
class EvalClips:
    """The fixed evaluation set: video uint8 [N, T, C, H, W], actions float [N, T, A] or None."""

    video: Tensor
    actions: Tensor | None


def collect_clips(batches: Iterable[dict[str, Any]], samples: int, frames: int) -> EvalClips:
    """The first `samples` clips of `batches` (stream order), each cut to its first `frames` frames."""
    videos, actions = [], []
    for batch in batches:
        video = batch["video"]
        if video.shape[1] < frames:
            raise ValueError(f"clips have {video.shape[1]} frames but evaluation needs context + max horizon = "
                             f"{frames}: set the data module's `frames` to at least {frames}")
        take = min(samples - sum(v.shape[0] for v in videos), video.shape[0])
        videos.append(video[:take, :frames].cpu())
        if batch.get("actions") is not None:
            actions.append(batch["actions"][:take, :frames].cpu())
        if sum(v.shape[0] for v in videos) >= samples:
            break
    if not videos:
        raise ValueError("the evaluation data yielded no clips")
    acts = torch.cat(actions) if actions and len(actions) == len(videos) else None
    return EvalClips(torch.cat(videos), acts)


def model_device(model: nn.Module) -> torch.device:
    """The device a model runs on (LightningModule.device, else its first parameter, else CPU)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(iter(model.parameters()), torch.empty(0)).device


@torch.no_grad()
def run_horizons(model: nn.Module, clips: EvalClips, horizons: Sequence[int], context: int, ex: Extractors,
                 seed: int = 0, batch_size: int = 8, keep: int = 4) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Roll out from the context for each horizon; returns ({"metrics", "absent"}, sample strips).

    Every rollout runs under a forked RNG seeded from (seed, batch, horizon): stochastic models give
    the same numbers on a rerun, and the caller's RNG stream (e.g. training) is left untouched.
    """
    device, max_h = model_device(model), max(horizons)
    metrics = {h: HorizonMetrics(ex).to(device) for h in horizons}
    strips: dict[str, np.ndarray] = {}
    forked = [device.index or 0] if device.type == "cuda" else []
    for start in range(0, clips.video.shape[0], batch_size):
        video = clips.video[start : start + batch_size].to(device)
        acts = clips.actions[start : start + batch_size].to(device) if clips.actions is not None else None
        ctx_u8, ctx = video[:, :context], to_unit(video[:, :context])
        for h in horizons:
            truth_u8 = video[:, context : context + h]
            with torch.random.fork_rng(devices=forked):
                torch.manual_seed(seed * 1_000_003 + start * 1_009 + h)
                out = model.rollout(ctx_u8, acts[:, : context + h] if acts is not None else None, h, future=truth_u8)
            if out.horizon != h:
                raise ValueError(f"rollout(horizon={h}) returned {out.horizon} steps")
            metrics[h].update(out, ctx, to_unit(truth_u8))
            if h == max_h and not strips and out.frames is not None:
                n = min(keep, video.shape[0])
                strips = {"context": ctx_u8[:n], "truth": truth_u8[:n],
                          "prediction": (out.frames[:n].float().clamp(0, 1) * 255).round().to(torch.uint8)}
                strips = {k: v.cpu().numpy() for k, v in strips.items()}
    absent: dict[str, str] = {}
    per_h = {str(h): metrics[h].compute(absent) for h in horizons}
    return {"metrics": per_h, "absent": absent}, strips


def manifest_digest(data: Any) -> str:
    """The data's manifest hash (pipeline.data.manifest.manifest_hash), or "absent" with the reason."""
    directory = data if isinstance(data, (str, Path)) else getattr(data, "val_shards", None)
    if directory is None or not Path(directory).is_dir():
        return "absent (evaluation data is not a shard directory)"
    try:
        from pipeline.data.manifest import manifest_hash

        return manifest_hash(directory)
    except ImportError:  # older checkouts: hash the manifest file's bytes
        path = Path(directory) / "manifest.json"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent (no manifest.json)"
    except (OSError, ValueError) as err:
        return f"absent ({err})"


def clip_rule(context: int, horizons: Sequence[int], spec: dict[str, Any]) -> str:
    """The exact rule that turns data into (context, truth) pairs; runs are comparable only if equal."""
    spec_text = ", ".join(f"{k}={spec[k]}" for k in sorted(spec))
    return (f"first {context + max(horizons)} frames of each clip ({spec_text}); frames [0, {context}) are the "
            f"context, frame {context} + h - 1 the truth at horizon h; the first N clips in stream order")


def build_record(result: dict[str, Any], *, model: nn.Module, checkpoint: Any, data: Any, horizons: Sequence[int],
                 context: int, samples: int, seed: int, ex: Extractors, spec: dict[str, Any]) -> dict[str, Any]:
    """eval.json content: every field ARCHITECTURE.md lists, plus the per-horizon metrics."""
    count = int(result["metrics"][str(horizons[0])]["count"])
    return {
        "format": FORMAT,
        "checkpoint": checkpoint,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "data": str(data) if isinstance(data, (str, Path)) else type(data).__name__,
        "data_manifest_hash": manifest_digest(data),
        "horizons": list(horizons),
        "context_frames": context,
        "samples": count,
        "samples_requested": samples,
        "seed": seed,
        "clip_rule": clip_rule(context, horizons, spec),
        "fvd_clip_rule": FVD_PAD_RULE,
        "fvd_input_frames": {str(h): max(MIN_FRAMES, context + h) for h in horizons},
        "features": ex.info,
        "metrics": result["metrics"],
        "absent": result["absent"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_eval(record: dict[str, Any], strips: dict[str, np.ndarray], out: str | Path) -> Path:
    """Write eval.json and, next to it, the sample frames as samples.npz (plain uint8 arrays, no pickles)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if strips:
        np.savez_compressed(out.with_name(out.stem + ".samples.npz"), **strips)
        record = {**record, "samples_file": out.stem + ".samples.npz"}
    out.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return out


def evaluate(model: nn.Module, data: Any, horizons: Sequence[int] = DEFAULT_HORIZONS, context: int | None = None,
             samples: int = 64, seed: int = 0, batch_size: int = 8, resolution: int = 64,
             out: str | Path | None = None, checkpoint: Any = None, extractors: Extractors | None = None,
             **extractor_args: Any) -> dict[str, Any]:
    """Evaluate `model` per horizon on `data` and return the eval.json record (written to `out` if given).

    data: a shard directory (read with ShardDataModule at `resolution`), a LightningDataModule (its
    val_dataloader) or any iterable of batches {"video": uint8 [B, T, C, H, W], "actions"?: [B, T, A]}.
    extractor_args go to build_extractors (i3d_weights, lpips_net, random_weights, fvd, lpips).
    """
    horizons = sorted({int(h) for h in horizons})
    if not horizons or horizons[0] < 1:
        raise ValueError(f"horizons must be positive integers, got {horizons}")
    context = int(context or getattr(model, "context_frames", 1))
    frames = context + horizons[-1]
    batches, spec = _batches(data, frames, samples, seed, batch_size, resolution)
    clips = collect_clips(batches, samples, frames)
    spec.setdefault("resolution", int(clips.video.shape[-1]))
    ex = extractors or build_extractors(device=model_device(model), **extractor_args)
    was_training = model.training
    model.eval()
    try:
        result, strips = run_horizons(model, clips, horizons, context, ex, seed=seed, batch_size=batch_size)
    finally:
        model.train(was_training)
    record = build_record(result, model=model, checkpoint=checkpoint, data=data, horizons=horizons, context=context,
                          samples=samples, seed=seed, ex=ex, spec=spec)
    if out is not None:
        write_eval(record, strips, out)
    return record


def _batches(data: Any, frames: int, samples: int, seed: int, batch_size: int,
             resolution: int) -> tuple[Iterable[dict[str, Any]], dict[str, Any]]:
    """Batches and the data spec recorded in the clip rule."""
    if isinstance(data, (str, Path)):
        from pipeline.data.datamodule import ShardDataModule

        data = ShardDataModule(val_shards=str(data), frames=frames, resolution=resolution, val_batch_size=batch_size,
                               num_workers=0, val_samples=samples, seed=seed)
    if hasattr(data, "val_dataloader"):
        hp = dict(getattr(data, "hparams", {}))
        spec = {k: hp[k] for k in ("frame_stride", "fps", "resolution", "seed") if hp.get(k) is not None}
        return data.val_dataloader(), spec
    return data, {"source": "in-memory batches"}
