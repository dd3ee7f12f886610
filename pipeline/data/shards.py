"""Write samples of the shard format into WebDataset tar shards plus a manifest.json.

A sample is `KEY.mp4` (+ `KEY.json`, optional `KEY.txt`, optional `KEY.actions.npy`,
`KEY.rewards.npy`, `KEY.terminals.npy`), see data/README.md. Shards are written to a temporary
name and renamed when complete, and the manifest is written last (also tmp + rename), so a crash
never leaves a half-written shard listed in a manifest.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.manifest import MANIFEST_NAME, Manifest, ShardEntry, file_sha256, write_manifest

# webdataset groups tar members by the part of the basename before the first dot, so keys have no dots.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
ARRAY_KEYS = {"actions": np.int64, "rewards": np.float32, "terminals": np.uint8}
TMP_SUFFIX = ".tmp"


@dataclass
class Sample:
    """One sample of the shard format.

    `actions: [T] int64` (discrete, action taken after frame t), `rewards: [T] float32`,
    `terminals: [T] uint8` (0/1); T equals `meta["num_frames"]`.
    """

    key: str
    mp4: bytes
    meta: dict[str, Any]
    caption: str | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise an array with np.save (allow_pickle=False: object arrays are refused, not pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_sample(sample: Sample) -> dict[str, bytes | str]:
    """The tar members of `sample` as webdataset's `{"__key__": key, ext: bytes}` dict."""
    if not KEY_PATTERN.match(sample.key):
        raise ValueError(f"sample key {sample.key!r} must match {KEY_PATTERN.pattern} (no dots or spaces)")
    record: dict[str, bytes | str] = {"__key__": sample.key, "mp4": sample.mp4}
    record["json"] = json.dumps(sample.meta, sort_keys=True).encode("utf-8")
    if sample.caption:
        record["txt"] = sample.caption.encode("utf-8")
    for name, array in sample.arrays.items():
        if name not in ARRAY_KEYS:
            raise ValueError(f"unknown array {name!r}; the shard format has {sorted(ARRAY_KEYS)}")
        record[f"{name}.npy"] = npy_bytes(np.asarray(array).astype(ARRAY_KEYS[name], copy=False))
    return record


class ShardWriter:
    """Write `Sample`s into `DIR/PREFIX-%06d.tar` shards of `shard_size` samples, then `DIR/manifest.json`.

    Use as a context manager; on a clean exit the last shard is closed and the manifest written.
    On an exception the partial shard stays under its `.tmp` name and no manifest is written.
    """

    def __init__(
        self,
        out_dir: str | Path,
        shard_size: int = 64,
        prefix: str = "shard",
        info: dict[str, Any] | None = None,
        overwrite: bool = False,
    ):
        """
        Args:
            out_dir: dataset directory (created if missing).
            shard_size: samples per shard (the last shard may hold fewer).
            prefix: shard file name prefix; shards are PREFIX-000000.tar, PREFIX-000001.tar, ...
            info: dataset-level fields for the manifest (source, resolution, fps, action_space, created_by).
            overwrite: replace an existing dataset in out_dir instead of refusing.
        """
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.shard_size, self.prefix = shard_size, prefix
        self.info = dict(info or {})
        self.entries: list[ShardEntry] = []
        self.stats: dict[str, Any] = {}
        self.manifest: Manifest | None = None
        self._keys: set[str] = set()
        self._tar: Any = None
        self._file: Any = None
        self._count = 0
        self._prepare(overwrite)

    def _prepare(self, overwrite: bool) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = [p for p in self.out_dir.iterdir() if p.name == MANIFEST_NAME or p.suffix in (".tar", TMP_SUFFIX)]
        if old and not overwrite:
            raise FileExistsError(f"{self.out_dir} already holds a dataset ({old[0].name}); pass overwrite/--force")
        for path in old:
            path.unlink()

    def shard_name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def _open(self) -> None:
        # Imported here: webdataset imports torch, which `wm shards verify` and manifest readers do not need.
        import webdataset as wds

        path = self.out_dir / (self.shard_name(len(self.entries)) + TMP_SUFFIX)
        self._file = open(path, "wb")  # noqa: SIM115 - closed in _close
        # Fixed mtime: the same samples give byte-identical shards (and sha256) on a rebuild.
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0.0, user="wm", group="wm", mode=0o644)
        self._count = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self.shard_name(len(self.entries))
        tmp, final = self.out_dir / (name + TMP_SUFFIX), self.out_dir / name
        os.replace(tmp, final)
        self.entries.append(ShardEntry(name=name, samples=self._count, bytes=final.stat().st_size,
                                       sha256=file_sha256(final)))
        self._tar, self._file = None, None

    def write(self, sample: Sample) -> None:
        """Append one sample, starting a new shard every `shard_size` samples."""
        record = encode_sample(sample)
        if sample.key in self._keys:
            raise ValueError(f"duplicate sample key {sample.key!r}: webdataset would merge the two samples")
        self._keys.add(sample.key)
        if self._tar is None:
            self._open()
        self._tar.write(record)
        self._count += 1
        if self._count >= self.shard_size:
            self._close()

    def close(self, stats: dict[str, Any] | None = None) -> Manifest:
        """Finish the last shard and atomically write the manifest (with `stats`, e.g. skip counts)."""
        if self.manifest is not None:
            return self.manifest
        self.stats.update(stats or {})
        self._close()
        self.manifest = Manifest(shards=list(self.entries), info=self.info, stats=dict(self.stats))
        write_manifest(self.out_dir, self.manifest)
        return self.manifest

    def abort(self) -> None:
        """Drop the partial shard; the shards already renamed stay but no manifest lists them."""
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            (self.out_dir / (self.shard_name(len(self.entries)) + TMP_SUFFIX)).unlink(missing_ok=True)
            self._tar, self._file = None, None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
