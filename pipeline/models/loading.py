"""One loader for every model file: rebuild a registered family from a checkpoint or an export, and nothing else.

A checkpoint or an exported file names its model class (`wm_class_path`) and stores its constructor
arguments. Both come from whoever wrote the file, so before anything is imported the name must be one of
the registered families (`FAMILIES`, or one added with `register_family`), and every stored argument must be a
parameter of that constructor holding plain data. `wm eval`, `wm plan`, `wm export`'s reader, the V-JEPA 2-AC
encoder checkpoint and the benchmarks all come through here.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.models.base import WorldModelModule
from pipeline.models.protocol import Rollout

# class path -> nothing is imported for a name that is not a key here
FAMILIES: set[str] = {
    "pipeline.models.vjepa.VJEPAModule",
    "pipeline.models.vjepa_ac.VJEPAACModule",
    "pipeline.models.diffusion.VideoDiffusionModule",
    "pipeline.models.rssm.RSSMModule",
    "pipeline.models.baselines.CopyLastFrame",
    "pipeline.models.baselines.LinearExtrapolation",
}


class ModelFileError(ValueError):
    """A model file that cannot be loaded: missing, not a checkpoint, or naming an unregistered class."""


def register_family(cls: type[WorldModelModule]) -> type[WorldModelModule]:
    """Allow files naming `cls` to be loaded (for families defined outside this package); usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, WorldModelModule)):
        raise TypeError(f"{cls!r} is not a WorldModelModule subclass")
    FAMILIES.add(class_path_of(cls))
    return cls


def class_path_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_family(class_path: Any, source: str | Path = "the file") -> type[WorldModelModule]:
    """The registered class named `class_path`; refused before any import when it is not registered."""
    if not isinstance(class_path, str) or class_path not in FAMILIES:
        raise ModelFileError(
            f"{source} names model class {str(class_path)[:120]!r}, which is not a registered world-model family "
            f"({', '.join(sorted(FAMILIES))}); register it with pipeline.models.loading.register_family if you "
            "trust the file"
        )
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, WorldModelModule)):
        raise ModelFileError(f"{source}: {class_path!r} is not a WorldModelModule")
    return cls


def _plain(value: Any) -> bool:
    """None, bool, int, float, str, and lists/tuples/dicts of these: data, never code."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def checked_arguments(cls: type, hparams: Any, source: str | Path = "the file") -> dict[str, Any]:
    """`hparams` as constructor keyword arguments of `cls`: declared parameters only, plain data only.

    Keys starting with `_` are LightningCLI's bookkeeping (`_class_path`, `_instantiator`) and are dropped.
    """
    if not isinstance(hparams, dict):
        raise ModelFileError(f"{source}: stored hyper-parameters are a {type(hparams).__name__}, not a mapping")
    args = {k: v for k, v in hparams.items() if not (isinstance(k, str) and k.startswith("_"))}
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ModelFileError(f"{class_path_of(cls)} takes **kwargs: its stored arguments cannot be checked")
    unknown = sorted(str(k) for k in args if k not in params or k == "self")
    if unknown:
        raise ModelFileError(f"{source}: {class_path_of(cls)} has no parameters {unknown[:8]}")
    bad = sorted(k for k, v in args.items() if not _plain(v))
    if bad:
        raise ModelFileError(f"{source}: arguments {bad[:8]} of {class_path_of(cls)} are not plain data")
    return args


def build_model(class_path: Any, hparams: Any, source: str | Path = "the file") -> WorldModelModule:
    """A new model of a registered family from stored constructor arguments (checked before the call)."""
    cls = resolve_family(class_path, source)
    return cls(**checked_arguments(cls, hparams, source))


def read_lightning_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict of a Lightning checkpoint file, read as data (weights_only: nothing is unpickled as an object)."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory (a DeepSpeed ZeRO checkpoint?): run `wm export` on it first")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one kind of user error here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"{path} is not a readable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ModelFileError(f"{path} has no 'state_dict': not a Lightning checkpoint")
    return ckpt


def load_world_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> WorldModelModule:
    """The model of a checkpoint written by a WorldModelModule (it records `wm_class_path`), in eval mode.

    Only registered families are built; the file is read with weights_only=True.
    """
    ckpt = read_lightning_checkpoint(ckpt_path, map_location)
    if "wm_class_path" not in ckpt:
        raise ModelFileError(f"{ckpt_path} has no 'wm_class_path': it was not written by a WorldModelModule "
                             "(pipeline.models.base); a DeepSpeed checkpoint directory needs `wm export` first")
    model = build_model(ckpt["wm_class_path"], dict(ckpt.get("hyper_parameters") or {}), ckpt_path)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.on_load_checkpoint(ckpt)
    return model.to(map_location).eval()


def load_submodule_weights(module: nn.Module, path: str | Path, prefix: str, family: type) -> None:
    """Load the `prefix*` weights of a checkpoint of `family` (e.g. a V-JEPA target encoder) into `module`."""
    ckpt = read_lightning_checkpoint(path)
    if ckpt.get("wm_class_path") != class_path_of(family):
        raise ModelFileError(f"{path} holds a {ckpt.get('wm_class_path')!r} checkpoint; expected "
                             f"{class_path_of(family)}")
    weights = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise ModelFileError(f"{path} has no '{prefix}*' weights")
    module.load_state_dict(weights)


class Ensemble(nn.Module):
    """K world models as one: predicted frames (and latents) averaged over the members.

    All members must share context_frames; rewards are averaged too when every member predicts them.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        contexts = {int(m.context_frames) for m in members}
        if len(contexts) != 1:
            raise ValueError(f"ensemble members disagree on context_frames: {sorted(contexts)}")
        self.members = nn.ModuleList(members)
        self.context_frames = contexts.pop()

    @staticmethod
    def _mean(values: list[Tensor | None]) -> Tensor | None:
        return None if any(v is None for v in values) else torch.stack(values).mean(0)

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor | None, horizon: int, future: Tensor | None = None) -> Rollout:
        outs = [m.rollout(context, actions, horizon, future=future) for m in self.members]
        return Rollout(
            frames=self._mean([o.frames for o in outs]),
            latents=self._mean([o.latents for o in outs]),
            target_latents=self._mean([o.target_latents for o in outs]),
            rewards=self._mean([o.rewards for o in outs]),
        )
