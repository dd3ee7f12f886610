"""DeepSpeed ZeRO checkpoints on the CPU, killed at a commit point (not a test module itself).

`save DIR POINT`: trains a small model under ZeRO-3 (one gloo process), commits checkpoint A through
pipeline.distributed.checkpoint.save_zero_checkpoint, trains on, and saves checkpoint B with the commit hook
sending SIGKILL to this process at POINT. The weights of A and B are written next to DIR first.
`check DIR...`: for each DIR, does what the next launch does (remove_stale), then loads the committed checkpoint
into a fresh engine and prints JSON: which of A and B it holds, and what is left in the directory.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from pipeline.distributed import checkpoint
from pipeline.distributed.checkpoint import committed_tag, remove_stale, save_zero_checkpoint


def engine() -> deepspeed.DeepSpeedEngine:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4))
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3},
              "zero_allow_untested_optimizer": True}  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    return deepspeed.initialize(model=model, optimizer=optimizer, config=config)[0]


def flat(eng: deepspeed.DeepSpeedEngine) -> torch.Tensor:
    params = list(eng.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return torch.cat([p.detach().flatten().clone() for p in params])


def train(eng: deepspeed.DeepSpeedEngine, steps: int) -> None:
    for _ in range(steps):
        eng.backward(eng(torch.randn(2, 8)).pow(2).mean())
        eng.step()


def save(eng: deepspeed.DeepSpeedEngine, directory: Path, tag: str) -> None:
    save_zero_checkpoint(eng, directory, {"global_step": 0}, tag, lambda name: dist.barrier(), dist.get_rank() == 0)


def main() -> None:
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    mode, dirs = sys.argv[1], [Path(d) for d in sys.argv[2:]]
    if mode == "save":
        directory, point = dirs[0], sys.argv[3]
        eng = engine()
        train(eng, 2)
        torch.save(flat(eng), directory.with_suffix(".A.pt"))
        save(eng, directory, "step-2")
        train(eng, 2)
        torch.save(flat(eng), directory.with_suffix(".B.pt"))
        checkpoint.commit_hook = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == point else None
        save(eng, directory, "step-4")
        print("not killed", flush=True)
        return
    results = {}
    for directory in dirs:
        removed = [p.name for p in remove_stale(directory.parent)]
        eng = engine()
        eng.load_checkpoint(str(directory))
        weights = flat(eng)
        held = [name for name in "AB" if torch.equal(weights, torch.load(directory.with_suffix(f".{name}.pt")))]
        results[directory.parent.name] = {"tag": committed_tag(directory), "holds": held, "removed": removed,
                                   "left": sorted(p.name for p in directory.iterdir() if p.is_dir())}  # fmt: skip
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
