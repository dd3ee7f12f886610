"""`wm leaderboard EVAL_JSON... --out DIR`: leaderboard.md/.json, a plot per metric, a sample strip per run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.eval.leaderboard import (
    IncomparableRuns,
    cell,
    check_comparable,
    columns,
    default_rank_by,
    load_eval,
    rank,
    strip_frames,
    write_gif,
)


def run_names(paths: list[Path]) -> list[str]:
    """Short unique names: the eval file's directory name, or its stem when directories repeat."""
    names = [p.parent.name or p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def _fmt(value: float | str) -> str:
    return f"{value:.4g}" if isinstance(value, float) else value


def _markdown(names: list[str], records: list[dict[str, Any]], cols: list[str], order: list[int],
              rank_by: str, shared: dict[str, str]) -> str:
    lines = [f"# Leaderboard (ranked by {rank_by})", ""]
    lines += [f"- {k}: {v}" for k, v in shared.items()]
    lines += ["", "| rank | run | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for pos, i in enumerate(order, 1):
        shown = pos if isinstance(cell(records[i], rank_by), float) else "-"  # no number: not ranked
        lines.append(f"| {shown} | {names[i]} | " + " | ".join(_fmt(cell(records[i], c)) for c in cols) + " |")
    notes = [f"- {n}: {m}: {reason}" for n, r in zip(names, records, strict=True)
             for m, reason in sorted(r.get("absent", {}).items())]
    if notes:
        lines += ["", "absent metrics (no number is shown for these, by design):", *notes]
    return "\n".join(lines) + "\n"


def _plots(names: list[str], records: list[dict[str, Any]], cols: list[str], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric in dict.fromkeys(c.split("@")[0] for c in cols):
        if not any(isinstance(cell(r, c), float) for r in records for c in cols if c.split("@")[0] == metric):
            continue  # absent for every run: the table says why
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, record in zip(names, records, strict=True):
            points = [(int(c.split("@")[1]), cell(record, c)) for c in cols if c.split("@")[0] == metric]
            points = [(h, v) for h, v in points if isinstance(v, float)]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set(xlabel="horizon (predicted frames)", ylabel=metric, title=f"{metric} vs horizon")
        ax.set_xscale("log", base=2)
        if ax.lines:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{metric}.png", dpi=100)
        plt.close(fig)
        written.append(f"{metric}.png")
    return written


def write_leaderboard(paths: list[str | Path], out: str | Path, rank_by: str | None = None) -> dict[str, Any]:
    """Write leaderboard.md, leaderboard.json, METRIC.png and RUN.gif into `out`; returns the JSON content.

    Raises IncomparableRuns when the runs were evaluated differently.
    """
    paths = [Path(p) for p in paths]
    records = [load_eval(p) for p in paths]
    names = run_names(paths)
    shared = check_comparable(names, records)
    cols = columns(records)
    rank_by = rank_by or default_rank_by(cols, records)
    if rank_by not in cols:
        raise ValueError(f"cannot rank by {rank_by!r}; columns are {', '.join(cols)}")
    order = rank(names, records, rank_by)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.md").write_text(_markdown(names, records, cols, order, rank_by, shared))
    board = {
        "rank_by": rank_by, "columns": cols, "comparable_on": shared,
        "runs": [{"rank": pos if isinstance(cell(records[i], rank_by), float) else None, "run": names[i],
                  "eval": str(paths[i]),
                  "metrics": {c: cell(records[i], c) for c in cols}} for pos, i in enumerate(order, 1)],
        "plots": _plots(names, records, cols, out),
        "samples": {},
    }
    for name, path, record in zip(names, paths, records, strict=True):
        if record.get("samples_file") and (path.parent / record["samples_file"]).is_file():
            with np.load(path.parent / record["samples_file"], allow_pickle=False) as z:
                strips = {k: z[k] for k in ("context", "truth", "prediction")}
            gif = name.replace("/", "_") + ".gif"
            write_gif(strip_frames(strips), out / gif)
            board["samples"][name] = gif
    (out / "leaderboard.json").write_text(json.dumps(board, indent=2) + "\n")
    return board


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wm leaderboard", description=__doc__)
    p.add_argument("evals", nargs="+", help="eval.json files written by `wm eval` or the PerHorizonEval callback")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--rank-by", default=None, help="column to rank by, e.g. fvd@16 (default: the first of fvd, "
                   "lpips, psnr, ... at the longest horizon)")
    args = p.parse_args(argv)
    try:
        board = write_leaderboard(args.evals, args.out, args.rank_by)
    except IncomparableRuns as err:
        print(f"wm leaderboard: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"wm leaderboard: {err}", file=sys.stderr)
        return 1
    print((Path(args.out) / "leaderboard.md").read_text())
    print(f"wrote {args.out}: leaderboard.md, leaderboard.json, {len(board['plots'])} plots, "
          f"{len(board['samples'])} sample strips")
    return 0
