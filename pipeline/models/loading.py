"""Rebuild any world-model family from its Lightning checkpoint alone, and average several into one."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.models.base import WorldModelModule
from pipeline.models.protocol import Rollout


def _import_class(path: str, allow_external: bool) -> type:
    module_name, _, name = path.rpartition(".")
    if not module_name or (not allow_external and not module_name.startswith("pipeline.")):
        raise ValueError(f"checkpoint class {path!r} is outside the pipeline package; pass allow_external=True "
                         "if you trust the checkpoint")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, WorldModelModule)):
        raise ValueError(f"checkpoint class {path!r} is not a WorldModelModule")
    return cls


def load_world_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu",
                     allow_external: bool = False) -> WorldModelModule:
    """The model of a checkpoint written by a WorldModelModule (it records `wm_class_path`), in eval mode.

    The file is read with weights_only=True: nothing in it is executed or unpickled as an object.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if "wm_class_path" not in ckpt:
        raise ValueError(f"{path} has no 'wm_class_path': it was not written by a WorldModelModule "
                         "(pipeline.models.base); a DeepSpeed checkpoint directory needs `wm export` first")
    cls = _import_class(ckpt["wm_class_path"], allow_external)
    # LightningCLI adds bookkeeping entries (_class_path, _instantiator) that are not constructor arguments
    hparams = {k: v for k, v in dict(ckpt.get("hyper_parameters", {})).items() if not k.startswith("_")}
    model = cls(**hparams)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.to(map_location).eval()


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
