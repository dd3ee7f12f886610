from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from eval_helpers import moving_clips, save_tiny_detector, sync_worker  # noqa: E402

from pipeline.eval.features import build_extractors  # noqa: E402
from pipeline.eval.rollout import EvalClips, run_horizons  # noqa: E402
from pipeline.models.baselines import CopyLastFrame  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiproc
@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    detector = str(save_tiny_detector(tmp_path / "det.pt"))
    mp.spawn(sync_worker, args=(2, _free_port(), detector, str(tmp_path / "r0.json")), nprocs=2, join=True)
    synced = json.loads((tmp_path / "r0.json").read_text())
    video = moving_clips(n=6, frames=5)
    ex = build_extractors(i3d_weights=detector, lpips=False)
    single, _ = run_horizons(CopyLastFrame(context_frames=2, latent_pool=8), EvalClips(video, None), [1, 3], 2, ex)
    for h in ("1", "3"):
        assert synced["metrics"][h]["count"] == 6
        for name, value in single["metrics"][h].items():
            assert synced["metrics"][h][name] == pytest.approx(value, rel=1e-5, abs=1e-9), (h, name)
    assert synced["metrics"]["3"]["fvd"] > 0
