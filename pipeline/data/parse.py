"""One tar sample -> one clip: the shard format's keys, parsed without trusting them.

`decode_sample` turns the raw bytes of one sample (grouped by key by webdataset) into tensors;
`SkipTracker` counts and reports the samples and shards that had to be skipped; `collate` batches.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from pipeline.data.decode import ClipSpec, Decoder, SkipSample, check_declared, decode_clip

# The only files of a sample that are ever read (compared lower-case, after the key's first dot).
SHARD_SUFFIXES = ("mp4", "json", "txt", "actions.npy", "rewards.npy", "terminals.npy")
ARRAYS = ("actions", "rewards", "terminals")


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exn:
        raise SkipSample("bad_json", f"not valid json: {exn}") from exn
    if not isinstance(meta, dict):
        raise SkipSample("bad_json", f"json is a {type(meta).__name__}, expected an object")
    return meta


def _load_npy(raw: bytes, name: str, spec: ClipSpec) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)  # object arrays raise instead of unpickling
    except Exception as exn:
        raise SkipSample("bad_arrays", f"{name}.npy unreadable: {str(exn)[:100]}") from exn
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf" or array.ndim not in (1, 2):
        raise SkipSample("bad_arrays", f"{name}.npy must be a numeric array [N] or [N, A]")
    if len(array) > spec.max_frames:
        raise SkipSample("too_large", f"{name}.npy has {len(array)} rows")
    return array


def _actions(rows: np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
    """Actions of the clip's frames: int [T] -> one-hot float32 [T, n]; float [T] or [T, A] -> float32 [T, A]."""
    space = meta.get("action_space") if isinstance(meta.get("action_space"), dict) else {}
    discrete = space.get("type") == "discrete" or (not space and rows.dtype.kind in "biu")
    if discrete:
        try:
            n = int(space["n"])
        except (KeyError, TypeError, ValueError) as exn:
            raise SkipSample("bad_json", "discrete actions need json action_space.n") from exn
        flat = rows.reshape(len(rows), -1)
        if flat.shape[1] != 1 or rows.dtype.kind not in "biu" or n < 1 or flat.min() < 0 or flat.max() >= n:
            raise SkipSample("bad_arrays", f"discrete actions must be integers in [0, {n})")
        return torch.nn.functional.one_hot(torch.from_numpy(flat[:, 0].astype(np.int64)), n).float()
    values = torch.from_numpy(rows.astype(np.float32).reshape(len(rows), -1))
    if not torch.isfinite(values).all():
        raise SkipSample("bad_arrays", "continuous actions contain NaN or inf")
    return values


def decode_sample(
    sample: dict[str, Any], spec: ClipSpec, rng: np.random.Generator | None, decoder: Decoder = "decord"
) -> dict[str, Any]:
    """Raw sample {__key__, mp4, json, [*.npy]} -> {video uint8 [T, C, H, W], key, [actions [T, A]],
    [rewards [T]], [terminals [T]]}; raises SkipSample for anything unusable."""
    if "mp4" not in sample:
        raise SkipSample("missing_video", "no .mp4 in the sample")
    if "json" not in sample:
        raise SkipSample("missing_json", "no .json in the sample")
    meta = _parse_json(sample["json"])
    check_declared(meta, spec)
    arrays = {n: _load_npy(sample[f"{n}.npy"], n, spec) for n in ARRAYS if f"{n}.npy" in sample}
    rows = min((len(a) for a in arrays.values()), default=None)
    video, indices = decode_clip(sample["mp4"], spec, rng, decoder, max_index=rows)
    out: dict[str, Any] = {"video": video, "key": sample["__key__"], "__index__": sample.get("__index__", 0)}
    if "actions" in arrays:
        out["actions"] = _actions(arrays["actions"][indices], meta)
    for name in ("rewards", "terminals"):
        if name in arrays:
            values = arrays[name][indices].reshape(len(indices), -1)
            if values.shape[1] != 1:
                raise SkipSample("bad_arrays", f"{name}.npy must have one value per frame")
            out[name] = torch.from_numpy(values[:, 0].astype(np.float32))
    return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """List of clips -> batch: video uint8 [B, T, C, H, W], key list[str], and actions [B, T, A],
    rewards [B, T], terminals [B, T] when every clip has them with the same shape."""
    batch: dict[str, Any] = {
        "video": torch.stack([s["video"] for s in samples]),
        "key": [s["key"] for s in samples],
        "__cursor__": max(s["__index__"] for s in samples) + 1,
    }
    for name in ARRAYS:
        values = [s.get(name) for s in samples]
        if all(v is not None for v in values) and len({tuple(v.shape) for v in values}) == 1:
            batch[name] = torch.stack(values)
    return batch


