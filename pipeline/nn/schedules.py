"""Training schedules as pure functions of the step. Torch free.

V-JEPA recipe: linear warmup then cosine decay of the learning rate, cosine increase of the weight
decay (0.04 -> 0.4), and the target encoder's EMA momentum either linear 0.998 -> 1.0 (V-JEPA) or
constant (V-JEPA 2).
"""

from __future__ import annotations

import math


def _progress(step: int, start: int, end: int) -> float:
    """Fraction of [start, end] done at `step`, clamped to [0, 1]."""
    if end <= start:
        return 1.0
    return min(1.0, max(0.0, (step - start) / (end - start)))


def warmup_cosine(step: int, total: int, warmup: int, base: float, start: float = 0.0, final: float = 0.0) -> float:
    """Learning rate: `start` -> `base` linearly over `warmup` steps, then cosine `base` -> `final` at `total`."""
    if step < warmup:
        return start + (base - start) * step / warmup
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, warmup, total)))


def cosine_increase(step: int, total: int, start: float = 0.04, final: float = 0.4) -> float:
    """Weight decay: cosine from `start` at step 0 to `final` at `total`."""
    return final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, 0, total)))


def ema_momentum(step: int, total: int, start: float = 0.998, final: float = 1.0, constant: bool = False) -> float:
    """Target-encoder momentum: linear `start` -> `final` over `total` steps, or `start` throughout if constant."""
    if constant:
        return start
    return start + (final - start) * _progress(step, 0, total)
