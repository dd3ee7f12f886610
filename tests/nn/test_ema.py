from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.nn.ema import ema_update_, ema_update_module_, local_shards


def test_ema_formula_and_endpoints() -> None:
    target, online = [torch.zeros(3)], [torch.ones(3)]
    ema_update_(target, online, 0.9)
    torch.testing.assert_close(target[0], torch.full((3,), 0.1))
    ema_update_(target, online, 1.0)
    torch.testing.assert_close(target[0], torch.full((3,), 0.1))
    ema_update_(target, online, 0.0)
    torch.testing.assert_close(target[0], torch.ones(3))


def test_ema_module_trails_online_weights() -> None:
    torch.manual_seed(0)
    online, target = nn.Linear(4, 4), nn.Linear(4, 4)
    target.load_state_dict(online.state_dict())
    with torch.no_grad():
        online.weight.add_(1.0)
    before = target.weight.clone()
    ema_update_module_(target, online, 0.99)
    expected = 0.99 * before + 0.01 * online.weight
    torch.testing.assert_close(target.weight, expected)
    assert not torch.equal(target.weight, online.weight)


def test_ema_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="momentum"):
        ema_update_([torch.zeros(1)], [torch.zeros(1)], 1.5)
    with pytest.raises(ValueError, match="shape mismatch"):
        ema_update_([torch.zeros(2)], [torch.zeros(3)], 0.5)


def test_local_shards_prefers_zero3_partition() -> None:
    p = nn.Parameter(torch.empty(0))
    p.ds_tensor = torch.ones(5)
    q = nn.Parameter(torch.zeros(2))
    shards = local_shards([p, q])
    assert shards[0] is p.ds_tensor and shards[1].shape == (2,)
