"""Every configs/trainer/*.yaml parses into the real Lightning classes; DeepSpeed ones refuse a CPU-only machine."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import SingleDeviceStrategy

from pipeline.distributed.checkpoint_io import AtomicCheckpointIO
from pipeline.distributed.guard import NonFiniteGuard
from pipeline.distributed.strategy import ConfigError, DDPStrategy, ZeroStrategy

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "trainer"
BORING = "lightning.pytorch.demos.boring_classes.BoringModel"
DEEPSPEED = {"deepspeed_stage_2": (2, False), "deepspeed_stage_3": (3, False), "deepspeed_stage_3_offload": (3, True)}


def _cli(config: Path, *extra: str) -> LightningCLI:
    args = ["--config", str(config), "--model", BORING, "--trainer.logger", "false", *extra]
    with patch("sys.argv", ["wm"]):
        return LightningCLI(None, None, subclass_mode_model=True, subclass_mode_data=True, run=False, args=args)


def test_the_five_trainer_configs_exist() -> None:
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert {"cpu", "ddp", *DEEPSPEED} <= names


@pytest.mark.parametrize("name", ["ddp", *DEEPSPEED])
def test_gpu_configs_train_in_bf16_on_gpu(name: str) -> None:
    trainer = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["trainer"]
    assert trainer["accelerator"] == "gpu" and trainer["precision"] == "bf16-mixed"


def test_cpu_config_builds_a_single_process_trainer(tmp_path: Path) -> None:
    trainer = _cli(CONFIGS / "cpu.yaml", "--trainer.default_root_dir", str(tmp_path)).trainer
    assert isinstance(trainer.strategy, SingleDeviceStrategy)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert any(isinstance(c, NonFiniteGuard) for c in trainer.callbacks)
    assert trainer.checkpoint_callback is not None and trainer.checkpoint_callback.save_last
    assert trainer.precision == "32-true"


def test_ddp_config_builds_on_cpu_with_overrides(tmp_path: Path) -> None:
    cli = _cli(
        CONFIGS / "ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
        "--trainer.devices", "2", "--trainer.default_root_dir", str(tmp_path),
    )  # fmt: skip
    strategy = cli.trainer.strategy
    assert isinstance(strategy, DDPStrategy)
    assert strategy.world_size == 2 and strategy.num_processes == 2
    assert isinstance(strategy.checkpoint_io, AtomicCheckpointIO)


def test_unknown_trainer_key_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "cpu.yaml").read_text().replace("num_nodes: 1", "num_node: 1"))
    with pytest.raises(SystemExit):
        _cli(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
@pytest.mark.parametrize("name", list(DEEPSPEED))
def test_deepspeed_configs_refuse_a_machine_without_cuda(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as err:
        _cli(CONFIGS / f"{name}.yaml", "--trainer.accelerator", "cpu")
    message = str(err.value.code)
    assert f"ZeRO stage {DEEPSPEED[name][0]} needs CUDA" in message and "configs/trainer/cpu.yaml" in message
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("name", list(DEEPSPEED))
def test_deepspeed_configs_hold_the_documented_zero_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the CUDA check is the only thing standing between this machine and the strategy's own config
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    init = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["trainer"]["strategy"]
    assert init["class_path"] == "pipeline.distributed.strategy.ZeroStrategy"
    strategy = ZeroStrategy(**init["init_args"])
    zero = strategy.config["zero_optimization"]
    stage, offload = DEEPSPEED[name]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == offload and ("offload_param" in zero) == offload


def test_zero_strategy_rejects_bad_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="stage must be 2 or 3"):
        ZeroStrategy(stage=1)
    with pytest.raises(ConfigError, match="offload_parameters needs stage 3"):
        ZeroStrategy(stage=2, offload_parameters=True)


def test_strategies_take_a_timeout_and_pass_options_through() -> None:
    from datetime import timedelta

    from pipeline.distributed.strategy import ConfigError, DDPStrategy

    ddp = DDPStrategy(timeout=90.0, options={"bucket_cap_mb": 10, "start_method": "spawn"})
    assert ddp._timeout == timedelta(seconds=90) and ddp._ddp_kwargs["bucket_cap_mb"] == 10
    assert ddp._start_method == "spawn"
    with pytest.raises(ConfigError, match=r"has no arguments \['bucket_size'\]"):
        DDPStrategy(options={"bucket_size": 1})
    with pytest.raises(ConfigError, match=r"sets \['timeout'\]"):
        DDPStrategy(options={"timeout": 5})


def test_deepspeed_bf16_skips_non_finite_steps_and_the_hooks_it_relies_on_exist() -> None:
    """ZeroStrategy overrides Lightning's `_format_config` and commits with DeepSpeed's `save_latest=False`; an
    upgrade that renames either fails here rather than silently keeping non-finite steps or DeepSpeed's own
    non-atomic `latest` file."""
    import inspect

    from deepspeed import DeepSpeedEngine
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from pipeline.distributed.strategy import enable_overflow_check

    on = enable_overflow_check({"bf16": {"enabled": True}})
    assert on == {"bf16": {"enabled": True, "check_grad_overflow": True}}
    kept = enable_overflow_check({"bf16": {"enabled": True, "check_grad_overflow": False}})
    assert kept["bf16"]["check_grad_overflow"] is False
    assert enable_overflow_check({"fp16": {"enabled": True}}) == {"fp16": {"enabled": True}}
    assert "self._format_config()" in inspect.getsource(DeepSpeedStrategy._init_config_if_needed)
    assert "save_latest" in inspect.signature(DeepSpeedEngine.save_checkpoint).parameters
