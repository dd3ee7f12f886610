"""`wm bench KIND ...`: benchmarks that write JSON, each with its baseline measured in the same run."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

KINDS: dict[str, tuple[str, str]] = {
    "data": ("pipeline.bench.data", "stream clips/s vs the raw decoder and a naive PyAV baseline"),
    "train": ("pipeline.bench.train", "training steps/s, clips/s, FLOPs per clip, MFU and peak memory on GPU"),
    "profile": ("pipeline.bench.profile", "one training step's time by kernel category (matmul, attention, ...)"),
    "suite": ("pipeline.bench.suite", "the GPU performance check in one run (--dry: its CPU dry run)"),
    "sample": ("pipeline.bench.sample", "diffusion sampling: generated frames/s at a number of steps"),
    "frechet": ("pipeline.bench.frechet", "Frechet distance: eigendecomposition vs scipy.linalg.sqrtm"),
}


def write_json(path: str | Path, result: dict[str, Any]) -> Path:
    """Write one benchmark's result as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: wm bench KIND [ARGS...] --json OUT\n\nkinds:")
        for name, (_, text) in KINDS.items():
            print(f"  {name:<8} {text}")
        return 0
    if argv[0] not in KINDS:
        print(f"wm bench: unknown benchmark {argv[0]!r}; choose from {', '.join(KINDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(KINDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)
