"""Schedule endpoints and shapes: warmup + cosine lr, cosine weight decay, EMA momentum."""

from __future__ import annotations

import pytest

from pipeline.nn.schedules import cosine_increase, ema_momentum, warmup_cosine


def test_warmup_cosine_endpoints_and_monotonic_phases() -> None:
    lrs = [warmup_cosine(s, total=100, warmup=10, base=1e-3, start=2e-4, final=1e-6) for s in range(101)]
    assert lrs[0] == pytest.approx(2e-4) and lrs[10] == pytest.approx(1e-3) and lrs[100] == pytest.approx(1e-6)
    assert lrs[5] == pytest.approx(6e-4)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lrs[55] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)  # half way through the cosine
    assert warmup_cosine(500, total=100, warmup=10, base=1e-3, final=1e-6) == pytest.approx(1e-6)


def test_weight_decay_rises_from_004_to_04() -> None:
    assert cosine_increase(0, 1000) == pytest.approx(0.04)
    assert cosine_increase(1000, 1000) == pytest.approx(0.4)
    assert cosine_increase(500, 1000) == pytest.approx(0.22)
    assert cosine_increase(2000, 1000) == pytest.approx(0.4)


def test_ema_momentum_linear_or_constant() -> None:
    assert ema_momentum(0, 100) == pytest.approx(0.998)
    assert ema_momentum(50, 100) == pytest.approx(0.999)
    assert ema_momentum(100, 100) == pytest.approx(1.0)
    assert ema_momentum(100, 100, start=0.99925, constant=True) == pytest.approx(0.99925)
