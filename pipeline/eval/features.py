"""The feature extractors of an evaluation (I3D for FVD, LPIPS), each found or recorded as absent.

A metric whose weights are absent is left out with the reason, never computed from random weights.
Only the explicit development flag `random_weights` builds random extractors, and then the metric is
reported under a different name (`fvd_random_weights`, `lpips_random_weights`), so the number can
never be read as the real one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch

from pipeline.eval import weights as W
from pipeline.eval.i3d import I3DFeatures, InceptionI3d, load_i3d
from pipeline.eval.lpips import LPIPSMetric, backbone_path

RANDOM_SUFFIX = "_random_weights"


@dataclass
class Extractors:
    """What `build_extractors` found: modules (or None) and what eval.json records about each."""

    i3d: I3DFeatures | None = None
    lpips: torch.nn.Module | None = None
    info: dict[str, dict[str, str]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=lambda: {"fvd": "fvd", "lpips": "lpips"})


def _i3d(explicit: str | Path | None, random_weights: bool, device: torch.device,
         ex: Extractors) -> None:
    try:
        path = W.find_weights("i3d", explicit)
    except FileNotFoundError as err:
        if explicit:  # a file the user named must exist: fail, do not fall back
            raise
        if not random_weights:
            ex.info["i3d"] = W.describe(None, str(err).splitlines()[0] + " (see `wm weights where`)")
            return
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        net = InceptionI3d()
        torch.random.set_rng_state(gen_state)
        ex.i3d = I3DFeatures(net.to(device), torchscript=False)
        ex.info["i3d"] = {"file": "random-weights", "sha256": "random-weights", "reason": "development flag"}
        ex.names["fvd"] = "fvd" + RANDOM_SUFFIX
        return
    ex.i3d = load_i3d(path, device)
    ex.info["i3d"] = W.describe(path)


def _lpips(net: str, random_weights: bool, device: torch.device, ex: Extractors) -> None:
    try:
        ex.lpips = LPIPSMetric(net).to(device)
        ex.info["lpips"] = {"net": net, **W.describe(ex.lpips.weights_file), "lpips": version("lpips")}
    except FileNotFoundError as err:
        if not random_weights:
            ex.info["lpips"] = {"net": net, **W.describe(None, str(err).split(". ")[0])}
            return
        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex.lpips = _RandomLPIPS(lpips.LPIPS(net=net, pnet_rand=True, verbose=False)).to(device)
        ex.info["lpips"] = {"net": net, "file": "random-weights", "sha256": "random-weights",
                            "reason": f"development flag; {backbone_path(net)} absent"}
        ex.names["lpips"] = "lpips" + RANDOM_SUFFIX


class _RandomLPIPS(torch.nn.Module):
    """LPIPS with a random backbone (development only), same call as LPIPSMetric."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return self.model(a * 2 - 1, b * 2 - 1).flatten()


def build_extractors(i3d_weights: str | Path | None = None, lpips_net: str = "alex", random_weights: bool = False,
                     device: str | torch.device = "cpu", fvd: bool = True, lpips: bool = True) -> Extractors:
    """Find I3D and LPIPS weights (see pipeline.eval.weights); absent ones are recorded with the reason.

    fvd / lpips = False leave that metric out on purpose (recorded as "disabled").
    """
    ex, device = Extractors(), torch.device(device)
    if fvd:
        _i3d(i3d_weights, random_weights, device, ex)
    else:
        ex.info["i3d"] = W.describe(None, "disabled")
    if lpips:
        _lpips(lpips_net, random_weights, device, ex)
    else:
        ex.info["lpips"] = {"net": lpips_net, **W.describe(None, "disabled")}
    return ex
