from __future__ import annotations

import pytest
import torch

from pipeline.distributed import threads
from pipeline.distributed.threads import apply_thread_budget, thread_budget


@pytest.mark.parametrize(
    ("cores", "procs", "workers", "expected"),
    [(2, 1, 0, 1), (2, 1, 2, 1), (2, 2, 2, 1), (16, 8, 0, 1), (64, 8, 4, 3), (1, 1, 0, 1), (32, 1, 8, 23),
     (8, 1, 0, 7)],
)
def test_thread_budget_shares_cores_between_ranks_and_workers(cores, procs, workers, expected) -> None:
    assert thread_budget(cores, procs, workers) == expected


def test_user_choice_wins(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "available_cores", lambda: 8)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("WM_NUM_THREADS", raising=False)
        assert apply_thread_budget(local_processes=2, workers=1) == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert apply_thread_budget(local_processes=1, workers=0) is None and torch.get_num_threads() == 2
        monkeypatch.setenv("WM_NUM_THREADS", "3")
        assert apply_thread_budget(local_processes=1, workers=0) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