class SkipTracker:
    """Counts skipped samples and shards per reason (in one worker), warns once per key, never sleeps
    per sample, and stops a stream that makes no progress."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.pending: list[str] = []
        self._warned: set[str] = set()
        self._skips_in_row = 0
        self._shards_since_good = 0
        self._max_skips = 1000
        self._max_shards = 16
        self._shard, self._shard_failed = "?", False

    def configure(self, num_shards: int, max_consecutive_skips: int) -> None:
        self._max_skips = max_consecutive_skips
        self._max_shards = max(4 * num_shards, 16)

    def _report(self, reason: str, what: str, detail: str) -> None:
        self.counts[reason] += 1
        if what not in self._warned:
            self._warned.add(what)
            message = f"skipped {what}: {reason}: {detail}"
            if torch.utils.data.get_worker_info() is None:
                warnings.warn(message, RuntimeWarning, stacklevel=3)
            else:  # a worker's warnings would stay in the worker: the loader re-issues them in the main process
                self.pending.append(message)

    def run(self, fn: Callable[..., dict], sample: dict[str, Any], *args: Any) -> dict | None:
        """fn(sample, *args), or None after counting a SkipSample."""
        try:
            out = fn(sample, *args)
        except SkipSample as exn:
            self._report(exn.reason, f"sample {sample.get('__key__')} ({sample.get('__url__')})", exn.detail)
            self._skips_in_row += 1
            if self._skips_in_row >= self._max_skips:
                raise RuntimeError(
                    f"{self._skips_in_row} samples in a row were unusable (counts: {dict(self.counts)}); "
                    "the shards are not in the expected format"
                ) from exn
            return None
        self._skips_in_row = 0
        return out

    def handler(self, exn: Exception) -> bool:
        """webdataset handler for tar-level errors: count once per shard read, warn once per shard, continue."""
        reason = "truncated_tar" if isinstance(exn, (tarfile.TarError, EOFError)) else "shard_error"
        if isinstance(exn, FileNotFoundError):
            reason = "missing_shard"
        if not self._shard_failed:  # one broken shard raises in the member read and again in the listing
            self._shard_failed = True
            self._report(reason, f"shard {self._shard}", str(exn.args[0] if exn.args else exn)[:160])
        return True

    def watch_shards(self, src: Iterator[dict], retries: int, delay: float) -> Iterator[dict]:
        """Retry a missing local shard, then skip it with a warning; stop when shards yield nothing usable."""
        for item in src:
            self._shards_since_good += 1
            if self._shards_since_good > self._max_shards:
                raise RuntimeError(
                    f"{self._shards_since_good - 1} shards in a row gave no sample at all "
                    f"(counts: {dict(self.counts)}); check the dataset"
                )
            url = item["url"]
            self._shard, self._shard_failed = url, False
            if "://" not in url and not url.startswith("pipe:") and not wait_for(url, retries, delay):
                self._report("missing_shard", f"shard {url}", "missing after retries")
                continue
            yield item

    def seen(self, src: Iterator[dict]) -> Iterator[dict]:
        """Pass samples through; any sample read from a shard counts as progress for watch_shards."""
        for sample in src:
            self._shards_since_good = 0
            yield sample


def wait_for(path: str, retries: int, delay: float) -> bool:
    for attempt in range(retries + 1):
        if os.path.isfile(path):
            return True
        if attempt < retries:
            time.sleep(delay)
    return False
