"""manifest.json of a shard directory: read, write, verify against the shards, and a stable hash.

```
{"format": "wm-shards/1", "num_samples": 13,
 "shards": [{"name": "videos-000000.tar", "samples": 4, "bytes": 81920, "sha256": "..."}, ...],
 "info": {"kind": "videos", "source": ..., "resolution": 64, "fps": ..., "created_by": "wm shards ..."},
 "stats": {"inputs": 4, "skipped": {"unreadable": 0}, ...}}
```
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "wm-shards/1"
SHARD_NAME = re.compile(r"^[A-Za-z0-9_.\-]+\.tar$")
# The way webdataset groups tar members into samples: KEY is everything before the basename's first dot.
MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class ManifestError(ValueError):
    """manifest.json is missing, unreadable or malformed."""


@dataclass(frozen=True)
class ShardEntry:
    """One shard as listed in the manifest."""

    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """A dataset: its shards in order, dataset-level info and the writer's counters."""

    shards: list[ShardEntry]
    info: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(entry.samples for entry in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "num_samples": self.num_samples, "shards": [asdict(e) for e in self.shards],
                "info": self.info, "stats": self.stats}


@dataclass(frozen=True)
class Problem:
    """One finding of `verify_dataset`; errors make `wm shards verify` fail, warnings do not."""

    kind: str
    message: str
    shard: str | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.shard}: " if self.shard else ""
        return f"{self.severity}: {where}{self.message} [{self.kind}]"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _entry(raw: Any, index: int) -> ShardEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"shards[{index}] must be an object, got {type(raw).__name__}")
    try:
        entry = ShardEntry(name=str(raw["name"]), samples=int(raw["samples"]), bytes=int(raw["bytes"]),
                           sha256=str(raw["sha256"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"shards[{index}] needs name, samples, bytes, sha256: {error!r}") from None
    # A manifest names files inside its own directory only, never a path elsewhere.
    if not SHARD_NAME.match(entry.name) or entry.name.startswith("."):
        raise ManifestError(f"shards[{index}] has an invalid file name {entry.name!r}")
    if entry.samples < 0 or entry.bytes < 0:
        raise ManifestError(f"shards[{index}] ({entry.name}) has a negative count")
    return entry


def read_manifest(directory: str | Path) -> Manifest:
    """Parse DIR/manifest.json; raises ManifestError naming the file and what is wrong."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in {directory}; write the dataset with `wm shards`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("shards"), list):
        raise ManifestError(f"{path} must be an object with a 'shards' list")
    if raw.get("format", FORMAT) != FORMAT:
        raise ManifestError(f"{path} has format {raw.get('format')!r}; this version reads {FORMAT!r}")
    shards = [_entry(item, i) for i, item in enumerate(raw["shards"])]
    info, stats = raw.get("info", {}), raw.get("stats", {})
    if not isinstance(info, dict) or not isinstance(stats, dict):
        raise ManifestError(f"{path}: 'info' and 'stats' must be objects")
    manifest = Manifest(shards=shards, info=info, stats=stats)
    if "num_samples" in raw and raw["num_samples"] != manifest.num_samples:
        raise ManifestError(f"{path}: num_samples {raw['num_samples']} != sum over shards {manifest.num_samples}")
    return manifest


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Write DIR/manifest.json atomically (tmp file, fsync, rename)."""
    path = Path(directory) / MANIFEST_NAME
    tmp = path.with_name(MANIFEST_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(manifest.to_json(), handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def manifest_hash(directory: str | Path) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace): the dataset's identity."""
    manifest = read_manifest(directory)
    canonical = json.dumps(manifest.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def count_tar_samples(path: str | Path) -> int:
    """Number of samples (distinct keys, grouped as webdataset groups them) in a tar; raises on a bad tar."""
    keys: set[str] = set()
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            match = MEMBER.match(member.name)
            if member.isfile() and match and not os.path.basename(member.name).startswith("."):
                keys.add(match.group(1))
    return len(keys)


def _verify_shard(directory: Path, entry: ShardEntry) -> list[Problem]:
    path = directory / entry.name
    if not path.is_file():
        return [Problem("missing", "shard listed in the manifest does not exist", entry.name)]
    problems = []
    size = path.stat().st_size
    if size != entry.bytes:
        problems.append(Problem("size", f"size is {size} bytes, manifest says {entry.bytes}", entry.name))
    elif file_sha256(path) != entry.sha256:
        problems.append(Problem("sha256", "sha256 differs from the manifest (same size: content changed)",
                                entry.name))
    try:
        count = count_tar_samples(path)
    except (tarfile.TarError, OSError, EOFError) as error:
        return problems + [Problem("unreadable", f"cannot read the tar: {error}", entry.name)]
    if count != entry.samples:
        problems.append(Problem("samples", f"holds {count} samples, manifest says {entry.samples}", entry.name))
    return problems


def verify_dataset(directory: str | Path) -> list[Problem]:
    """Check a dataset directory against its manifest; returns every problem found (empty list: all good).

    Errors: manifest missing or malformed, shard missing, size or sha256 mismatch, wrong sample count
    (counted by reading the tar). Warnings: tar or leftover .tmp files in DIR that the manifest does not list.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return [Problem("missing", f"dataset directory {directory} does not exist")]
    try:
        manifest = read_manifest(directory)
    except ManifestError as error:
        return [Problem("manifest", str(error))]
    problems: list[Problem] = []
    for entry in manifest.shards:
        problems += _verify_shard(directory, entry)
    listed = {entry.name for entry in manifest.shards}
    for path in sorted(directory.iterdir()):
        if path.suffix == ".tar" and path.name not in listed:
            problems.append(Problem("unlisted", "tar file not listed in the manifest", path.name, "warning"))
        elif path.suffix == ".tmp":
            problems.append(Problem("leftover", "unfinished temporary file from an interrupted write",
                                    path.name, "warning"))
    return problems


def index_dataset(directory: str | Path, info: dict[str, Any] | None = None, overwrite: bool = False) -> Manifest:
    """Write a manifest for the *.tar shards already in DIR (e.g. video2dataset output), in name order.

    Sample counts come from reading each tar; an unreadable tar raises ManifestError naming it.
    """
    directory = Path(directory)
    if (directory / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(f"{directory / MANIFEST_NAME} exists; pass overwrite/--force to replace it")
    shards = sorted(p for p in directory.glob("*.tar") if p.is_file()) if directory.is_dir() else []
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {directory}")
    entries = []
    for path in shards:
        try:
            count = count_tar_samples(path)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ManifestError(f"cannot index {path}: {error}") from None
        entries.append(ShardEntry(name=path.name, samples=count, bytes=path.stat().st_size,
                                  sha256=file_sha256(path)))
    manifest = Manifest(shards=entries, info={"kind": "indexed", **(info or {})})
    write_manifest(directory, manifest)
    return manifest


def errors(problems: list[Problem]) -> list[Problem]:
    """The problems that make a dataset unusable (warnings dropped)."""
    return [p for p in problems if p.severity == "error"]
