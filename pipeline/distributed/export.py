"""`wm export`: one safetensors file of weights (online, EMA or both) plus the model config, from any checkpoint.

Reads a Lightning `.ckpt` file (single device, DDP), a DeepSpeed ZeRO stage 2/3 checkpoint directory (the
shards are consolidated with DeepSpeed's zero_to_fp32) or an FSDP2 distributed checkpoint (consolidated with
torch.distributed.checkpoint). The metadata records the model class path and its
hyper-parameters, so `load_exported` rebuilds the module from the file alone. Checkpoints are read as data:
every torch.load runs with weights_only=True, including the ones inside DeepSpeed's consolidation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

Weights = Literal["online", "ema", "both"]
EMA_PREFIXES = ("target_encoder.", "ema_net.")  # V-JEPA target encoder, diffusion EMA network
WRAPPER_PREFIX = "_forward_module."  # Lightning Fabric's wrapper around a module (DeepSpeed checkpoints via Fabric)
FORMAT = "wm-export/1"
DEEPSPEED_KEYS = {
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "sparse_tensor_module_names", "ds_config", "ds_version",
}  # fmt: skip


class ExportError(ValueError):
    """A checkpoint that cannot be exported as asked."""


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block, torch.load refuses pickled objects even where a library asks for weights_only=False."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    # DeepSpeed's optimizer files hold these plain records (stage enum, loss-scaler settings, fragment
    # addresses); allowlisting them keeps every other global, i.e. code, refused
    with torch.serialization.safe_globals([ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]):
        torch.load = load
        try:
            yield
        finally:
            torch.load = original


def _zero_tag(directory: Path) -> str:
    latest = directory / "latest"
    if latest.is_file():
        return latest.read_text().strip()
    tags = [p.name for p in directory.iterdir() if p.is_dir() and any(p.glob("*model_states.pt"))]
    if len(tags) != 1:
        raise ExportError(f"{directory} is not a ZeRO checkpoint directory (no 'latest' file and tags {tags})")
    return tags[0]


def consolidate_zero(directory: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(fp32 state dict of the full model, client state) of a ZeRO stage 2/3 checkpoint directory."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = _zero_tag(directory)
    model_files = sorted((directory / tag).glob("*model_states.pt"))
    if not model_files:
        raise ExportError(f"{directory / tag} holds no *model_states.pt: not a DeepSpeed checkpoint")
    with weights_only_loads():
        state = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag)
        client = torch.load(model_files[0], map_location="cpu")
    return state, {k: v for k, v in client.items() if k not in DEEPSPEED_KEYS}


def consolidate_dcp(directory: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(full state dict, the checkpoint's other entries) of an FSDP2 distributed checkpoint directory (its committed
    tag): Lightning writes the tensors as a torch distributed checkpoint and the rest to meta.pt."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from pipeline.distributed.checkpoint import committed_tag

    tag = committed_tag(directory)
    shards = directory / tag if tag else directory
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(shards), f"{tmp}/full.pt")
        full = torch.load(f"{tmp}/full.pt", map_location="cpu", weights_only=True)
    meta_file = shards / "meta.pt"
    meta = torch.load(meta_file, map_location="cpu", weights_only=True) if meta_file.is_file() else {}
    return dict(full["state_dict"]), meta


def is_dcp(directory: Path) -> bool:
    """Whether a checkpoint directory (or its committed tag) is a torch distributed checkpoint (FSDP2)."""
    from pipeline.distributed.checkpoint import committed_tag

    tag = committed_tag(directory)
    return ((directory / tag) if tag else directory).joinpath(".metadata").is_file()


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, info) of a Lightning .ckpt file, a ZeRO or an FSDP2 checkpoint directory; info has the model
    config."""
    path = Path(path)
    if path.is_dir() and is_dcp(path):
        state, client = consolidate_dcp(path)
        kind = "fsdp2"
    elif path.is_dir():
        state, client = consolidate_zero(path)
        kind = "zero"
    elif path.is_file():
        try:
            client = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - whatever the file is, it is not a checkpoint we can read
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ExportError(f"{path} is not a readable checkpoint ({first[:160]})") from None
        if not isinstance(client, dict) or "state_dict" not in client:
            raise ExportError(f"{path} has no 'state_dict': not a Lightning checkpoint")
        state, kind = client.pop("state_dict"), "lightning"
    else:
        raise ExportError(f"checkpoint {path} does not exist")
    state = {k.removeprefix(WRAPPER_PREFIX): v for k, v in state.items()}
    info = {
        "checkpoint_format": kind,
        "wm_class_path": client.get("wm_class_path", ""),
        "hyper_parameters": dict(client.get("hyper_parameters") or {}),
        "global_step": int(client.get("global_step", -1)),
    }
    return state, info


