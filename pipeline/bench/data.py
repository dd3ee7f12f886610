"""`wm bench data`: clips/s of the full stream against the raw decoder and a naive PyAV baseline.

All three run in the same process on the same clips (the stream's eval-mode clips: deterministic
start and frame indices), interleaved over several rounds so that load from other processes hits
them alike; the best round of each is reported.

  stream       build_stream(eval) through a DataLoader: tar reading, json/array parsing, decord
               decoding, resize + crop, collation (clips/s in total and per worker)
  raw_decoder  decord VideoReader over the same bytes, get_batch(same indices), nothing else
  raw_decoder_scaled  the same, with decord scaling the shorter side to the output resolution as the
               stream asks it to (so stream / raw_decoder_scaled is the stream's own overhead)
  naive_pyav   PyAV decodes every frame of the video to RGB arrays, then indexes
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from pipeline.bench import write_json
from pipeline.data.decode import ClipSpec, probe_mp4_size, scaled_size, select_indices
from pipeline.data.stream import build_stream

TARGET_VS_RAW = 0.85
TARGET_VS_NAIVE = 3.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wm bench data", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True, help="shard directory, glob or brace pattern")
    parser.add_argument("--json", required=True, type=Path, help="where to write the results")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--stride", type=int, default=4, help="frame stride")
    parser.add_argument("--resolution", type=int, default=128, help="output side in pixels")
    parser.add_argument("--workers", type=int, default=1, help="stream DataLoader workers (0: in-process)")
    parser.add_argument("--clips", type=int, default=64, help="clips per measurement (eval passes repeat)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    parser.add_argument("--batch-size", type=int, default=4, help="stream batch size")
    return parser.parse_args(argv)


def stream_loader(shards: str, spec: ClipSpec, workers: int, batch_size: int) -> DataLoader:
    """The stream in eval mode behind a DataLoader whose workers persist across passes."""
    stream = build_stream(shards, spec, mode="eval", batch_size=batch_size)
    return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0)


def stream_clips(loader: DataLoader, clips: int) -> tuple[list[str], float]:
    """Run eval passes until `clips` clips arrived; (keys in order, seconds)."""
    keys: list[str] = []
    start = time.perf_counter()
    while len(keys) < clips:
        before = len(keys)
        for batch in loader:
            keys += batch["key"]
            if len(keys) >= clips:
                break
        if len(keys) == before:
            raise RuntimeError("the stream yields no usable clip at this clip length")
    return keys, time.perf_counter() - start


def raw_decord(data: bytes, spec: ClipSpec) -> np.ndarray:
    """The decoder alone: open the bytes, get the clip's frames. uint8 [T, H, W, 3]."""
    import decord

    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    indices = select_indices(len(reader), reader.get_avg_fps(), spec, None)
    return reader.get_batch(indices.tolist()).asnumpy()


def raw_decord_scaled(data: bytes, spec: ClipSpec) -> np.ndarray:
    """The decoder alone, scaling the shorter side to spec.resolution while converting (the stream does so for
    sources at least twice the output size)."""
    import decord

    width, height = scaled_size(probe_mp4_size(data), spec.resolution)
    reader = decord.VideoReader(io.BytesIO(data), width=width, height=height, num_threads=1)
    indices = select_indices(len(reader), reader.get_avg_fps(), spec, None)
    return reader.get_batch(indices.tolist()).asnumpy()


