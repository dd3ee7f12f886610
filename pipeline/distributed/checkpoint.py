"""Where a run's checkpoints live, which of them are complete, and which one `--ckpt_path last|auto` resumes.

Every checkpoint is committed by one atomic step, so a kill at any point leaves the previous state usable:
- a `.ckpt` file is written under a temporary name and renamed (`partial_path`); temporary names start with
  `.partial-` and contain neither `ckpt` nor `last`, so Lightning never mistakes one for a checkpoint (its
  hpc-version parser read `.hpc_ckpt_2.ckpt.tmp4242` as version 24242);
- a DeepSpeed ZeRO checkpoint is a directory of tags (`step-N/`, one per save) and a `latest` file naming the
  complete one (DeepSpeed's own layout); `latest` is replaced atomically after every rank has written its
  shards, and only then are older tags removed (`commit_tag`).
Temporary files and uncommitted tags left by a killed run are removed when the next run starts.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

PARTIAL_PREFIX = ".partial-"
LATEST = "latest"
# test hook: called with the name of each point of a commit (a fault-injection test kills the process there)
commit_hook: Callable[[str], None] = lambda point: None  # noqa: E731


def partial_path(final: Path) -> Path:
    """A temporary name next to `final` for writing it: unique per process, never parsed as a checkpoint."""
    return final.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable across a power loss, not only a process crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(final: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` then rename tmp to `final`: readers see the old complete file or the new complete file."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    try:
        write(tmp)
        commit_hook("file_written")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(final.parent)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def committed_tag(directory: Path) -> str | None:
    """The committed tag of a ZeRO checkpoint directory (its `latest` file), None if there is none."""
    latest = directory / LATEST
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    return tag if tag and (directory / tag).is_dir() else None


def commit_tag(directory: Path, tag: str) -> None:
    """Point `directory/latest` at `tag` (already written by every rank), then remove every other tag.

    Called on one rank after a barrier that follows the shard writes. At each instant `latest` names a
    complete tag: before the replace the previous one (still on disk), after it the new one.
    """
    commit_hook("tag_written")
    write_atomic(directory / LATEST, lambda tmp: _write_text(tmp, tag))
    commit_hook("latest_replaced")
    for child in directory.iterdir():
        if child.is_dir() and child.name != tag:
            shutil.rmtree(child, ignore_errors=True)
    commit_hook("old_tags_removed")


def remove_stale(directory: Path) -> list[Path]:
    """Remove what a killed run left in `directory`: temporary files and ZeRO tags that `latest` never named.

    Call at the start of a run, before any process of it saves (rank 0 alone).
    """
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for child in directory.iterdir():
        if child.name.startswith(PARTIAL_PREFIX):
            removed.append(child)
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        elif child.is_dir() and child.suffix == ".ckpt":
            removed += remove_stale(child)  # a ZeRO checkpoint's own temporaries
            tag = committed_tag(child)  # None: no save of it was ever committed, so no tag of it is complete
            for sub in child.iterdir():
                if sub.is_dir() and sub.name != tag:
                    removed.append(sub)
                    shutil.rmtree(sub, ignore_errors=True)
    return removed


def is_complete(path: Path) -> bool:
    """A checkpoint file (files are only ever renamed into place), or a ZeRO directory with a committed tag."""
    if path.is_file():
        return path.stat().st_size > 0
    return path.is_dir() and committed_tag(path) is not None


def _saved_at(path: Path) -> float:
    return (path / LATEST).stat().st_mtime if path.is_dir() else path.stat().st_mtime


def checkpoints_in(directories: Iterable[Path]) -> list[Path]:
    """Complete checkpoints (`*.ckpt`, never temporaries) in `directories`, oldest first."""
    found = [p for d in directories if d.is_dir() for p in d.iterdir()
             if p.suffix == ".ckpt" and not p.name.startswith(".") and is_complete(p)]  # fmt: skip
    return sorted(found, key=_saved_at)


def newest_checkpoint(directories: Iterable[Path]) -> Path | None:
    """The most recently committed complete checkpoint in `directories`, or None."""
    found = checkpoints_in(directories)
    return found[-1] if found else None


def save_zero_checkpoint(
    engine: object,
    directory: Path,
    client_state: dict,
    tag: str,
    barrier: Callable[[str], None],
    is_rank_zero: bool,
    exclude_frozen_parameters: bool = False,
) -> None:
    """Save a DeepSpeed engine's checkpoint as tag `tag` of `directory` and commit it (see commit_tag).

    Every rank calls this with the same `tag` (unique per save). DeepSpeed writes the shards without touching
    `latest`; once all ranks have written, rank 0 commits.
    """
    directory.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(  # type: ignore[attr-defined]
        str(directory), tag=tag, client_state=client_state, save_latest=False,
        exclude_frozen_parameters=exclude_frozen_parameters,
    )  # fmt: skip
    barrier("zero_checkpoint_written")
    if is_rank_zero:
        commit_tag(directory, tag)
    barrier("zero_checkpoint_committed")


class ResumeError(ValueError):
    """`--ckpt_path` names nothing that can be resumed."""


def resolve_ckpt_path(value: str | None, directories: list[Path]) -> str | None:
    """The checkpoint `--ckpt_path VALUE` resumes, searched in the run's checkpoint `directories`.

    last: the newest complete checkpoint, whatever logger version wrote it; an error when there is none.
    auto: the same, or None (a new run) when there is none: for launches that may or may not be a restart.
    best, hpc: left to Lightning. Anything else is a path that must exist.
    """
    if value is None or value in ("best", "hpc"):
        return value
    if value in ("last", "auto"):
        found = newest_checkpoint(directories)
        if found is None and value == "last":
            where = ", ".join(str(d) for d in directories)
            raise ResumeError(
                f"--ckpt_path last: no complete checkpoint in {where}; start without --ckpt_path for a new run, "
                "or use --ckpt_path auto to resume when a checkpoint exists and start fresh otherwise"
            )
        return None if found is None else str(found)
    if not Path(value).exists():
        raise ResumeError(f"--ckpt_path {value}: no such checkpoint file or directory")
    return value
