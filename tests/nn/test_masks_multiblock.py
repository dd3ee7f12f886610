"""V-JEPA 3-D multi-block masks: counts, disjointness, full temporal extent, seeding, equal lengths, future mode."""

from __future__ import annotations

import pickle

import pytest
import torch

from pipeline.nn.masks import (
    DEFAULT_SPECS,
    BlockSpec,
    MaskCollator,
    apply_masks,
    block_size,
    future_masks,
    make_masks,
    mix_seed,
    multiblock_masks,
)

GRID = (8, 14, 14)  # 16 frames at 224 px with 2x16x16 tubelets
N = 8 * 14 * 14


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_two_default_generators_context_and_target_are_disjoint_and_equal_length() -> None:
    assert [(s.spatial_scale, s.num_blocks, s.aspect_ratio) for s in DEFAULT_SPECS] == [
        (0.15, 8, (0.75, 1.5)), (0.7, 2, (0.75, 1.5))
    ]  # fmt: skip
    ctx, tgt = make_masks(GRID, 6, gen())
    assert len(ctx) == len(tgt) == 2
    for c, t in zip(ctx, tgt, strict=True):
        assert c.shape[0] == t.shape[0] == 6 and c.dtype == t.dtype == torch.long
        assert c.shape[1] > 0 and t.shape[1] > 0 and c.shape[1] + t.shape[1] <= N
        for b in range(6):
            cs, ts = set(c[b].tolist()), set(t[b].tolist())
            assert len(cs) == c.shape[1] and len(ts) == t.shape[1]  # no duplicates
            assert not cs & ts
            assert max(cs | ts) < N and min(cs | ts) >= 0
    # the 0.7 generator hides much more than the 0.15 one
    assert tgt[1].shape[1] > tgt[0].shape[1]


def test_blocks_span_the_full_clip_in_time_and_have_the_requested_area() -> None:
    spec = BlockSpec(0.15, 1)
    for seed in range(5):
        bt, bh, bw = block_size(GRID, spec, gen(seed))
        assert bt == GRID[0]
        assert abs(bh * bw - 0.15 * 14 * 14) <= bh + bw  # rounding of each side
        assert 0.75 * 0.6 <= bh / bw <= 1.5 / 0.6
    # one block, one sample: the target is a full-time tube, identical in every time slot, of the sampled size
    _, tgt = multiblock_masks(GRID, 1, spec, gen(3))
    per_slot = tgt[0].view(-1) // (14 * 14)
    spatial = tgt[0] % (14 * 14)
    for t in range(GRID[0]):
        assert torch.equal(spatial[per_slot == t], spatial[per_slot == 0])
    bt, bh, bw = block_size(GRID, spec, gen(3))
    assert tgt.shape[1] == bt * bh * bw


def test_masks_are_seeded() -> None:
    a, b, c = make_masks(GRID, 4, gen(1)), make_masks(GRID, 4, gen(1)), make_masks(GRID, 4, gen(2))
    assert all(torch.equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a[1], c[1], strict=True))


def test_impossible_masks_fail_with_advice() -> None:
    with pytest.raises(ValueError, match="lower spatial_scale or num_blocks"):
        multiblock_masks((2, 4, 4), 2, BlockSpec(1.0, 2, aspect_ratio=(1.0, 1.0)), gen())


def test_future_mode_hides_every_tubelet_after_the_context() -> None:
    ctx, tgt = future_masks((4, 2, 3), 2, context_slots=1)
    assert ctx.tolist() == [list(range(6))] * 2 and tgt.tolist() == [list(range(6, 24))] * 2
    with pytest.raises(ValueError, match="0 < context slots < 4"):
        future_masks((4, 2, 3), 2, context_slots=4)


def test_apply_masks_gathers_tokens_and_concatenates_masks() -> None:
    x = torch.arange(2 * 5 * 3).view(2, 5, 3)
    m = torch.tensor([[0, 4], [1, 2]])
    out = apply_masks(x, m)
    assert out.tolist() == [[x[0, 0].tolist(), x[0, 4].tolist()], [x[1, 1].tolist(), x[1, 2].tolist()]]
    assert apply_masks(x, [m, m]).shape == (4, 2, 3)
    assert apply_masks(torch.zeros(2, 5, 4, 3), m).shape == (2, 2, 4, 3)


def test_collator_adds_masks_is_picklable_and_differs_per_step_worker_and_rank(monkeypatch) -> None:
    collator = pickle.loads(pickle.dumps(MaskCollator(tubelet_size=2, patch_size=8, seed=5)))
    batch = {"video": torch.zeros(3, 8, 3, 64, 64, dtype=torch.uint8)}
    first = collator(dict(batch))
    second = collator(dict(batch))
    assert len(first["masks_ctx"]) == len(first["masks_tgt"]) == 2
    assert first["masks_ctx"][0].shape[0] == 3 and first["masks_tgt"][1].max() < 4 * 8 * 8
    assert not torch.equal(first["masks_tgt"][0], second["masks_tgt"][0])  # a new draw per step
    replay = MaskCollator(tubelet_size=2, patch_size=8, seed=5)(dict(batch))
    assert torch.equal(replay["masks_tgt"][1], first["masks_tgt"][1])  # the same run repeats exactly
    assert mix_seed(5, 0, 0, 0) != mix_seed(5, 1, 0, 0) != mix_seed(5, 0, 1, 0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    other_rank = MaskCollator(tubelet_size=2, patch_size=8, seed=5)(dict(batch))
    assert not torch.equal(other_rank["masks_tgt"][0], first["masks_tgt"][0])


def test_collator_future_mode_and_bad_clips() -> None:
    collator = MaskCollator(tubelet_size=2, patch_size=8, mode="future", context_frames=4)
    out = collator({"video": torch.zeros(2, 8, 3, 32, 32, dtype=torch.uint8)})
    assert collator.num_generators == 1 and out["masks_ctx"][0].shape == (2, 2 * 16)
    assert out["masks_tgt"][0].shape == (2, 2 * 16)
    with pytest.raises(ValueError, match="do not split into 2x8x8 tubelets"):
        collator({"video": torch.zeros(2, 7, 3, 32, 32, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="not a multiple of tubelet_size"):
        MaskCollator(tubelet_size=2, context_frames=3)
