"""`wm bench suite`: the GPU performance check in one run, or its CPU dry run with the tiny configs.

    wm bench suite --out launch/gpu_figures            # on a GPU machine (about 8 minutes on one H200)
    wm bench suite --dry --out runs/bench/suite        # the same steps on the CPU, tiny models, a few steps each

Each step is one `wm bench` command in its own process (a failure or an OOM in one does not stop the others;
its error is recorded), writing its JSON into OUT; `suite.json` collects every result and the time each took.
The steps: V-JEPA ViT-L/16 and DiT-L training, eager and compiled (MFU against the datasheet peak and a
measured matmul ceiling), a kernel-category profile of each, FSDP2 against DeepSpeed ZeRO-2 and ZeRO-3 on the
tiny V-JEPA over every visible GPU, DiT-L sampling frames/s, and the largest ViT-L/16 batch that fits. The
whole suite takes longer than one 10-minute command: `--only` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.bench import write_json

ONE_GPU = ["--config", "configs/trainer/ddp.yaml", "--trainer.devices", "1"]
GPU = {
    "vjepa": [*ONE_GPU, "--config", "configs/vjepa/vit_l16.yaml"],
    "dit": [*ONE_GPU, "--config", "configs/diffusion/dit_l.yaml"],
    "tiny": ["--config", "configs/vjepa/tiny.yaml"],
    "dit_model": ["--config", "configs/diffusion/dit_l.yaml"],
    "strategies": {
        "fsdp2": ["--config", "configs/trainer/fsdp2.yaml"],
        "zero2": ["--config", "configs/trainer/deepspeed_stage_2.yaml"],
        "zero3": ["--config", "configs/trainer/deepspeed_stage_3.yaml"],
    },
    "train_steps": ["--steps", "30", "--warmup", "8"],
    "profile_steps": ["--steps", "3", "--warmup", "5"],
    "sample": ["--steps", "3", "--frames", "16", "--batch-size", "8", "--precision", "bf16"],
    "batch_sizes": ["24", "32", "48", "64", "96"],
}
DRY = {
    "vjepa": ["--config", "configs/trainer/cpu.yaml", "--config", "configs/vjepa/tiny.yaml"],
    "dit": ["--config", "configs/trainer/cpu.yaml", "--config", "configs/diffusion/tiny.yaml"],
    "tiny": ["--config", "configs/vjepa/tiny.yaml"],
    "dit_model": ["--config", "configs/diffusion/tiny.yaml"],
    "strategies": {
        "fsdp2": ["--config", "configs/trainer/fsdp2.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                  "--trainer.strategy.init_args.param_dtype", "float32"],
        "ddp": ["--config", "configs/trainer/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                "--trainer.precision", "32-true"],
    },  # ZeRO needs CUDA: the dry run checks the other strategies' plumbing
    "train_steps": ["--steps", "2", "--warmup", "2"],
    "profile_steps": ["--steps", "1", "--warmup", "1"],
    "sample": ["--steps", "2", "--frames", "8", "--batch-size", "2", "--repeats", "1", "--baseline-steps", "3"],
    "batch_sizes": ["2", "4"],
}  # fmt: skip


def steps(plan: dict[str, Any], out: Path) -> dict[str, list[str]]:
    """Name -> `wm bench ...` arguments of every step of the suite."""
    train = ["--synthetic", *plan["train_steps"]]
    todo = {
        "vjepa_train": ["train", *plan["vjepa"], *train, "--compile", "both", "--json", str(out / "vjepa_train.json")],
        "dit_train": ["train", *plan["dit"], *train, "--compile", "both", "--json", str(out / "dit_train.json")],
        "vjepa_profile": ["profile", *plan["vjepa"], "--synthetic", *plan["profile_steps"],
                          "--json", str(out / "vjepa_profile.json")],
        "dit_profile": ["profile", *plan["dit"], "--synthetic", *plan["profile_steps"],
                        "--json", str(out / "dit_profile.json")],
        "dit_sample": ["sample", *plan["dit_model"], *plan["sample"], "--json", str(out / "dit_sample.json")],
        "vjepa_batch": ["train", *plan["vjepa"], "--synthetic", "--steps", "3", "--warmup", "2",
                        "--batch-sizes", *plan["batch_sizes"], "--json", str(out / "vjepa_batch.json")],
    }  # fmt: skip
    for name, strategy in plan["strategies"].items():
        todo[f"tiny_{name}"] = ["train", *strategy, *plan["tiny"], *train, "--json", str(out / f"tiny_{name}.json")]
    return todo


def run_step(name: str, args: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """Run one `wm bench` step in its own process; its JSON result, or the error and the output's tail."""
    log = out / f"{name}.log"
    started = time.perf_counter()
    try:
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", *args], stdout=f,
                                  stderr=subprocess.STDOUT, timeout=timeout)  # fmt: skip
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    seconds = time.perf_counter() - started
    result_file = Path(args[args.index("--json") + 1])
    if code == 0 and result_file.is_file():
        return {"ok": True, "seconds": seconds, "result": json.loads(result_file.read_text())}
    return {"ok": False, "seconds": seconds, "exit": code, "log_tail": log.read_text()[-2000:]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wm bench suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON results and logs")
    parser.add_argument("--dry", action="store_true", help="the CPU dry run: tiny models, a few steps each")
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps (names as in suite.json)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one step may take")
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        parser.exit(2, "wm bench suite: needs a CUDA device (or --dry for the CPU dry run)\n")
    args.out.mkdir(parents=True, exist_ok=True)
    todo = steps(DRY if args.dry else GPU, args.out)
    unknown = sorted(set(args.only or []) - set(todo))
    if unknown:
        parser.exit(2, f"wm bench suite: unknown steps {unknown}; the steps are {', '.join(todo)}\n")
    results: dict[str, Any] = {"dry": args.dry, "torch": torch.__version__, "steps": {}}
    for name, step_args in todo.items():
        if args.only and name not in args.only:
            continue
        print(f"[suite] {name}: wm bench {' '.join(step_args)}", flush=True)
        results["steps"][name] = outcome = run_step(name, step_args, args.out, args.timeout)
        print(f"[suite] {name}: {'ok' if outcome['ok'] else 'FAILED'} in {outcome['seconds']:.0f} s", flush=True)
        write_json(args.out / "suite.json", results)
    failed = [n for n, r in results["steps"].items() if not r["ok"]]
    print(f"[suite] {len(results['steps']) - len(failed)} of {len(results['steps'])} steps ok"
          + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0
