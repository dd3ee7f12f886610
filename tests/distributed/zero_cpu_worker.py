"""DeepSpeed ZeRO-2 and ZeRO-3 on the CPU (gloo), started by `deepspeed --num_gpus 2` from the tests.

For each stage: train a model laid out like V-JEPA (online encoder, EMA target encoder, head) for a few steps,
update the EMA with pipeline.nn.ema, compare it with a reference EMA computed from the gathered full weights, save
a DeepSpeed checkpoint, and write the gathered full state dict for the export test. Rank 0 writes
OUT/zero{stage}.json. A second ZeRO-3 run updates the shards alone (OUT/zero3_shards_only.json): its error shows
that the run has persistent parameters whose full copies the EMA must update too. A bf16 ZeRO-3 run checks the
EMA's fp32 accumulation against an fp32 reference and DeepSpeed's skip of a step with a NaN loss on one rank
(OUT/zero3_bf16.json). Not a test module itself.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.zero import GatheredParameters
from torch import nn

from pipeline.distributed.guard import NonFiniteGuard
from pipeline.distributed.strategy import enable_overflow_check
from pipeline.nn.ema import ema_update_, ema_update_module_, local_shards
from pipeline.nn.schedules import ema_momentum

MOMENTUM = 0.8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 16))
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)) + 0.1 * self.target_encoder(x).mean()


def gathered(params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Full copies of (possibly partitioned) parameters, on every rank."""
    with GatheredParameters(params):
        return [p.detach().clone() for p in params]


def ema_of_shards_only(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """The rank-local shards alone: leaves ZeRO-3's full copies of persistent parameters one update behind."""
    ema_update_(local_shards(target.parameters()), local_shards(online.parameters()), momentum)


def run(stage: int, out: Path, steps: int, method: str) -> None:
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    config = {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
    }  # fmt: skip
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    net = engine.module
    target_params = list(net.target_encoder.parameters())
    partitioned = all(hasattr(p, "ds_tensor") and p.ds_tensor.numel() < p.ds_numel for p in target_params)
    reference = gathered(target_params)
    rank = dist.get_rank()
    for step in range(steps):
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(100 * step + rank))
        loss = engine(x).pow(2).mean()
        engine.backward(loss)
        engine.step()
        update = ema_update_module_ if method == "pipeline" else ema_of_shards_only
        update(net.target_encoder, net.encoder, MOMENTUM)
        online = gathered(list(net.encoder.parameters()))
        reference = [MOMENTUM * r + (1 - MOMENTUM) * o for r, o in zip(reference, online, strict=True)]
    sharded = gathered(target_params)
    ema_error = max(float((a - b).abs().max()) for a, b in zip(sharded, reference, strict=True))
    moved = max(
        float((a - b).abs().max()) for a, b in zip(sharded, gathered(list(net.encoder.parameters())), strict=True)
    )
    names = [n for n, _ in net.named_parameters()]
    full = dict(zip(names, gathered(list(net.parameters())), strict=True))
    client = {"wm_class_path": "zero_cpu_worker.Net", "hyper_parameters": {}, "global_step": steps}
    name = f"zero{stage}" if method == "pipeline" else f"zero{stage}_{method}"
    engine.save_checkpoint(str(out / name), tag="checkpoint", client_state=client)
    dist.barrier()
    if rank == 0:
        torch.save(full, out / f"{name}_full.pt")
        result = {
            "stage": stage, "method": method, "world_size": dist.get_world_size(), "partitioned": partitioned,
            "ema_max_abs_error": ema_error, "target_minus_online_max": moved, "loss": float(loss),
        }  # fmt: skip
        (out / f"{name}.json").write_text(json.dumps(result))
    dist.barrier()


class _Stub:
    """The two attributes NonFiniteGuard reads of Lightning's trainer and module under DeepSpeed (Lightning's
    DeepSpeedStrategy needs CUDA; the engine here is DeepSpeed's own)."""

    def __init__(self, engine: deepspeed.DeepSpeedEngine) -> None:
        self.strategy = self
        self.deepspeed_engine = engine
        self.global_step = 0

    def log(self, *args: object, **kwargs: object) -> None:
        pass


def run_bf16(out: Path, steps: int, nan_step: int) -> None:
    """ZeRO-3, bf16 weights (the EMA target included, as DeepSpeed casts the whole module), the real V-JEPA momentum
    schedule; a NaN loss on rank 1 alone at `nan_step`. Rank 0 writes OUT/zero3_bf16.json."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.02)
    config = enable_overflow_check({
        "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": True},
    })  # fmt: skip
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    net, rank = engine.module, dist.get_rank()
    target_params = list(net.target_encoder.parameters())
    start = gathered(target_params)
    reference = [t.float() for t in start]
    master: dict = {}
    guard, stub = NonFiniteGuard(max_consecutive=3), _Stub(engine)
    guard.on_train_start(stub, stub)
    skipped_at = []
    for step in range(1, steps + 1):
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(100 * step + rank)).to(torch.bfloat16)
        loss = engine(x).float().pow(2).mean()
        if step == nan_step and rank == 1:
            loss = loss * float("nan")
        engine.backward(loss)
        engine.step()
        guard.on_train_batch_end(stub, stub)
        if not engine.was_step_applied():  # what EMAWorldModelModule checks before its update
            skipped_at.append(step)
            continue
        m = ema_momentum(step, steps, 0.998, 1.0)
        ema_update_module_(net.target_encoder, net.encoder, m, master=master)
        online = gathered(list(net.encoder.parameters()))
        reference = [m * r + (1 - m) * o.float() for r, o in zip(reference, online, strict=True)]
    final = gathered(target_params)
    moved = [(r - s.float()).abs() > 2 * r.abs() * 2.0**-8 for r, s in zip(reference, start, strict=True)]
    frozen = sum(int(((t == s) & mv).sum()) for t, s, mv in zip(final, start, moved, strict=True))
    error = max(float((t.float() - r).abs().max()) for t, r in zip(final, reference, strict=True))
    finite = all(bool(torch.isfinite(p).all()) for p in gathered(list(net.parameters())))
    report = {"rank": rank, "skipped_at": skipped_at, "engine_skipped": int(engine.skipped_steps),
              "guard_skipped": guard.skipped, "finite": finite}  # fmt: skip
    reports = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    if rank == 0:
        result = {
            "world_size": dist.get_world_size(), "dtype": str(target_params[0].dtype),
            "partitioned": all(p.ds_tensor.numel() < p.ds_numel for p in target_params if p.ds_numel > 64),
            "moved_by_reference": sum(int(mv.sum()) for mv in moved), "frozen_where_reference_moved": frozen,
            "target_reference_max_abs_error": error, "ranks": reports,
        }  # fmt: skip
        (out / "zero3_bf16.json").write_text(json.dumps(result))
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--local_rank", type=int, default=0)  # passed by the deepspeed launcher
    args = parser.parse_args()
    # the CPU accelerator would JIT-compile a shared-memory all-reduce (minutes of C++); gloo alone is enough here
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    for stage, method in ((2, "pipeline"), (3, "pipeline"), (3, "shards_only")):
        run(stage, Path(args.out), args.steps, method)
    run_bf16(Path(args.out), steps=200, nan_step=50)


if __name__ == "__main__":
    main()
