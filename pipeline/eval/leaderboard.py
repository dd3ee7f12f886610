"""Leaderboards from eval.json files: one row per run, one column per metric and horizon, plots, sample strips.

Runs are ranked only when they were evaluated the same way: same sample count (FVD is biased by it),
same clip rule, same FVD padding rule and the same feature-extractor weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

HIGHER_IS_BETTER = {"psnr", "ssim"}
METRIC_ORDER = ("fvd", "lpips", "psnr", "ssim", "latent_l1", "latent_cos_err")


class IncomparableRuns(ValueError):
    """Runs evaluated with different sample counts, clip rules or feature weights."""


def load_eval(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or not str(record.get("format", "")).startswith("wm-eval/"):
        raise ValueError(f"{path} is not an eval.json written by `wm eval` (no 'format': 'wm-eval/...')")
    return record


def comparability(record: dict[str, Any]) -> dict[str, str]:
    """The fields that must be equal across runs on one leaderboard."""
    feats = record.get("features", {})
    return {
        "data manifest": str(record.get("data_manifest_hash")),
        "samples": str(record.get("samples")),
        "clip_rule": str(record.get("clip_rule")),
        "fvd_clip_rule": str(record.get("fvd_clip_rule")),
        "i3d weights": str(feats.get("i3d", {}).get("sha256")),
        "lpips weights": f"{feats.get('lpips', {}).get('net')}:{feats.get('lpips', {}).get('sha256')}",
    }


def check_comparable(names: list[str], records: list[dict[str, Any]]) -> dict[str, str]:
    """The shared comparability fields; IncomparableRuns naming each differing field and run otherwise."""
    keys = [comparability(r) for r in records]
    problems = []
    for field in keys[0]:
        values = {k[field] for k in keys}
        if len(values) > 1:
            per_run = "; ".join(f"{n}: {k[field]}" for n, k in zip(names, keys, strict=True))
            problems.append(f"- {field} differs ({per_run})")
    if problems:
        raise IncomparableRuns("refusing to rank runs evaluated differently; re-run `wm eval` with the same "
                               "--samples, --horizons/--context, data and weights:\n" + "\n".join(problems))
    return keys[0]


def _base(metric: str) -> str:
    return metric.removesuffix("_random_weights")


def columns(records: list[dict[str, Any]]) -> list[str]:
    """`metric@h` for every metric any run has, in a fixed metric order, then by horizon."""
    found: set[tuple[str, int]] = set()
    for r in records:
        for h, values in r["metrics"].items():
            found.update((m, int(h)) for m in values if m != "count")
        for m in r.get("absent", {}):
            found.update((m, int(h)) for h in r["metrics"])
    order = {m: i for i, m in enumerate(METRIC_ORDER)}
    ranked = sorted(found, key=lambda mh: (order.get(_base(mh[0]), 99), mh[0], mh[1]))
    return [f"{m}@{h}" for m, h in ranked]


def cell(record: dict[str, Any], column: str) -> float | str:
    """A number, or "absent" when the run recorded the metric as absent, or "-" when not evaluated."""
    metric, h = column.rsplit("@", 1)
    value = record["metrics"].get(h, {}).get(metric)
    if value is not None:
        return float(value)
    return "absent" if metric in record.get("absent", {}) else "-"


def default_rank_by(cols: list[str], records: list[dict[str, Any]]) -> str:
    """The first metric in METRIC_ORDER that some run has a number for, at the longest horizon."""
    numeric = [c for c in cols if any(isinstance(cell(r, c), float) for r in records)] or cols
    for metric in METRIC_ORDER:
        candidates = [c for c in numeric if c.split("@")[0] == metric]
        if candidates:
            return max(candidates, key=lambda c: int(c.split("@")[1]))
    return numeric[0]


def rank(names: list[str], records: list[dict[str, Any]], rank_by: str) -> list[int]:
    """Row order: best first by `rank_by`; runs without a number go last."""
    higher = _base(rank_by.split("@")[0]) in HIGHER_IS_BETTER

    def key(i: int) -> tuple[int, float]:
        value = cell(records[i], rank_by)
        if not isinstance(value, float):
            return (1, 0.0)
        return (0, -value if higher else value)

    return sorted(range(len(records)), key=key)


def strip_frames(strips: dict[str, np.ndarray]) -> np.ndarray:
    """context | truth | prediction side by side, clips stacked: uint8 [T, C, H_total, W_total].

    strips: context [N, Tc, C, H, W], truth / prediction [N, Hz, C, H, W] uint8; T = Tc + Hz.
    """
    ctx, truth, pred = strips["context"], strips["truth"], strips["prediction"]
    tc, hz = ctx.shape[1], truth.shape[1]
    frames = []
    for t in range(tc + hz):
        left = ctx[:, min(t, tc - 1)]
        mid = ctx[:, t] if t < tc else truth[:, t - tc]
        right = ctx[:, t] if t < tc else pred[:, t - tc]
        gap = np.full_like(left[..., :2], 255)
        row = np.concatenate([left, gap, mid, gap, right], axis=-1)  # [N, C, H, W3]
        frames.append(np.concatenate(list(row), axis=-2))  # clips stacked vertically
    return np.stack(frames)


def write_gif(frames: np.ndarray, path: Path, fps: int = 4) -> None:
    """frames uint8 [T, C, H, W] -> animated GIF."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f.transpose(1, 2, 0)).squeeze()) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def write_leaderboard(paths: list[str | Path], out: str | Path, rank_by: str | None = None) -> dict[str, Any]:
    """leaderboard.md/.json, plots and sample strips into `out` (see pipeline.eval.board_command)."""
    from pipeline.eval.board_command import write_leaderboard as write

    return write(paths, out, rank_by)
