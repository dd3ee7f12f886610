from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from eval_helpers import moving_clips, save_tiny_detector  # noqa: E402

from pipeline.eval.rollout import evaluate  # noqa: E402
from pipeline.eval.weights import sha256_of  # noqa: E402
from pipeline.models.baselines import CopyLastFrame, LinearExtrapolation  # noqa: E402

REQUIRED = {"checkpoint", "data_manifest_hash", "horizons", "samples", "seed", "features", "clip_rule",
            "fvd_clip_rule", "metrics", "absent", "context_frames"}


@pytest.fixture
def no_lpips_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setenv("WM_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("WM_I3D_WEIGHTS", raising=False)
    return tmp_path


def test_evaluate_in_memory_writes_complete_eval_json(no_lpips_weights: Path) -> None:
    tmp = no_lpips_weights
    video = moving_clips(n=6, frames=6)
    detector = save_tiny_detector(tmp / "i3d_torchscript.pt")
    batches = [{"video": video[:4]}, {"video": video[4:]}]
    record = evaluate(CopyLastFrame(context_frames=2, latent_pool=8), batches, horizons=[4, 1, 2], samples=5,
                      seed=3, batch_size=3, i3d_weights=detector, out=tmp / "run" / "eval.json")
    on_disk = json.loads((tmp / "run" / "eval.json").read_text())
    assert REQUIRED <= set(on_disk) and on_disk["samples"] == 5 and on_disk["horizons"] == [1, 2, 4]
    assert on_disk["fvd_input_frames"] == {"1": 9, "2": 9, "4": 9}  # 2 + h < 9: padded
    assert on_disk["features"]["i3d"] == {"file": str(detector), "sha256": sha256_of(detector)}
    # LPIPS backbone absent: recorded with the path, never a number
    assert "alexnet-owt-7be5be79.pth" in on_disk["absent"]["lpips"]
    assert all("lpips" not in m for m in on_disk["metrics"].values())
    m = on_disk["metrics"]
    # copying the last frame gets worse with the horizon
    assert m["1"]["psnr"] > m["2"]["psnr"] > m["4"]["psnr"] and m["1"]["ssim"] > m["4"]["ssim"]
    assert m["1"]["latent_l1"] < m["4"]["latent_l1"] and m["4"]["fvd"] > 0
    # PSNR at h=1 equals an independent per-image computation over the 5 clips
    x = video[:5].float() / 255
    mse = ((x[:, 2] - x[:, 1]) ** 2).mean(dim=(1, 2, 3))
    assert m["1"]["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
    assert record["metrics"] == on_disk["metrics"]
    strips = np.load(tmp / "run" / "eval.samples.npz", allow_pickle=False)
    assert strips["context"].shape == (3, 2, 3, 32, 32) and strips["prediction"].shape == (3, 4, 3, 32, 32)
    assert np.array_equal(strips["truth"], video[:3, 2:6].numpy())


def test_identical_prediction_gives_zero_fvd_and_random_weights_are_labelled(no_lpips_weights: Path) -> None:
    video = moving_clips(n=4, frames=4)
    static = video[:, :1].expand(-1, 4, -1, -1, -1).contiguous()  # a still clip: copying is perfect
    record = evaluate(CopyLastFrame(context_frames=1), [{"video": static}], horizons=[1, 3], samples=4,
                      i3d_weights=save_tiny_detector(no_lpips_weights / "det.pt"), random_weights=True)
    m = record["metrics"]["3"]
    assert m["fvd"] == pytest.approx(0.0, abs=1e-6)
    assert "lpips" not in m and m["lpips_random_weights"] == pytest.approx(0.0, abs=1e-6)
    assert record["features"]["lpips"]["file"] == "random-weights"
    assert record["absent"]["latent_l1"].startswith("the model returns no latents")


def test_short_clips_fail_clearly() -> None:
    with pytest.raises(ValueError, match="context \\+ max horizon = 18"):
        evaluate(LinearExtrapolation(context_frames=2), [{"video": moving_clips(2, 8)}], samples=2, fvd=False,
                 lpips=False)
