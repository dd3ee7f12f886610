"""Video files cut into fixed-length clips, each re-encoded in memory as a shard-format sample.

Clips hold exactly `round(clip_seconds * fps)` frames; a tail shorter than that is dropped, but a
video shorter than one clip becomes one clip with all its frames. An input that cannot be opened
or decoded is skipped and counted; after a mid-file decode error, or when a file ends before the
frame count its header declares (truncated), the clips finished before are kept and the input is
counted under that reason.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from pipeline.data.manifest import Manifest
from pipeline.data.shards import Sample, ShardWriter
from pipeline.data.sources.encode import ClipEncoder, even_size

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv")
MAX_SOURCE_PIXELS = 8192 * 8192


@dataclass
class VideoStats:
    """Counters of one `wm shards videos` run, stored in the manifest's `stats`."""

    inputs: int = 0
    videos_ok: int = 0
    clips: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)

    def skip(self, reason: str, source: str, error: object) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_files.append(source)
        log.warning("skipping %s (%s): %s", source, reason, error)


def list_videos(src: str | Path) -> tuple[Path, list[Path]]:
    """(root, videos): every video file under a directory (recursive) or matching a glob, sorted.

    `root` is what the json's relative `source` paths are relative to. Raises FileNotFoundError
    with the pattern when nothing matches.
    """
    path = Path(src)
    if path.is_dir():
        root = path
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    elif path.is_file():
        root, files = path.parent, [path]
    else:
        files = [Path(p) for p in glob.glob(str(src), recursive=True) if Path(p).is_file()]
        parts = [part for part in path.parts if not glob.has_magic(part)]
        root = Path(*path.parts[: len(parts)]) if parts else Path(".")
        if not files:
            raise FileNotFoundError(f"--src {src}: no such directory or file, and the glob matches nothing")
    if not files:
        raise FileNotFoundError(f"--src {src}: no video files ({', '.join(VIDEO_SUFFIXES)}) found")
    return root, sorted(files)


@dataclass
class _Clip:
    encoder: ClipEncoder
    start: float


