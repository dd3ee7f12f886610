"""`wm bench frechet`: Fréchet distance by symmetric eigendecompositions vs scipy.linalg.sqrtm, same run."""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import torch

from pipeline.bench import write_json
from pipeline.eval.fvd import frechet_distance, stats_from_sums


def scipy_frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """The common reference implementation: sqrtm of the non-symmetric product."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def _time(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    value, times = fn(), []  # first call warms up (BLAS threads, allocations)
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, times


def run(dim: int, samples: int, repeats: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(samples, dim, generator=g, dtype=torch.float64)
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    f2 = torch.randn(samples, dim, generator=g, dtype=torch.float64) @ mix + 0.1
    (mu1, c1), (mu2, c2) = (stats_from_sums(f.sum(0), f.T @ f, samples) for f in (f1, f2))
    ours, t_ours = _time(lambda: float(frechet_distance(mu1, c1, mu2, c2)), repeats)
    np_args = [x.numpy() for x in (mu1, c1, mu2, c2)]
    ref, t_ref = _time(lambda: scipy_frechet(*np_args), repeats)
    med_ours, med_ref = float(np.median(t_ours)), float(np.median(t_ref))
    return {
        "benchmark": "frechet", "dim": dim, "samples": samples, "repeats": repeats, "seed": seed,
        "ours": {"method": "eigh(S1) -> A; eigvalsh(A S2 A) clamped at 0 (torch, float64)",
                 "value": ours, "median_s": med_ours, "times_s": t_ours},
        "baseline": {"method": "scipy.linalg.sqrtm(S1 @ S2)", "value": ref, "median_s": med_ref, "times_s": t_ref},
        "relative_difference": abs(ours - ref) / abs(ref),
        "speedup": med_ref / med_ours,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "scipy": scipy.__version__,
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wm bench frechet", description=__doc__)
    p.add_argument("--dim", type=int, default=400, help="feature dimension (400 I3D logits)")
    p.add_argument("--samples", type=int, default=2048, help="feature vectors per set")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of each method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="where to write the result")
    args = p.parse_args(argv)
    result = run(args.dim, args.samples, args.repeats, args.seed)
    write_json(args.json, result)
    print(f"dim {args.dim}: ours {result['ours']['median_s'] * 1e3:.1f} ms, scipy sqrtm "
          f"{result['baseline']['median_s'] * 1e3:.1f} ms (x{result['speedup']:.1f}), "
          f"relative difference {result['relative_difference']:.2e}")
    return 0
