from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.nn.ema import ema_update_, ema_update_module_, full_copy, local_shards


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


def zero3_like(full: torch.Tensor, rank: int, world: int, persistent: bool) -> nn.Parameter:
    """A parameter laid out as ZeRO-3 lays it out on `rank`: a flat shard in ds_tensor; `data` is the full
    tensor for a persistent (small) parameter and an empty placeholder otherwise."""
    p = nn.Parameter(full.clone() if persistent else torch.empty(0), requires_grad=False)
    size = -(-full.numel() // world)
    flat = torch.cat([full.flatten(), full.new_zeros(size * world - full.numel())])
    p.ds_tensor = flat[rank * size : (rank + 1) * size].clone()
    p.ds_numel = full.numel()
    return p


def test_zero3_ema_updates_shards_and_persistent_full_copies() -> None:
    torch.manual_seed(0)
    t_full, o_full = [torch.randn(5, 3), torch.randn(4)], [torch.randn(5, 3), torch.randn(4)]
    target, online = nn.ParameterList(), nn.ParameterList()
    for t, o, persistent in zip(t_full, o_full, (False, True), strict=True):
        target.append(zero3_like(t, 1, 2, persistent))
        online.append(zero3_like(o, 1, 2, persistent))
    ema_update_module_(target, online, 0.75)
    for i, (t, o) in enumerate(zip(t_full, o_full, strict=True)):
        expected = zero3_like(0.75 * t + 0.25 * o, 1, 2, persistent=True)
        torch.testing.assert_close(target[i].ds_tensor, expected.ds_tensor)
    assert target[0].data.numel() == 0  # a released placeholder is left alone
    torch.testing.assert_close(target[1].data, 0.75 * t_full[1] + 0.25 * o_full[1])  # what forward reads
    online[1].data = torch.empty(0)
    with pytest.raises(ValueError, match="full ZeRO-3 values"):
        ema_update_module_(target, online, 0.5)
    torch.testing.assert_close(target[1].data, 0.75 * t_full[1] + 0.25 * o_full[1])  # nothing half-updated


def test_full_copy_ignores_plain_and_released_parameters() -> None:
    plain = nn.Parameter(torch.ones(3))
    assert full_copy(plain) is None and local_shards([plain])[0].data_ptr() == plain.data_ptr()
    released = zero3_like(torch.ones(6), 0, 2, persistent=False)
    assert full_copy(released) is None
    kept = zero3_like(torch.ones(6), 0, 2, persistent=True)
    copy = full_copy(kept)
    assert copy is not None and copy.data_ptr() == kept.data_ptr() and copy.shape == (6,)
    view = nn.Parameter(torch.ones(6))
    view.ds_tensor, view.ds_numel = view.data.view(-1), 6  # world size 1 sharing storage: one update, not two
    assert full_copy(view) is None



def _bf16_ema_run(master: dict | None, steps: int = 2000) -> tuple[nn.Module, ...]:
    """(bf16 EMA copy, fp32 reference EMA, the bf16 copy's initial values, the fp32 initial values) after `steps`
    updates from online weights drifting like training, over the real V-JEPA momentum schedule (0.998 -> 1.0)."""
    from pipeline.nn.schedules import ema_momentum

    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.Linear(64, 16))
    reference = copy.deepcopy(online)
    initial = copy.deepcopy(online)
    target = copy.deepcopy(online).to(torch.bfloat16)  # what DeepSpeed bf16 does to the whole module
    start = copy.deepcopy(target)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in online.parameters():
                p.add_(torch.randn(p.shape, generator=gen), alpha=1e-3)
        m = ema_momentum(step, steps, 0.998, 1.0)
        ema_update_module_(reference, online, m)
        ema_update_module_(target, online, m, master=master)
    return target, reference, start, initial


def test_a_bf16_ema_without_fp32_accumulation_freezes() -> None:
    frozen, _, start, _ = _bf16_ema_run(master=None)
    stuck = sum((a == b).sum().item() for a, b in zip(frozen.parameters(), start.parameters(), strict=True))
    assert stuck / sum(p.numel() for p in start.parameters()) > 0.5
    assert torch.equal(frozen[1].weight, start[1].weight)  # LayerNorm gains never move


def test_bf16_ema_accumulates_in_fp32_and_moves_wherever_the_reference_moves() -> None:
    master: dict = {}
    target, reference, start, initial = _bf16_ema_run(master=master)
    params = zip(target.parameters(), reference.parameters(), start.parameters(), initial.parameters(), strict=True)
    for i, (t, r, s, r0) in enumerate(params):
        acc = master[f"shard.{i}"]
        assert t.dtype == torch.bfloat16 and acc.dtype == torch.float32
        # the accumulator starts from the bf16-rounded weights (the fp32 ones are gone after the cast); beyond that
        # initial rounding error, decayed by the momentum, it is the fp32 reference
        assert ((acc - r).abs() <= (s.float() - r0).abs() + 1e-6).all()
        half_ulp = r.abs() * 2.0**-8
        assert ((t.float() - r).abs() <= half_ulp + (s.float() - r0).abs() + 1e-6).all()  # the reference, rounded
        moved = (r - s.float()).abs() > 2 * half_ulp  # the reference moved by more than bf16 can hide
        assert moved.float().mean() > 0.5 and (t != s)[moved].all()
