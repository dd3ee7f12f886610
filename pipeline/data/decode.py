"""Clip decoding from video bytes in memory: frame selection, decoding, resize + crop.

Everything here works on the bytes of one `KEY.mp4` (never a temporary file). Anything wrong with
the input raises `SkipSample(reason)`, which the stream counts per reason and skips.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Decoder = Literal["decord", "pyav"]


class SkipSample(Exception):
    """A sample that cannot be used; `reason` is a short counter name, `detail` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ClipSpec:
    """How a clip is cut from a video.

    frames: frames per clip (T).
    frame_stride: source frames between two clip frames (ignored when fps is set).
    fps: target frame rate; the stride becomes source_fps / fps (may be fractional).
    resolution: side of the square output after resizing the shorter side and cropping.
    max_pixels: largest width x height accepted (declared in json or found in the stream).
    max_frames: largest frame count accepted (declared in json or found in the stream).
    """

    frames: int = 8
    frame_stride: int = 1
    fps: float | None = None
    resolution: int = 64
    max_pixels: int = 4096 * 2304
    max_frames: int = 200_000

    def __post_init__(self) -> None:
        if self.frames < 1 or self.frame_stride < 1 or self.resolution < 1:
            raise ValueError(f"frames, frame_stride and resolution must be >= 1, got {self}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


# First bytes of the containers we accept; anything else is not handed to the decoder at all
# (decord echoes unreadable input into its error message, which floods logs for large blobs).
_BMFF_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp"}
_MAGICS = (b"\x1aE\xdf\xa3", b"RIFF", b"FLV", b"OggS", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")
# sources whose shorter side is at least this many times the target are scaled inside the decoder
DECODER_SCALING_FACTOR = 2


def check_container(data: bytes) -> None:
    """Raise SkipSample unless `data` starts like a video container we can decode."""
    if len(data) == 0:
        raise SkipSample("empty_video", "zero bytes")
    if len(data) >= 8 and data[4:8] in _BMFF_BOXES:
        return
    if data.startswith(_MAGICS) or (len(data) > 188 and data[0] == 0x47 and data[188] == 0x47):
        return
    raise SkipSample("bad_video", "not a recognised video container")


def probe_mp4_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the largest track from the mp4 `tkhd` boxes, without decoding; None if absent."""
    best, pos = None, data.find(b"tkhd")
    while pos >= 4:
        size = struct.unpack(">I", data[pos - 4 : pos])[0]
        end = pos - 4 + size
        if 92 <= size and end <= len(data):  # tkhd ends with width, height as 16.16 fixed point
            width, height = (v >> 16 for v in struct.unpack(">II", data[end - 8 : end]))
            if width * height > 0 and (best is None or width * height > best[0] * best[1]):
                best = (width, height)
        pos = data.find(b"tkhd", pos + 4)
    return best


class VideoSource:
    """An opened video: `len(src)` frames at `src.fps`; `src.get(indices)` -> uint8 [T, H, W, 3].

    size: (width, height) to scale frames to while converting them to RGB (in the decoder's C code,
    far cheaper than resizing decoded frames afterwards); None keeps the stream's size.
    """

    def __init__(
        self, data: bytes, decoder: Decoder = "decord", threads: int = 1, size: tuple[int, int] | None = None
    ) -> None:
        check_container(data)
        self.decoder = decoder
        self._data = data
        self._size = size
        try:
            if decoder == "decord":
                import decord

                width, height = size or (-1, -1)
                self._reader = decord.VideoReader(io.BytesIO(data), width=width, height=height, num_threads=threads)
                self.num_frames = len(self._reader)
                self.fps = float(self._reader.get_avg_fps())
            elif decoder == "pyav":
                self._open_pyav()
            else:
                raise ValueError(f"decoder must be 'decord' or 'pyav', got {decoder!r}")
        except (RuntimeError, OSError, EOFError) as exn:  # decord.DECORDError is a RuntimeError
            raise SkipSample("bad_video", f"cannot open: {str(exn)[:120]}") from exn
        except Exception as exn:
            if type(exn).__module__.startswith("av"):
                raise SkipSample("bad_video", f"cannot open: {str(exn)[:120]}") from exn
            raise

    def _open_pyav(self) -> None:
        import av

        with av.open(io.BytesIO(self._data)) as container:
            if not container.streams.video:
                raise SkipSample("bad_video", "no video stream")
            stream = container.streams.video[0]
            self.fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            frames = stream.frames
            if not frames and stream.duration and stream.time_base:
                frames = int(float(stream.duration * stream.time_base) * self.fps)
            self.num_frames = int(frames)

    def __len__(self) -> int:
        return self.num_frames

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Decode the frames at `indices` (sorted, in range) -> uint8 [T, H, W, 3]."""
        try:
            if self.decoder == "decord":
                try:
                    return self._reader.get_batch(indices.tolist()).asnumpy()
                except Exception:  # decord fails on some streams PyAV reads (e.g. frames 16 px wide)
                    return _pyav_frames(self._data, indices, self._size)
            return _pyav_frames(self._data, indices, self._size)
        except SkipSample:
            raise
        except Exception as exn:  # a stream that opens but breaks mid-way (truncated, corrupt)
            raise SkipSample("bad_video", f"decode failed: {str(exn)[:120]}") from exn


def _pyav_frames(data: bytes, indices: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode sequentially with PyAV up to the last wanted frame, keeping the wanted ones."""
    import av

    wanted = {int(i): [] for i in indices}
    last = int(indices.max())
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for n, frame in enumerate(container.decode(stream)):
            if n in wanted:
                if size is not None:
                    frame = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="BILINEAR")
                wanted[n].append(frame.to_ndarray(format="rgb24"))
            if n >= last:
                break
    frames = [wanted[int(i)][0] for i in indices if wanted[int(i)]]
    if len(frames) != len(indices):
        raise SkipSample("too_few_frames", f"stream ended after {n + 1} frames, clip needs frame {last}")
    return np.stack(frames)


def select_indices(num_frames: int, source_fps: float, spec: ClipSpec, rng: np.random.Generator | None) -> np.ndarray:
    """Frame indices of one clip: int64 [T], sorted.

    The stride is `frame_stride`, or source_fps / fps when `spec.fps` is set. The start is drawn
    from `rng` (train) or is 0 when rng is None (eval, deterministic).
    """
    stride = source_fps / spec.fps if spec.fps else float(spec.frame_stride)
    offsets = np.round(np.arange(spec.frames) * stride).astype(np.int64)
    span = int(offsets[-1]) + 1
    if span > num_frames:
        raise SkipSample("too_few_frames", f"{num_frames} frames, clip needs {span}")
    start = 0 if rng is None else int(rng.integers(0, num_frames - span + 1))
    return offsets + start


def resize_crop(frames: np.ndarray, resolution: int, rng: np.random.Generator | None) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, 3, R, R]: square crop (random in train, centre when rng is None), resize.

    Cropping the square in source pixels and then resizing equals resizing the shorter side first and
    cropping after, but resamples fewer pixels.
    """
    t, h, w, _ = frames.shape
    side = min(h, w)
    if rng is None:
        top, left = (h - side) // 2, (w - side) // 2
    else:
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = frames[:, top : top + side, left : left + side]
    if side == resolution:
        # (T, side, side, 3) -> (T, 3, side, side) in numpy: torch's uint8 permute-copy is several times slower
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(0, 3, 1, 2)))
    # uint8 in, uint8 out: torch's channels-last uint8 kernel needs no float copy of the frames. The result keeps
    # the channels-last layout; collation (torch.stack) writes the batch contiguously anyway.
    return F.interpolate(torch.from_numpy(crop).permute(0, 3, 1, 2), size=(resolution, resolution), mode="bilinear",
                         antialias=True, align_corners=False)


def scaled_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side equal to `shorter`, aspect kept."""
    width, height = size
    scale = shorter / max(1, min(width, height))
    return max(shorter, round(width * scale)), max(shorter, round(height * scale))


def check_declared(meta: dict, spec: ClipSpec) -> None:
    """Caps on what the json declares (cheap, before any decoding)."""
    try:
        width, height = int(meta.get("width") or 0), int(meta.get("height") or 0)
        num_frames = int(meta.get("num_frames") or 0)
    except (TypeError, ValueError) as exn:
        raise SkipSample("bad_json", f"width/height/num_frames not integers: {exn}") from exn
    if width * height > spec.max_pixels or num_frames > spec.max_frames:
        raise SkipSample("too_large", f"declared {width}x{height}, {num_frames} frames")


def decode_clip(
    data: bytes,
    spec: ClipSpec,
    rng: np.random.Generator | None = None,
    decoder: Decoder = "decord",
    threads: int = 1,
    max_index: int | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Decode one clip from video bytes -> (uint8 [T, 3, R, R], frame indices int64 [T]).

    rng: random start and crop (train); None gives start 0 and a centre crop (eval).
    max_index: frames available in side arrays (actions...); the clip must fit in both.
    """
    size = probe_mp4_size(data) if len(data) >= 8 and data[4:8] in _BMFF_BOXES else None
    if size is not None and size[0] * size[1] > spec.max_pixels:
        raise SkipSample("too_large", f"stream is {size[0]}x{size[1]}")
    # Large sources: the decoder scales the shorter side while converting to RGB (cheaper than converting
    # every full-size pixel). Small ones: decoding at full size and resizing the crop in uint8 is cheaper.
    scale_in_decoder = size is not None and min(size) >= DECODER_SCALING_FACTOR * spec.resolution
    source = VideoSource(data, decoder, threads, scaled_size(size, spec.resolution) if scale_in_decoder else None)
    if len(source) > spec.max_frames:
        raise SkipSample("too_large", f"stream has {len(source)} frames")
    available = len(source) if max_index is None else min(len(source), max_index)
    indices = select_indices(available, source.fps, spec, rng)
    frames = source.get(indices)
    if frames.ndim != 4 or frames.shape[0] != spec.frames or frames.shape[-1] != 3:
        raise SkipSample("bad_frames", f"decoder returned {tuple(frames.shape)}, expected ({spec.frames}, H, W, 3)")
    if frames.shape[1] * frames.shape[2] > spec.max_pixels:
        raise SkipSample("too_large", f"decoded {frames.shape[2]}x{frames.shape[1]}")
    video = resize_crop(frames, spec.resolution, rng)
    return video, indices
