"""`wm export`: Lightning checkpoints and DeepSpeed ZeRO-2/3 directories into one safetensors file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from pipeline.distributed.export import load_exported, main, read_exported
from pipeline.models.vjepa import VJEPAModule

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(frames=4, context_frames=2, patch_size=8, tubelet_size=2, dim=32, depth=2, heads=4, pred_dim=32,
            pred_depth=1, pred_heads=4, warmup_steps=1, total_steps=10, ema_start=0.5, monitor_every=100)  # fmt: skip


def clips(n: int, seed: int) -> torch.Tensor:
    """uint8 [n, 4, 3, 32, 32] random clips."""
    return torch.randint(0, 256, (n, 4, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def vjepa_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VJEPAModule]:
    """A real Lightning checkpoint of a tiny V-JEPA after 3 optimizer steps (EMA target differs from online)."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = VJEPAModule(**TINY)
    batches = [{"video": clips(2, i), "key": [f"k{i}a", f"k{i}b"]} for i in range(3)]
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)  # fmt: skip
    trainer.fit(model, DataLoader(batches, batch_size=None))
    trainer.save_checkpoint(root / "model.ckpt")
    return root / "model.ckpt", model.eval()


def test_round_trip_reproduces_the_models_outputs(tmp_path: Path, vjepa_ckpt: tuple[Path, VJEPAModule]) -> None:
    ckpt, model = vjepa_ckpt
    out = tmp_path / "vjepa.safetensors"
    assert main(["--ckpt", str(ckpt), "--out", str(out)]) == 0
    tensors, meta = read_exported(out)
    assert meta["wm_class_path"] == "pipeline.models.vjepa.VJEPAModule" and meta["checkpoint_format"] == "lightning"
    assert json.loads(meta["hyper_parameters"])["dim"] == 32 and meta["global_step"] == "3"
    reloaded = load_exported(out)
    video = clips(2, 99)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.embed(video), model.embed(video), rtol=0, atol=0)
        a = model.rollout(video[:, :2], None, horizon=2, future=video[:, 2:])
        b = reloaded.rollout(video[:, :2], None, horizon=2, future=video[:, 2:])
    torch.testing.assert_close(b.latents, a.latents, rtol=0, atol=0)
    torch.testing.assert_close(b.target_latents, a.target_latents, rtol=0, atol=0)
    assert not torch.allclose(model.encoder.patch_embed.proj.weight, model.target_encoder.patch_embed.proj.weight)


def test_online_and_ema_selections(tmp_path: Path, vjepa_ckpt: tuple[Path, VJEPAModule]) -> None:
    ckpt, model = vjepa_ckpt
    state = model.state_dict()
    for weights in ("online", "ema"):
        out = tmp_path / f"{weights}.safetensors"
        assert main(["--ckpt", str(ckpt), "--out", str(out), "--weights", weights]) == 0
        tensors = load_file(str(out))
        assert all(k.startswith("target_encoder.") == (weights == "ema") for k in tensors)
        for key, value in tensors.items():
            assert torch.equal(value, state[key]), key
    online, ema = load_file(str(tmp_path / "online.safetensors")), load_file(str(tmp_path / "ema.safetensors"))
    assert len(online) + len(ema) == len(state)


def test_bad_input_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x.safetensors")])
    assert err.value.code == 2 and "does not exist" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(SystemExit):
        main(["--ckpt", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "x.safetensors")])
    assert "not a Lightning checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ckpt", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "x.pt")])
    assert ".safetensors" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "notes.txt is not a readable checkpoint" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ZeRO-2 and ZeRO-3 trained and checkpointed by DeepSpeed itself: 2 CPU processes, gloo."""
    out = tmp_path_factory.mktemp("zero")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    deepspeed = Path(sys.executable).with_name("deepspeed")
    port = str(29100 + os.getpid() % 800)
    cmd = [str(deepspeed), "--num_gpus", "2", "--master_port", port, str(ROOT / "tests/distributed/zero_cpu_worker.py"),
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_checkpoint_consolidates_into_one_file(tmp_path: Path, zero_run: Path, stage: int) -> None:
    result = json.loads((zero_run / f"zero{stage}.json").read_text())
    assert result["world_size"] == 2 and result["partitioned"] == (stage == 3)
    out = tmp_path / f"zero{stage}.safetensors"
    assert main(["--ckpt", str(zero_run / f"zero{stage}"), "--out", str(out)]) == 0
    tensors, meta = read_exported(out)
    assert meta["checkpoint_format"] == "zero" and meta["global_step"] == "5"
    full = torch.load(zero_run / f"zero{stage}_full.pt", weights_only=True)
    assert sorted(tensors) == sorted(full)  # frozen EMA target included
    for key, value in full.items():
        torch.testing.assert_close(tensors[key], value, rtol=0, atol=0, msg=key)
    ema = load_file(str(tmp_path / "e.safetensors")) if main(
        ["--ckpt", str(zero_run / f"zero{stage}"), "--out", str(tmp_path / "e.safetensors"), "--weights", "ema"]
    ) == 0 else {}  # fmt: skip
    assert ema and all(k.startswith("target_encoder.") for k in ema)


@pytest.mark.multiproc
@pytest.mark.slow
def test_zero3_ema_of_partitioned_parameters_matches_the_gathered_reference(zero_run: Path) -> None:
    stage2 = json.loads((zero_run / "zero2.json").read_text())
    assert stage2["ema_max_abs_error"] < 1e-6 and stage2["target_minus_online_max"] > 1e-2
    stage3 = json.loads((zero_run / "zero3.json").read_text())
    assert stage3["partitioned"] and stage3["ema_max_abs_error"] < 1e-6 and stage3["target_minus_online_max"] > 1e-2


@pytest.mark.multiproc
@pytest.mark.slow
def test_zero3_ema_with_pipeline_nn_ema_alone(zero_run: Path) -> None:
    fixed = json.loads((zero_run / "zero3.json").read_text())
    assert fixed["partitioned"] and fixed["ema_max_abs_error"] < 1e-6
    # the run has persistent parameters: updating their shards alone leaves the full copies one update behind
    shards_only = json.loads((zero_run / "zero3_shards_only.json").read_text())
    assert shards_only["partitioned"] and shards_only["ema_max_abs_error"] > 1e-3


@pytest.mark.multiproc
@pytest.mark.slow
def test_zero3_bf16_ema_moves_wherever_the_fp32_reference_moves(zero_run: Path) -> None:
    result = json.loads((zero_run / "zero3_bf16.json").read_text())
    assert result["world_size"] == 2 and result["partitioned"] and result["dtype"] == "torch.bfloat16"
    assert result["moved_by_reference"] > 1000 and result["frozen_where_reference_moved"] == 0
    assert result["target_reference_max_abs_error"] < 2e-2  # bf16 rounding of values up to ~1


@pytest.mark.multiproc
@pytest.mark.slow
def test_zero3_bf16_nan_on_one_rank_is_skipped_on_every_rank_and_counted(zero_run: Path) -> None:
    ranks = json.loads((zero_run / "zero3_bf16.json").read_text())["ranks"]
    assert [r["skipped_at"] for r in ranks] == [[50], [50]]  # DeepSpeed's overflow check spans the ranks
    assert [(r["engine_skipped"], r["guard_skipped"], r["finite"]) for r in ranks] == [(1, 1, True)] * 2
