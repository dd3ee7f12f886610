"""Whole recorded episodes from shard tars, for the offline goal-reaching benchmark.

Only the shard format's keys are read (mp4 decoded from memory with PyAV, npy with allow_pickle=False);
a sample that fails to decode is skipped and counted, never fatal.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)
KEYS = ("mp4", "json", "actions.npy", "rewards.npy", "terminals.npy")


@dataclass
class Episode:
    """frames uint8 [T, C, H, W]; actions int64 [T] (after frame t); rewards float32 [T]; key."""

    key: str
    frames: Tensor
    actions: Tensor
    rewards: Tensor


def decode_mp4(data: bytes) -> Tensor:
    """mp4 bytes -> uint8 [T, 3, H, W] (all frames, RGB)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError("no frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def _group(tar: tarfile.TarFile) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for member in tar:
        if not member.isfile():
            continue
        name = Path(member.name).name
        key, _, ext = name.partition(".")
        if ext in KEYS:
            handle = tar.extractfile(member)
            if handle is not None:
                samples.setdefault(key, {})[ext] = handle.read()
    return samples


def _episode(key: str, parts: dict[str, bytes]) -> Episode:
    if "mp4" not in parts or "actions.npy" not in parts:
        raise ValueError("needs mp4 and actions.npy")
    meta = json.loads(parts.get("json", b"{}"))
    frames = decode_mp4(parts["mp4"])
    actions = np.load(io.BytesIO(parts["actions.npy"]), allow_pickle=False)
    rewards = np.load(io.BytesIO(parts["rewards.npy"]), allow_pickle=False) if "rewards.npy" in parts else None
    T = min(len(frames), len(actions))
    if actions.ndim != 1 or not np.issubdtype(actions.dtype, np.integer):
        raise ValueError("actions must be discrete int [T]")
    n = int(meta.get("action_space", {}).get("n", int(actions.max()) + 1))
    if (actions < 0).any() or (actions >= n).any():
        raise ValueError(f"actions outside [0, {n})")
    rew = torch.zeros(T) if rewards is None else torch.from_numpy(rewards[:T].astype(np.float32))
    return Episode(key, frames[:T], torch.from_numpy(actions[:T].astype(np.int64)), rew)


def read_episodes(directory: str | Path, limit: int | None = None) -> tuple[list[Episode], int]:
    """Episodes of every *.tar in `directory` (sorted) -> (episodes, skipped count)."""
    episodes, skipped = [], 0
    for shard in sorted(Path(directory).glob("*.tar")):
        try:
            with tarfile.open(shard) as tar:
                groups = _group(tar)
        except (tarfile.TarError, OSError) as err:
            log.warning("skipping unreadable shard %s: %s", shard, err)
            skipped += 1
            continue
        for key, parts in sorted(groups.items()):
            try:
                episodes.append(_episode(key, parts))
            except Exception as err:  # noqa: BLE001 - any bad sample is skipped and counted
                log.warning("skipping episode %s in %s: %s", key, shard.name, err)
                skipped += 1
            if limit is not None and len(episodes) >= limit:
                return episodes, skipped
    return episodes, skipped


def goal_tasks(episode: Episode, context: int, steps: int, per_episode: int) -> Iterator[int]:
    """Start indices t0 (last context frame) spread over the episode with t0 + steps inside it."""
    first, last = context - 1, len(episode.frames) - 1 - steps
    if last < first:
        return iter(())
    count = min(per_episode, last - first + 1)
    return iter(np.linspace(first, last, count).round().astype(int).tolist())