class VideoClipper:
    """Decode one video with PyAV and yield `Sample`s of `clip_seconds`, resized to `resolution`."""

    def __init__(self, clip_seconds: float = 2.0, resolution: int | None = None, crf: int = 20):
        """
        Args:
            clip_seconds: length of each clip; clips hold round(clip_seconds * fps) frames.
            resolution: shorter side of the output in pixels (aspect kept, even sizes); None keeps the size.
            crf: x264 quality of the re-encoded clips.
        """
        if clip_seconds <= 0:
            raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
        if resolution is not None and resolution < 2:
            raise ValueError(f"resolution must be at least 2 pixels, got {resolution}")
        self.clip_seconds, self.resolution, self.crf = clip_seconds, resolution, crf
        self._stems: dict[str, str] = {}

    def key_stem(self, source: str) -> str:
        """A tar-safe key stem for `source`, unique among the sources this clipper has seen."""
        stem = re.sub(r"[^A-Za-z0-9_\-]", "_", str(Path(source).with_suffix("")))
        # "a b.mp4", "a_b.mp4" and "a_b.avi" would share a stem; webdataset would merge their samples.
        if self._stems.setdefault(stem, source) != source:
            stem = f"{stem}_{hashlib.sha1(source.encode('utf-8')).hexdigest()[:8]}"
            self._stems[stem] = source
        return stem

    def clips(self, path: Path, root: Path, stats: VideoStats) -> Iterator[Sample]:
        """Yield the clips of `path`; errors are counted in `stats`, never raised."""
        source = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        caption = _caption(path)
        try:
            container = av.open(str(path))
        except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as error:
            stats.skip("unreadable", source, error)
            return
        with container:
            if not container.streams.video:
                stats.skip("no_video_stream", source, "the file has no video stream")
                return
            stream = container.streams.video[0]
            if not stream.width or not stream.height or stream.width * stream.height > MAX_SOURCE_PIXELS:
                stats.skip("bad_size", source, f"declared size {stream.width}x{stream.height}")
                return
            fps = Fraction(stream.average_rate or stream.guessed_rate or 0)
            if fps <= 0:
                stats.skip("no_frame_rate", source, "the stream declares no frame rate")
                return
            stream.thread_type = "AUTO"
            try:
                produced = yield from self._cut(container, stream, fps, source, caption, stats)
            except Exception as error:  # one odd input must not end a long job; clips already yielded stay
                stats.skip("error", source, repr(error))
                produced = 0
        if produced:
            stats.videos_ok += 1

    def _cut(self, container: Any, stream: Any, fps: Fraction, source: str, caption: str | None,
             stats: VideoStats) -> Iterator[Sample]:
        """Yields samples; returns the number of clips produced."""
        per_clip = max(1, int(round(self.clip_seconds * float(fps))))
        width, height = even_size(stream.width, stream.height, self.resolution)
        current: _Clip | None = None
        index = frame_index = 0
        try:
            for frame in container.decode(stream):
                if current is None:
                    current = _Clip(ClipEncoder(width, height, fps, crf=self.crf), frame_index / float(fps))
                current.encoder.add(frame)
                frame_index += 1
                if current.encoder.frames == per_clip:
                    yield self._sample(current, fps, source, caption, index)
                    index, current = index + 1, None
        except (av.FFmpegError, ValueError, RuntimeError) as error:
            # Keep the clips finished so far; the broken tail is counted, not raised.
            stats.skip("decode_error", source, error)
            return index
        if stream.frames and frame_index < stream.frames:
            stats.skip("truncated", source, f"decoded {frame_index} of {stream.frames} declared frames")
        if current is not None and index == 0 and current.encoder.frames > 0:
            yield self._sample(current, fps, source, caption, index)  # a video shorter than one clip
            index += 1
        if index == 0:
            stats.skip("no_frames", source, "no frame could be decoded")
        return index

    def _sample(self, clip: _Clip, fps: Fraction, source: str, caption: str | None, index: int) -> Sample:
        encoder = clip.encoder
        mp4 = encoder.finish()
        meta: dict[str, Any] = {
            "fps": float(fps), "num_frames": encoder.frames, "width": encoder.width, "height": encoder.height,
            "source": source, "clip_index": index,
            "span": [round(clip.start, 6), round(clip.start + encoder.frames / float(fps), 6)],
        }
        if caption:
            meta["caption"] = caption
        return Sample(key=f"{self.key_stem(source)}-c{index:05d}", mp4=mp4, meta=meta, caption=caption)


def _caption(path: Path) -> str | None:
    """The caption of `path` from a sidecar `NAME.txt` next to it, if present and readable."""
    sidecar = path.with_suffix(".txt")
    try:
        text = sidecar.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def write_video_dataset(src: str | Path, out: str | Path, clip_seconds: float = 2.0, resolution: int | None = None,
                        shard_size: int = 64, prefix: str = "videos", overwrite: bool = False,
                        created_by: str = "", progress: bool | None = None,
                        source: str | None = None) -> tuple[Manifest, VideoStats]:
    """Cut every video of `src` into clips and write them as shards + manifest into `out`.

    `source` labels the corpus in the manifest (default: `src` as given).

    Raises FileNotFoundError when `src` holds no video; unreadable videos are skipped and counted.
    """
    from tqdm import tqdm

    root, files = list_videos(src)
    clipper = VideoClipper(clip_seconds=clip_seconds, resolution=resolution)
    stats, rates = VideoStats(inputs=len(files)), set()
    info = {"kind": "videos", "source": source or str(src), "resolution": resolution, "clip_seconds": clip_seconds,
            "created_by": created_by}
    with ShardWriter(out, shard_size=shard_size, prefix=prefix, info=info, overwrite=overwrite) as writer:
        bar = tqdm(files, desc="videos", unit="video", disable=None if progress is None else not progress)
        for path in bar:
            for sample in clipper.clips(path, root, stats):
                writer.write(sample)
                stats.clips += 1
                rates.add(sample.meta["fps"])
            bar.set_postfix(clips=stats.clips, skipped=sum(stats.skipped.values()))
        # One fps when every clip shares it; a mixed corpus lists them (each clip's json has its own).
        writer.info["fps"] = rates.pop() if len(rates) == 1 else sorted(rates)
        writer.stats.update(asdict(stats))
    return writer.close(), stats