def select_weights(state: dict[str, Tensor], weights: Weights) -> dict[str, Tensor]:
    """The online weights (everything but the EMA copies), the EMA copies, or both; names are kept."""
    is_ema = {k: k.startswith(EMA_PREFIXES) for k in state}
    if weights == "both":
        chosen = dict(state)
    else:
        chosen = {k: v for k, v in state.items() if is_ema[k] == (weights == "ema")}
    if not chosen:
        raise ExportError(f"no {weights} weights in the checkpoint (EMA weights are named {EMA_PREFIXES}*)")
    return chosen


def export(ckpt: str | Path, out: str | Path, weights: Weights = "both") -> Path:
    """Write `out` (.safetensors): the chosen weights, with the model config and provenance in the metadata."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ExportError(f"--out must end in .safetensors, got {out.name}")
    state, info = read_checkpoint(ckpt)
    # safetensors refuses shared storage; clones also drop views into flat ZeRO buffers
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in select_weights(state, weights).items()}
    metadata = {
        "format": FORMAT, "source": str(ckpt), "weights": weights,
        "checkpoint_format": info["checkpoint_format"], "wm_class_path": info["wm_class_path"],
        "global_step": str(info["global_step"]), "hyper_parameters": json.dumps(info["hyper_parameters"], default=repr),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out


def read_exported(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of an exported file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if metadata.get("format") != FORMAT:
        raise ExportError(f"{path} was not written by `wm export` (metadata format {metadata.get('format')!r})")
    return load_file(str(path)), metadata


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild the registered model class named in the metadata and load the exported weights.

    Nothing in the file chooses code: the class must be a registered family and the stored arguments must be
    parameters of its constructor (pipeline.models.loading). An export of only online or only EMA weights leaves
    the other group at its initial values.
    """
    from pipeline.models.loading import ModelFileError, build_model

    tensors, meta = read_exported(path)
    if not meta.get("wm_class_path"):
        raise ExportError(f"{path} does not name its model class; rebuild the model yourself and load the tensors")
    try:
        hparams = json.loads(meta.get("hyper_parameters", "{}"))
        model = build_model(meta["wm_class_path"], hparams, path)
    except (ModelFileError, json.JSONDecodeError) as err:
        raise ExportError(str(err)) from None
    missing, unexpected = model.load_state_dict(tensors, strict=meta["weights"] == "both")
    if unexpected:
        raise ExportError(f"{path} has weights that {type(model).__name__} does not: {unexpected[:5]}")
    return model.eval()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wm export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="Lightning .ckpt file or DeepSpeed ZeRO checkpoint directory")
    parser.add_argument("--out", required=True, help="output FILE.safetensors")
    parser.add_argument("--weights", choices=["online", "ema", "both"], default="both", help="which weights")
    args = parser.parse_args(argv)
    try:
        out = export(args.ckpt, args.out, args.weights)
    except ExportError as err:
        parser.exit(2, f"wm export: {err}\n")
    tensors, meta = read_exported(out)
    count = sum(t.numel() for t in tensors.values())
    print(f"wrote {out}: {len(tensors)} tensors, {count:,} values ({args.weights}), {meta['wm_class_path'] or '?'}")
    return 0