def naive_pyav(data: bytes, spec: ClipSpec) -> np.ndarray:
    """Decode the whole video to RGB with PyAV, then index. uint8 [T, H, W, 3]."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one core, like the raw decoder and each stream worker
        fps = float(stream.average_rate or 25)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    return frames[select_indices(len(frames), fps, spec, None)]


def read_videos(shards: str) -> dict[str, bytes]:
    """key -> mp4 bytes of every sample (not timed)."""
    import webdataset as wds

    from pipeline.data.stream import list_shards

    pipeline = wds.DataPipeline(wds.SimpleShardList(list_shards(shards)), wds.tarfile_to_samples())
    return {s["__key__"]: s["mp4"] for s in pipeline if "mp4" in s}


def time_decoder(fn: Callable[[bytes, ClipSpec], np.ndarray], videos: list[bytes], spec: ClipSpec) -> float:
    start = time.perf_counter()
    for data in videos:
        clip = fn(data, spec)
        assert clip.shape[0] == spec.frames
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = ClipSpec(frames=args.frames, frame_stride=args.stride, resolution=args.resolution)
    loader = stream_loader(args.shards, spec, args.workers, args.batch_size)  # checks the shards first
    by_key = read_videos(args.shards)
    keys, _ = stream_clips(loader, 1)  # warm-up: worker start-up is not part of the steady-state rate
    videos = [by_key[k] for k in keys]
    time_decoder(raw_decord, videos, spec), time_decoder(naive_pyav, videos, spec)
    decoders = {"raw_decoder": raw_decord, "raw_decoder_scaled": raw_decord_scaled, "naive_pyav": naive_pyav}
    best = dict.fromkeys(["stream", *decoders], float("inf"))
    for _ in range(args.rounds):
        keys, seconds = stream_clips(loader, args.clips)
        best["stream"] = min(best["stream"], seconds)
        videos = [by_key[k] for k in keys]  # the same clips, in the same order
        for name, fn in decoders.items():
            best[name] = min(best[name], time_decoder(fn, videos, spec))
    clips = len(keys)
    rate = {name: clips / seconds for name, seconds in best.items()}
    per_worker = rate["stream"] / max(1, args.workers)
    ratios = {
        "stream_per_worker_vs_raw_decoder": per_worker / rate["raw_decoder"],
        "stream_per_worker_vs_naive_pyav": per_worker / rate["naive_pyav"],
        "stream_per_worker_vs_raw_decoder_scaled": per_worker / rate["raw_decoder_scaled"],
        "stream_total_vs_raw_decoder": rate["stream"] / rate["raw_decoder"],
        "raw_decoder_vs_naive_pyav": rate["raw_decoder"] / rate["naive_pyav"],
    }
    return {
        "config": {"shards": str(args.shards), "frames": args.frames, "stride": args.stride,
                   "resolution": args.resolution, "workers": args.workers, "clips": clips, "rounds": args.rounds,
                   "batch_size": args.batch_size, "distinct_videos": len(set(keys)), "cpus": os.cpu_count()},
        "stream": {"clips": clips, "seconds": best["stream"], "clips_per_s": rate["stream"],
                   "clips_per_s_per_worker": per_worker},
        **{name: {"clips": clips, "seconds": best[name], "clips_per_s": rate[name]} for name in decoders},
        "ratios": ratios,
        "targets": {"stream_per_worker_vs_raw_decoder": TARGET_VS_RAW,
                    "stream_per_worker_vs_naive_pyav": TARGET_VS_NAIVE,
                    "met": ratios["stream_per_worker_vs_raw_decoder"] >= TARGET_VS_RAW
                    and ratios["stream_per_worker_vs_naive_pyav"] >= TARGET_VS_NAIVE},
    }  # fmt: skip


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (FileNotFoundError, RuntimeError) as exn:
        print(f"wm bench data: {exn}", file=sys.stderr)
        return 1
    write_json(args.json, result)
    r = result["ratios"]
    print(f"stream {result['stream']['clips_per_s']:.1f} clips/s ({result['stream']['clips_per_s_per_worker']:.1f}"
          f" per worker), raw decoder {result['raw_decoder']['clips_per_s']:.1f}, naive PyAV "
          f"{result['naive_pyav']['clips_per_s']:.1f}; per worker vs raw {r['stream_per_worker_vs_raw_decoder']:.2f}x"
          f" (vs raw + scaling {r['stream_per_worker_vs_raw_decoder_scaled']:.2f}x),"
          f" vs naive {r['stream_per_worker_vs_naive_pyav']:.2f}x -> {args.json}")  # fmt: skip
    return 0
