"""`wm analyze compounding EVAL_JSON`: per-step error rate, fit quality, safe horizon, ensemble effect."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.eval.compounding import (
    STEPS,
    CompoundingFit,
    compounding_curve,
    default_metric,
    error_curve,
    fit_compounding,
    step_table,
)
from pipeline.eval.leaderboard import load_eval


def analyze(eval_path: str | Path, metric: str | None = None, acceptable: float = 0.1,
            ensembles: list[str | Path] | None = None, worst: float | None = None,
            out: str | Path | None = None) -> dict[str, Any]:
    """Fit the model's (and each ensemble's) per-step error; write compounding.json/.md/.png into `out`."""
    record = load_eval(eval_path)
    metric = metric or default_metric(record)
    fits: dict[str, CompoundingFit] = {"model": fit_compounding(*error_curve(record, metric, worst))}
    for i, path in enumerate(ensembles or []):
        ens = load_eval(path)
        if ens.get("samples") != record.get("samples") or ens.get("clip_rule") != record.get("clip_rule"):
            raise ValueError(f"{path} was evaluated differently (samples or clip rule) from {eval_path}: "
                             "evaluate the ensemble with the same `wm eval` options")
        k = len(ens.get("checkpoint", {}).get("ensemble", [])) if isinstance(ens.get("checkpoint"), dict) else 0
        fits[f"ensemble{i + 1}" + (f" (K={k})" if k else "")] = fit_compounding(*error_curve(ens, metric, worst))
    result = {
        "eval": str(eval_path), "metric": metric, "acceptable": acceptable,
        "normalisation": "see pipeline.eval.compounding: lpips/latent_cos_err as is, 1-ssim, RMSE=10^(-psnr/20), "
                         "fvd/latent_l1 divided by --worst",
        "fits": {n: {**f.to_json(), "safe_horizon": f.safe_horizon(acceptable)} for n, f in fits.items()},
        "table": step_table(fits),
    }
    if len(fits) > 1:
        base = fits["model"].e
        result["ensemble_effect"] = {n: {"e": f.e, "e_ratio": f.e / base if base > 0 else None}
                                     for n, f in fits.items() if n != "model"}
    out = Path(out) if out else Path(eval_path).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "compounding.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "compounding.md").write_text(markdown(result))
    plot(fits, metric, out / "compounding.png")
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Compounding error ({result['metric']}, acceptable error {result['acceptable']})", "",
             "| run | e (per step) | R^2 | RMSE | safe horizon |", "|---|---|---|---|---|"]
    for name, f in result["fits"].items():
        r2 = "n/a" if f["r2"] is None else f"{f['r2']:.4f}"
        lines.append(f"| {name} | {f['e']:.5f} | {r2} | {f['rmse']:.4g} | {f['safe_horizon']} |")
    cols = [c for c in result["table"][0] if c != "step"]
    lines += ["", "| step | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in result["table"]:
        cells = ["-" if row[c] is None else f"{row[c]:.4f}" for c in cols]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(fits: dict[str, CompoundingFit], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(1, max(STEPS) + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, fit in fits.items():
        (line,) = ax.plot(t, compounding_curve(fit.e, t), label=f"{name}: e={fit.e:.4f}")
        ax.scatter(fit.horizons, fit.errors, color=line.get_color(), zorder=3)
    ax.set(xscale="log", xlabel="step t", ylabel=f"normalised {metric} error", ylim=(0, 1.02),
           title="1 - (1 - e)^t fit")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wm analyze", description=__doc__)
    sub = p.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("compounding", help="fit 1-(1-e)^t to the per-horizon error of an eval.json")
    c.add_argument("eval", help="eval.json of the model")
    c.add_argument("--metric", default=None, help="metric (default: lpips, else latent_cos_err, ssim, psnr)")
    c.add_argument("--acceptable", type=float, default=0.1, help="acceptable normalised error for the safe horizon")
    c.add_argument("--ensemble", nargs="+", default=[], help="eval.json of ensembles (`wm eval --ckpt A --ckpt B`)")
    c.add_argument("--worst", type=float, default=None, help="value counted as error 1 (needed for fvd, latent_l1)")
    c.add_argument("--out", default=None, help="output directory (default: next to EVAL)")
    args = p.parse_args(argv)
    try:
        result = analyze(args.eval, args.metric, args.acceptable, args.ensemble, args.worst, args.out)
    except (OSError, ValueError) as err:
        print(f"wm analyze compounding: {err}", file=sys.stderr)
        return 1
    print(markdown(result))
    return 0
