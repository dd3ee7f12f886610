"""In-memory H.264 encoding of clips with PyAV (no temp files), shared by the video and Atari sources."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np


def even_size(width: int, height: int, shorter: int | None) -> tuple[int, int]:
    """Output (width, height): shorter side scaled to `shorter` (aspect kept), both even for yuv420p."""
    if shorter is not None:
        if shorter < 2:
            raise ValueError(f"resolution must be at least 2 pixels, got {shorter}")
        scale = shorter / min(width, height)
        width, height = width * scale, height * scale
    # yuv420p subsamples chroma by 2 in both directions, so libx264 needs even dimensions.
    # Half-up rounding (not Python's half-to-even) so an odd `shorter` always rounds up.
    return max(2, int(width / 2 + 0.5) * 2), max(2, int(height / 2 + 0.5) * 2)


class ClipEncoder:
    """Encode frames one at a time into an mp4 (libx264, yuv420p) held in memory.

    Frames are `av.VideoFrame`s or RGB arrays `[H, W, 3] uint8`; they are rescaled to (width, height).
    """

    def __init__(self, width: int, height: int, fps: Fraction | float, crf: int = 20, preset: str = "veryfast"):
        """
        Args:
            width: output width in pixels (even).
            height: output height in pixels (even).
            fps: frame rate written into the container (kept from the source for real video).
            crf: x264 constant rate factor; lower is higher quality (0 is lossless in luma).
            preset: x264 speed preset.
        """
        self.width, self.height = width, height
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(100000)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width, height
        self.time_base = 1 / rate
        self.stream.codec_context.time_base = self.time_base
        self.stream.pix_fmt = "yuv420p"
        # One thread keeps the output deterministic and avoids oversubscribing the shared CPUs.
        self.stream.codec_context.thread_count = 1
        self.stream.options = {"crf": str(crf), "preset": preset}
        self.frames = 0

    def add(self, frame: av.VideoFrame | np.ndarray) -> None:
        """Append one frame (`[H, W, 3] uint8` RGB array or a decoded `av.VideoFrame`)."""
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        out = frame.reformat(width=self.width, height=self.height, format="yuv420p", interpolation="AREA")
        out.pts = self.frames
        out.time_base = self.time_base
        for packet in self.stream.encode(out):
            self.container.mux(packet)
        self.frames += 1

    def finish(self) -> bytes:
        """Flush the encoder, close the container and return the mp4 bytes."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.buffer.getvalue()


def encode_frames(frames: np.ndarray, fps: float, crf: int = 20) -> bytes:
    """Encode `frames: [T, H, W, 3] uint8` RGB as an mp4 of the same size (dimensions must be even)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    encoder = ClipEncoder(frames.shape[2], frames.shape[1], fps, crf=crf)
    for frame in frames:
        encoder.add(frame)
    return encoder.finish()
