"""MaskCollator seeded by the batch's stream position: a pure function of (seed, train, epoch, rank, worker, cursor)."""

from __future__ import annotations

import pickle

import pytest
import torch

from pipeline.nn.masks import POSITION_FIELDS, POSITION_KEY, MaskCollator


def batch_at(**where: int) -> dict:
    position = {"seed": 3, "train": 1, "epoch": 0, "rank": 0, "worker": 0, "cursor": 8}
    position.update(where)
    return {"video": torch.zeros(4, 8, 3, 64, 64, dtype=torch.uint8), POSITION_KEY: position}


def masks(collator: MaskCollator, batch: dict) -> list[torch.Tensor]:
    out = collator(batch)
    return [*out["masks_ctx"], *out["masks_tgt"]]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_same_position_gives_the_same_masks_whatever_came_before(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = MaskCollator(tubelet_size=2, patch_size=8, seed=5)
    used = pickle.loads(pickle.dumps(MaskCollator(tubelet_size=2, patch_size=8, seed=5)))
    for cursor in (2, 4, 6):  # a worker that has already made other batches (the uninterrupted run)
        masks(used, batch_at(cursor=cursor))
    reference = masks(fresh, batch_at(epoch=1, worker=1, cursor=8))
    assert len(reference) == 4 and reference[0].shape[0] == 4 and reference[3].max() < 4 * 8 * 8
    assert same(masks(used, batch_at(epoch=1, worker=1, cursor=8)), reference)
    # the position, not the process, decides: the rank in the environment and the call count do not matter
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert same(masks(fresh, batch_at(epoch=1, worker=1, cursor=8)), reference)


@pytest.mark.parametrize(("field", "value"), [("epoch", 1), ("rank", 1), ("worker", 1), ("cursor", 10),
                                              ("seed", 4), ("train", 0)])  # fmt: skip
def test_every_position_field_changes_the_masks(field: str, value: int) -> None:
    collator = MaskCollator(tubelet_size=2, patch_size=8, seed=5)
    assert not same(masks(collator, batch_at(**{field: value})), masks(collator, batch_at()))


def test_epochs_draw_different_masks_at_every_cursor() -> None:
    collator = MaskCollator(tubelet_size=2, patch_size=8, seed=0)
    for cursor in (2, 4, 6, 8):
        first, second = (masks(collator, batch_at(epoch=e, cursor=cursor)) for e in (0, 1))
        assert not same(first, second), f"epochs 0 and 1 drew the same masks at cursor {cursor}"


def test_collator_seed_changes_the_masks() -> None:
    a = masks(MaskCollator(tubelet_size=2, patch_size=8, seed=0), batch_at())
    assert not same(masks(MaskCollator(tubelet_size=2, patch_size=8, seed=1), batch_at()), a)


def test_future_mode_ignores_the_position_and_an_incomplete_position_fails() -> None:
    future = MaskCollator(tubelet_size=2, patch_size=8, mode="future", context_frames=4)
    assert same(masks(future, batch_at(epoch=0)), masks(future, batch_at(epoch=9)))
    broken = batch_at()
    del broken[POSITION_KEY]["cursor"]
    with pytest.raises(ValueError, match=r"lacks \['cursor'\]"):
        MaskCollator(tubelet_size=2, patch_size=8)(broken)
    assert POSITION_FIELDS == ("seed", "train", "epoch", "rank", "worker", "cursor")
