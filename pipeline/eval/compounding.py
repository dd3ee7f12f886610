"""Compounding error: fit a per-step error rate e to a per-horizon error curve, err(t) ~ 1 - (1 - e)^t.

The model: each predicted step independently goes wrong with probability e, and a wrong step stays
wrong, so the chance that a rollout is still right after t steps is (1 - e)^t. To compare a metric
with it, the metric is first normalised to an error in [0, 1] (0 = perfect, 1 = useless):

  lpips, latent_cos_err:  the value, clipped to [0, 1]
  ssim:                   1 - ssim, clipped to [0, 1]
  psnr:                   RMSE = 10^(-psnr / 20) (frames in [0, 1], so RMSE is in [0, 1])
  fvd, latent_l1:         value / worst, with `worst` given by the user (these have no natural bound)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

STEPS = (1, 5, 10, 20, 50, 100)
NATURAL = ("lpips", "lpips_random_weights", "latent_cos_err", "ssim", "psnr")


def normalised_error(metric: str, values: np.ndarray, worst: float | None = None) -> np.ndarray:
    """Metric values -> errors in [0, 1] (see the module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    if metric in ("lpips", "lpips_random_weights", "latent_cos_err"):
        err = values
    elif metric == "ssim":
        err = 1.0 - values
    elif metric == "psnr":
        err = 10.0 ** (-values / 20.0)
    else:
        if not worst or worst <= 0:
            raise ValueError(f"{metric} has no natural upper bound: give --worst (the value that counts as error 1)")
        err = values / worst
    return np.clip(err, 0.0, 1.0)


def compounding_curve(e: float, steps: np.ndarray | Sequence[int]) -> np.ndarray:
    """1 - (1 - e)^t."""
    return 1.0 - (1.0 - e) ** np.asarray(steps, dtype=np.float64)


@dataclass
class CompoundingFit:
    """A fitted per-step error rate and how well the compounding model explains the curve."""

    e: float
    r2: float | None  # None with fewer than 2 horizons or a flat curve
    rmse: float
    horizons: list[int]
    errors: list[float]

    def safe_horizon(self, acceptable: float) -> int | None:
        """Largest t with 1 - (1 - e)^t <= acceptable; None when unbounded (e == 0)."""
        if not 0.0 < acceptable < 1.0:
            raise ValueError(f"acceptable error must be in (0, 1), got {acceptable}")
        if self.e <= 0.0:
            return None
        if self.e >= 1.0:
            return 0
        return int(math.floor(math.log(1.0 - acceptable) / math.log(1.0 - self.e) + 1e-9))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fit_compounding(horizons: Sequence[int], errors: Sequence[float]) -> CompoundingFit:
    """Least-squares e in [0, 1] of err(t) = 1 - (1 - e)^t; errors must already be in [0, 1]."""
    t = np.asarray(horizons, dtype=np.float64)
    y = np.clip(np.asarray(errors, dtype=np.float64), 0.0, 1.0)
    if t.size == 0 or t.shape != y.shape or (t < 1).any():
        raise ValueError("need one error per horizon, horizons >= 1")

    def sse(e: float) -> float:
        return float(((y - compounding_curve(e, t)) ** 2).sum())

    best = minimize_scalar(sse, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-12})
    e = float(best.x)
    resid = y - compounding_curve(e, t)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if t.size >= 2 and ss_tot > 0 else None
    return CompoundingFit(e=e, r2=r2, rmse=float(np.sqrt((resid**2).mean())), horizons=[int(h) for h in t],
                          errors=[float(v) for v in y])


def error_curve(record: dict[str, Any], metric: str, worst: float | None = None) -> tuple[list[int], list[float]]:
    """(horizons, normalised errors) of one eval.json record for `metric`."""
    points = [(int(h), v[metric]) for h, v in record["metrics"].items() if v.get(metric) is not None]
    if not points:
        reason = record.get("absent", {}).get(metric, "not in this eval.json")
        raise ValueError(f"metric {metric!r} has no values ({reason})")
    points.sort()
    hs = [h for h, _ in points]
    return hs, [float(x) for x in normalised_error(metric, np.array([v for _, v in points]), worst)]


def default_metric(record: dict[str, Any]) -> str:
    """The first of lpips, latent_cos_err, ssim, psnr that the record has numbers for."""
    have = {m for v in record["metrics"].values() for m in v}
    for metric in NATURAL:
        if metric in have:
            return metric
    raise ValueError("no metric with a natural [0, 1] error in this eval.json; pass --metric and --worst")


def step_table(fits: dict[str, CompoundingFit], steps: Sequence[int] = STEPS) -> list[dict[str, Any]]:
    """Rows per step: predicted error of each fit, and the measured error where that horizon was evaluated."""
    rows = []
    for t in steps:
        row: dict[str, Any] = {"step": t}
        for name, fit in fits.items():
            row[f"{name} fit"] = float(compounding_curve(fit.e, [t])[0])
            measured = dict(zip(fit.horizons, fit.errors, strict=True)).get(t)
            row[f"{name} measured"] = measured
        rows.append(row)
    return rows
