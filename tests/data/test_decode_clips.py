"""Clip decoding from bytes: frame selection, decord vs PyAV, resize + crop, caps and typed skips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.decode import (
    ClipSpec,
    SkipSample,
    VideoSource,
    decode_clip,
    probe_mp4_size,
    resize_crop,
    select_indices,
)
from pipeline.data.sources.encode import encode_frames


def ramp_video(frames: int = 24, height: int = 48, width: int = 64, fps: float = 24.0) -> bytes:
    """Frame i is a flat grey of 8 * i (so decoded means reveal which frames were returned)."""
    values = (np.arange(frames) * 8).astype(np.uint8)
    video = np.broadcast_to(values[:, None, None, None], (frames, height, width, 3)).copy()
    return encode_frames(video, fps, crf=0)


@pytest.fixture(scope="module")
def ramp() -> bytes:
    return ramp_video()


def frame_values(video: torch.Tensor) -> np.ndarray:
    return video.float().mean(dim=(1, 2, 3)).numpy()


def test_select_indices_stride_fps_and_starts() -> None:
    spec = ClipSpec(frames=4, frame_stride=3)
    assert select_indices(20, 25.0, spec, None).tolist() == [0, 3, 6, 9]
    starts = {int(select_indices(20, 25.0, spec, np.random.default_rng(s))[0]) for s in range(40)}
    assert starts <= set(range(0, 11)) and len(starts) > 5  # random start in [0, 20 - 10]
    fps_spec = ClipSpec(frames=3, fps=10.0)  # 30 fps source at 10 fps: every third frame
    assert select_indices(30, 30.0, fps_spec, None).tolist() == [0, 3, 6]
    with pytest.raises(SkipSample) as info:
        select_indices(9, 25.0, spec, None)
    assert info.value.reason == "too_few_frames"


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_decode_clip_returns_the_selected_frames(ramp: bytes, decoder: str) -> None:
    spec = ClipSpec(frames=5, frame_stride=4, resolution=32)
    video, indices = decode_clip(ramp, spec, None, decoder)
    assert video.dtype == torch.uint8 and tuple(video.shape) == (5, 3, 32, 32)
    assert indices.tolist() == [0, 4, 8, 12, 16]
    np.testing.assert_allclose(frame_values(video), indices * 8, atol=3)


def test_decord_and_pyav_agree(ramp: bytes) -> None:
    spec = ClipSpec(frames=6, frame_stride=3, resolution=40)
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    a, ia = decode_clip(ramp, spec, rng_a, "decord")
    b, ib = decode_clip(ramp, spec, rng_b, "pyav")
    assert ia.tolist() == ib.tolist()
    assert (a.int() - b.int()).abs().max().item() <= 2


def test_video_source_reports_length_and_fps(ramp: bytes) -> None:
    for decoder in ("decord", "pyav"):
        source = VideoSource(ramp, decoder)
        assert len(source) == 24 and source.fps == pytest.approx(24.0, rel=1e-3)
    assert probe_mp4_size(ramp) == (64, 48)


def test_resize_crop_centre_and_random() -> None:
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, :40] = 200  # left half bright, right half dark
    centre = resize_crop(frames, 20, None)
    assert tuple(centre.shape) == (2, 3, 20, 20) and centre.dtype == torch.uint8
    assert centre[..., :9].float().mean() > 190 and centre[..., 11:].float().mean() < 10  # the seam is centred
    means = {round(resize_crop(frames, 20, np.random.default_rng(s)).float().mean().item()) for s in range(20)}
    assert len(means) > 3  # the crop position varies with the rng


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty_video"), (b"<html>not a video</html>" * 40, "bad_video")],
)
def test_non_video_bytes_are_typed_skips(data: bytes, reason: str) -> None:
    with pytest.raises(SkipSample) as info:
        decode_clip(data, ClipSpec(frames=2))
    assert info.value.reason == reason


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_truncated_mp4_is_a_typed_skip(ramp: bytes, decoder: str) -> None:
    with pytest.raises(SkipSample) as info:
        decode_clip(ramp[: len(ramp) // 2], ClipSpec(frames=4, frame_stride=4), None, decoder)
    assert info.value.reason in ("bad_video", "too_few_frames")


def test_caps_on_pixels_and_frames(ramp: bytes) -> None:
    with pytest.raises(SkipSample) as info:
        decode_clip(ramp, ClipSpec(frames=2, max_pixels=64 * 48 - 1))
    assert info.value.reason == "too_large" and "64x48" in info.value.detail
    with pytest.raises(SkipSample) as info:
        decode_clip(ramp, ClipSpec(frames=2, max_frames=23))
    assert info.value.reason == "too_large" and "24 frames" in info.value.detail


def test_decord_failure_falls_back_to_pyav() -> None:
    data = ramp_video(frames=6, height=16, width=16)  # decord 0.6 cannot convert frames 16 px wide
    video, indices = decode_clip(data, ClipSpec(frames=3, frame_stride=2, resolution=16), None, "decord")
    assert tuple(video.shape) == (3, 3, 16, 16)
    np.testing.assert_allclose(frame_values(video), indices * 8, atol=3)
