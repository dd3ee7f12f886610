from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.eval.lpips import BACKBONE_FILES, LPIPSMetric, backbone_path


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def test_file_names_are_torchvision_published_names() -> None:
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    assert AlexNet_Weights.IMAGENET1K_V1.url.endswith(BACKBONE_FILES["alex"])
    assert VGG16_Weights.IMAGENET1K_V1.url.endswith(BACKBONE_FILES["vgg"])


def test_missing_backbone_names_the_path(torch_home: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        LPIPSMetric("alex")
    expected = torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert str(expected) in str(err.value) and "TORCH_HOME" in str(err.value)
    with pytest.raises(ValueError, match="backbone must be one of"):
        backbone_path("resnet")


def test_offline_with_generated_alexnet_weights(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = backbone_path("alex")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), path)  # real key names, random values
    # no network: any download attempt fails the test
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    metric = LPIPSMetric("alex")
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    same = metric(a, a)
    assert same.shape == (3,) and torch.allclose(same, torch.zeros(3), atol=1e-7)
    diff = metric(a, b)
    assert (diff > 0).all()
    # closer images are closer: a slightly perturbed copy scores below an unrelated image
    assert (metric(a, (a + 0.02 * b).clamp(0, 1)) < diff).all()
    # the backbone really is the generated file: its first conv equals the saved weights
    saved = torch.load(path, weights_only=True)["features.0.weight"]
    assert torch.equal(metric.model.net.slice1[0].weight, saved)
