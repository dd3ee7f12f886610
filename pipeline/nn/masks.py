"""V-JEPA 3-D multi-block masks and the batch transform that makes them in the data workers. Torch only.

A mask is a LongTensor [B, K] of token indices into the time-major token grid [T', H', W'] of a clip
(index = (t * H' + h) * W' + w). For every mask generator the target is the union of its blocks and
the context is the rest; within a batch all context masks have one length and all target masks another
(a random subset of each sample's tokens is kept down to the batch minimum), so they stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from pipeline.distributed.env import dist_env, worker_info

Grid = tuple[int, int, int]

# The data stream (pipeline.data.stream) puts its position in the batch under this key before the batch
# transform runs, and the loader removes it afterwards. Named here rather than imported: pipeline.nn stays
# free of the data stack. Every field is an int; together they name one batch of one run.
POSITION_KEY = "__stream__"
POSITION_FIELDS = ("seed", "train", "epoch", "rank", "worker", "cursor")


def apply_masks(x: Tensor, masks: Tensor | Sequence[Tensor]) -> Tensor:
    """Keep the tokens named by the masks.

    x:     [B, N, ...] tokens (any trailing shape, e.g. [B, N, D] features or [B, N, 3] coordinates).
    masks: [B, K] long indices into N, or a sequence of M such tensors (same K).
    returns [B, K, ...], or [M * B, K, ...] for a sequence (mask-major, as in the V-JEPA code).
    """
    with torch.profiler.record_function("wm.masks"):  # a phase of `wm bench profile`
        if isinstance(masks, Tensor):
            idx = masks.reshape(*masks.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
            return torch.gather(x, 1, idx)
        return torch.cat([apply_masks(x, m) for m in masks], dim=0)


@dataclass(frozen=True)
class BlockSpec:
    """One mask generator: `num_blocks` blocks of `spatial_scale` of the frame area each."""

    spatial_scale: float = 0.15
    num_blocks: int = 8
    temporal_scale: float = 1.0
    aspect_ratio: tuple[float, float] = (0.75, 1.5)


DEFAULT_SPECS = (BlockSpec(0.15, 8), BlockSpec(0.7, 2))


def block_size(grid: Grid, spec: BlockSpec, generator: torch.Generator) -> tuple[int, int, int]:
    """Sample one block size (t, h, w) in tokens: area = spatial_scale * H' * W', random aspect ratio."""
    t, h, w = grid
    lo, hi = (math.log(a) for a in spec.aspect_ratio)
    u = torch.rand(1, generator=generator, device=generator.device).item()
    ratio = math.exp(lo + (hi - lo) * u)
    area = spec.spatial_scale * h * w
    bh = min(h, max(1, round(math.sqrt(area * ratio))))
    bw = min(w, max(1, round(math.sqrt(area / ratio))))
    bt = min(t, max(1, round(spec.temporal_scale * t)))
    return bt, bh, bw


def _starts(batch: int, blocks: int, limit: int, generator: torch.Generator) -> Tensor:
    """Random block start offsets in [0, limit): [B, blocks, 1, 1, 1]."""
    s = torch.randint(0, limit, (batch, blocks), generator=generator, device=generator.device)
    return s[:, :, None, None, None]


def block_union(grid: Grid, size: tuple[int, int, int], batch: int, blocks: int, generator: torch.Generator) -> Tensor:
    """Union of `blocks` randomly placed blocks of `size` per sample: bool [B, T'*H'*W'] (True = target)."""
    (t, h, w), (bt, bh, bw) = grid, size
    dev = generator.device
    ar_t = torch.arange(t, device=dev)[None, None, :, None, None]
    ar_h = torch.arange(h, device=dev)[None, None, None, :, None]
    ar_w = torch.arange(w, device=dev)[None, None, None, None, :]
    st, sh, sw = (_starts(batch, blocks, n - b + 1, generator) for n, b in ((t, bt), (h, bh), (w, bw)))
    inside = (ar_t >= st) & (ar_t < st + bt) & (ar_h >= sh) & (ar_h < sh + bh) & (ar_w >= sw) & (ar_w < sw + bw)
    return inside.any(dim=1).reshape(batch, -1)  # (B, T'*H'*W')


def keep_equal(members: Tensor, generator: torch.Generator) -> Tensor:
    """Indices of a random subset of each row's True entries, all rows cut to the smallest count: [B, K] sorted."""
    k = int(members.sum(dim=1).min())
    score = torch.rand(members.shape, generator=generator, device=generator.device)
    score = score.masked_fill(~members, 2.0)  # non-members sort last
    idx = score.argsort(dim=1)[:, :k]
    return idx.sort(dim=1).values


def multiblock_masks(
    grid: Grid, batch: int, spec: BlockSpec, generator: torch.Generator, min_context: int = 1, tries: int = 20
) -> tuple[Tensor, Tensor]:
    """One generator's masks: (context [B, Kc], target [B, Kt]) long, disjoint per sample.

    The block size is sampled once per batch (as in V-JEPA); a draw that leaves some sample fewer than
    `min_context` context tokens is redrawn, up to `tries` times.
    """
    for _ in range(tries):
        size = block_size(grid, spec, generator)
        target = block_union(grid, size, batch, spec.num_blocks, generator)
        if int((~target).sum(dim=1).min()) >= min_context:
            return keep_equal(~target, generator), keep_equal(target, generator)
    raise ValueError(
        f"mask generator {spec} left fewer than {min_context} context tokens on a {grid} token grid "
        f"in {tries} draws: lower spatial_scale or num_blocks"
    )


def future_masks(
    grid: Grid, batch: int, context_slots: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Future mode: context = every token of the first `context_slots` time slots, target = all later ones."""
    t, h, w = grid
    if not 0 < context_slots < t:
        raise ValueError(f"future masking needs 0 < context slots < {t} time slots, got {context_slots}")
    n_ctx = context_slots * h * w
    idx = torch.arange(t * h * w, device=device).expand(batch, -1)
    return idx[:, :n_ctx].contiguous(), idx[:, n_ctx:].contiguous()


def make_masks(
    grid: Grid,
    batch: int,
    generator: torch.Generator,
    specs: Sequence[BlockSpec] = DEFAULT_SPECS,
    mode: Literal["multiblock", "future"] = "multiblock",
    context_slots: int = 1,
) -> tuple[list[Tensor], list[Tensor]]:
    """Context and target masks of every generator: two lists (one entry per generator) of [B, K] long."""
    if mode == "future":
        ctx, tgt = future_masks(grid, batch, context_slots, generator.device)
        return [ctx], [tgt]
    if mode != "multiblock":
        raise ValueError(f"unknown mask mode {mode!r}: use 'multiblock' or 'future'")
    pairs = [multiblock_masks(grid, batch, spec, generator) for spec in specs]
    return [c for c, _ in pairs], [t for _, t in pairs]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several non-negative integers (seed, position...), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class MaskCollator:
    """Batch transform for the data module: adds `masks_ctx` and `masks_tgt` (lists of [B, K] long) to a batch.

    The token grid comes from the batch's `video` [B, T, C, H, W]. In the data stream each batch carries its
    position (POSITION_KEY: data seed, train/eval, epoch, rank, logical worker, sample cursor) and the masks
    are drawn from a generator seeded by (seed, position): a pure function of where the batch sits in the run,
    so a resumed run draws exactly the masks of the uninterrupted one, and epochs, ranks and workers differ.
    Called on a batch without a position (benchmarks, tests), it counts its calls per process instead, which
    repeats a run but does not survive a restart. Picklable (plain attributes), so DataLoader workers get a copy.
    """

    def __init__(
        self,
        tubelet_size: int = 2,
        patch_size: int = 16,
        spatial_scales: Sequence[float] = (0.15, 0.7),
        num_blocks: Sequence[int] = (8, 2),
        temporal_scale: float = 1.0,
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        mode: Literal["multiblock", "future"] = "multiblock",
        context_frames: int = 2,
        seed: int = 0,
    ) -> None:
        """
        Args:
            tubelet_size: frames per token (the encoder's tubelet).
            patch_size: pixels per token side (the encoder's patch).
            spatial_scales: fraction of the frame area covered by one block, per mask generator.
            num_blocks: blocks per mask generator (same length as spatial_scales).
            temporal_scale: fraction of the clip's time slots a block spans (1.0 = full temporal extent).
            aspect_ratio: range of block aspect ratios (height / width), sampled log-uniformly.
            mode: "multiblock" (V-JEPA) or "future" (context = first `context_frames` frames, target = the rest).
            context_frames: visible frames in "future" mode (a multiple of tubelet_size).
            seed: base seed of the mask generator.
        """
        if len(spatial_scales) != len(num_blocks):
            raise ValueError(f"spatial_scales {spatial_scales} and num_blocks {num_blocks} differ in length")
        if context_frames % tubelet_size:
            raise ValueError(f"context_frames {context_frames} is not a multiple of tubelet_size {tubelet_size}")
        self.tubelet_size, self.patch_size = tubelet_size, patch_size
        self.specs = tuple(
            BlockSpec(float(s), int(n), temporal_scale, tuple(aspect_ratio))
            for s, n in zip(spatial_scales, num_blocks, strict=True)
        )
        self.mode, self.context_frames, self.seed = mode, context_frames, seed
        self.calls = 0

    @property
    def num_generators(self) -> int:
        return 1 if self.mode == "future" else len(self.specs)

    def grid(self, video_shape: Sequence[int]) -> Grid:
        """Token grid of a [B, T, C, H, W] video."""
        t, h, w = video_shape[1], video_shape[3], video_shape[4]
        tt, p = self.tubelet_size, self.patch_size
        if t % tt or h % p or w % p:
            raise ValueError(f"clips of {t}x{h}x{w} do not split into {tt}x{p}x{p} tubelets")
        return t // tt, h // p, w // p

    def masks(self, video_shape: Sequence[int], generator: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
        """Masks for a batch of videos of `video_shape` [B, T, C, H, W] drawn from `generator`."""
        slots = self.context_frames // self.tubelet_size
        return make_masks(self.grid(video_shape), video_shape[0], generator, self.specs, self.mode, slots)

    def batch_seed(self, batch: dict[str, Any]) -> int:
        """Seed of a batch's masks: from its stream position, or (rank, worker, call count) without one."""
        position = batch.get(POSITION_KEY)
        if position is None:  # outside the stream: nothing in the batch says where it is
            worker, _ = worker_info()
            self.calls += 1
            return mix_seed(self.seed, dist_env().rank, worker, self.calls - 1)
        missing = [f for f in POSITION_FIELDS if f not in position]
        if missing:
            raise ValueError(f"the batch's stream position {sorted(position)} lacks {missing}: cannot seed its masks")
        return mix_seed(self.seed, *(int(position[f]) for f in POSITION_FIELDS))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(self.batch_seed(batch))
        batch["masks_ctx"], batch["masks_tgt"] = self.masks(tuple(batch["video"].shape), gen)
        return batch
