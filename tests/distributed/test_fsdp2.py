"""FSDP2 through `wm fit` on the CPU (2 gloo ranks): the same losses as DDP, distributed checkpoints committed
atomically and loaded at another world size, exported to one file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fit_helpers import finish, fit_cmd, last_ckpt, records, run_config, start, write_clips  # noqa: E402

from pipeline.distributed.checkpoint import committed_tag  # noqa: E402
from pipeline.distributed.export import main as export_main  # noqa: E402
from pipeline.distributed.export import read_exported  # noqa: E402

FSDP2_CPU = ["--config", "configs/trainer/fsdp2.yaml", "--trainer.accelerator", "cpu",
             "--trainer.strategy.init_args.param_dtype", "float32"]  # fmt: skip
DDP_CPU = ["--config", "configs/trainer/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]


def exported(ckpt: Path, out: Path) -> dict[str, torch.Tensor]:
    assert export_main(["--ckpt", str(ckpt), "--out", str(out)]) == 0
    return read_exported(out)[0]


@pytest.mark.multiproc
@pytest.mark.slow
def test_fsdp2_trains_like_ddp_and_its_checkpoint_loads_at_another_world_size(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_clips(shards)
    runs = {}
    for name, trainer in (("ddp", DDP_CPU), ("fsdp2", FSDP2_CPU)):
        run = tmp_path / name
        config = run_config(run, shards, 4, 1, every=2)
        finish(start(fit_cmd([*trainer, "--trainer.devices", "2"], config), tmp_path / f"{name}.log"),
               tmp_path / f"{name}.log")  # fmt: skip
        runs[name] = run
    for rank in range(2):
        ddp, fsdp = records(runs["ddp"] / "probe", rank), records(runs["fsdp2"] / "probe", rank)
        assert sorted(ddp) == sorted(fsdp) == [0, 1, 2, 3]
        for step in ddp:
            assert fsdp[step]["keys"] == ddp[step]["keys"]
            assert fsdp[step]["loss"] == pytest.approx(ddp[step]["loss"], rel=1e-4, abs=1e-6), (rank, step)

    ckpt = last_ckpt(runs["fsdp2"])
    tag = committed_tag(ckpt)
    assert tag is not None and (ckpt / tag / ".metadata").is_file()
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(["latest", tag])  # the step-2 tag was removed
    trained = exported(ckpt, tmp_path / "two_ranks.safetensors")
    reference = exported(last_ckpt(runs["ddp"]), tmp_path / "ddp.safetensors")
    for key, value in reference.items():
        torch.testing.assert_close(trained[key], value, rtol=1e-4, atol=1e-5, msg=key)

    # the same command on one rank, resuming with --ckpt_path last: the weights it starts from are the 2-rank ones
    (runs["fsdp2"] / "probe").rename(runs["fsdp2"] / "probe_two_ranks")
    config = run_config(runs["fsdp2"], shards, 6, 1, every=2)
    log = tmp_path / "one_rank.log"
    finish(start(fit_cmd([*FSDP2_CPU, "--trainer.devices", "1"], config, "--ckpt_path", "last"), log), log)
    assert f"resuming from {ckpt}" in log.read_text()
    starts = [json.loads(line) for line in (runs["fsdp2"] / "probe" / "rank0.jsonl").read_text().splitlines()]
    first = next(r for r in starts if r["phase"] == "start")
    assert first["step"] == 4
    assert first["weights"] == pytest.approx(sum(float(v.double().sum()) for v in trained.values()), rel=1e-12)
    assert committed_tag(ckpt) != tag and sorted(records(runs["fsdp2"] / "probe", 0)) == [4, 5]
