"""Where feature-extractor weights come from: explicit path, then environment variable, then cache dir.

No network access happens here except in `download`, which the user asks for (`wm weights download`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.manifest import file_sha256 as sha256_of  # one file-hashing helper for shards and weights


@dataclass(frozen=True)
class WeightsSpec:
    """One published weights file."""

    name: str
    filename: str
    env: str
    url: str
    sha256: str | None  # pinned digest; None where no digest could be verified when this entry was written
    what: str


SPECS: dict[str, WeightsSpec] = {
    "i3d": WeightsSpec(
        name="i3d",
        filename="i3d_pretrained_400.pt",
        env="WM_I3D_WEIGHTS",
        # the VideoGPT / TATS file (piergiaj layout), mirrored at a pinned revision
        url=("https://huggingface.co/spaces/LanguageBind/Open-Sora-Plan-v1.0.0/resolve/"
             "810fa8c4bdb3a4c8eec9bd57375c29bde6fb46de/opensora/eval/fvd/videogpt/i3d_pretrained_400.pt"),
        sha256=None,
        what="I3D (Kinetics-400) state dict in the piergiaj/pytorch-i3d layout, used for FVD",
    ),
    "i3d_torchscript": WeightsSpec(
        name="i3d_torchscript",
        filename="i3d_torchscript.pt",
        env="WM_I3D_TORCHSCRIPT",
        url="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
        sha256=None,
        what="StyleGAN-V TorchScript I3D detector, an alternative FVD feature extractor",
    ),
}


def cache_dir() -> Path:
    """WM_CACHE, else ~/.cache/world-model-pipeline."""
    return Path(os.environ.get("WM_CACHE") or Path.home() / ".cache" / "world-model-pipeline")


def candidates(name: str, explicit: str | Path | None = None) -> list[tuple[str, Path]]:
    """(where, path) in lookup order: explicit path, environment variable, cache directory."""
    spec = SPECS[name]
    out: list[tuple[str, Path]] = []
    if explicit:
        out.append(("explicit path", Path(explicit)))
    if os.environ.get(spec.env):
        out.append((f"${spec.env}", Path(os.environ[spec.env])))
    out.append(("cache (WM_CACHE or ~/.cache/world-model-pipeline)", cache_dir() / spec.filename))
    return out


def missing_message(name: str, explicit: str | Path | None = None) -> str:
    """The error text for an absent file: every place looked at, and how to get the file."""
    spec = SPECS[name]
    looked = "\n".join(f"  - {where}: {path}" for where, path in candidates(name, explicit))
    if not os.environ.get(spec.env):
        looked += f"\n  - ${spec.env}: not set"
    return (f"{spec.what} ({spec.filename}) not found. Looked at:\n{looked}\n"
            f"Get it with `wm weights download {name}` (needs internet; downloads {spec.url}), or download it "
            f"yourself and set {spec.env}=/path/to/{spec.filename} or copy it into {cache_dir()}.")


def find_weights(name: str, explicit: str | Path | None = None) -> Path:
    """The first existing file among `candidates`; FileNotFoundError naming each place otherwise.

    An explicit path that does not exist is an error even when another place has the file: the
    caller asked for that file.
    """
    if explicit and not Path(explicit).is_file():
        raise FileNotFoundError(f"{explicit} does not exist.\n" + missing_message(name, explicit))
    for _, path in candidates(name, explicit):
        if path.is_file():
            return path
    raise FileNotFoundError(missing_message(name, explicit))


def describe(path: Path | None, reason: str = "") -> dict[str, str]:
    """What eval.json records about a feature extractor: file and sha256, or "absent" and why."""
    if path is None:
        return {"file": "absent", "sha256": "absent", "reason": reason}
    return {"file": str(path), "sha256": sha256_of(path)}


def download(name: str, dest_dir: str | Path | None = None, url: str | None = None,
             sha256: str | None = None) -> tuple[Path, str]:
    """Fetch the published file into the cache (atomic rename), check its sha256; returns (path, digest).

    The expected digest is `sha256` if given, else the pinned one of the spec; with neither, the
    digest is returned for the caller to record, and the file is kept.
    """
    spec = SPECS[name]
    dest = Path(dest_dir or cache_dir()) / spec.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = (sha256 or spec.sha256 or "").lower() or None
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url or spec.url, timeout=60) as response:  # https URL from code
                shutil.copyfileobj(response, tmp)
        except BaseException:
            os.unlink(tmp.name)  # no partial file left in the cache
            raise
    digest = sha256_of(tmp.name)
    if expected and digest != expected:
        os.unlink(tmp.name)
        raise ValueError(f"sha256 mismatch for {spec.filename}: got {digest}, expected {expected}; file discarded")
    os.replace(tmp.name, dest)
    return dest, digest
