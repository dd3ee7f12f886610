"""`wm eval`: per-horizon metrics of one checkpoint (or the averaged predictions of several) into eval.json."""

from __future__ import annotations

import argparse
import sys

from pipeline.eval.rollout import DEFAULT_HORIZONS, evaluate
from pipeline.eval.weights import sha256_of


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wm eval", description=__doc__)
    p.add_argument("--ckpt", action="append", required=True,
                   help="checkpoint of any family; repeat for an ensemble (predictions averaged)")
    p.add_argument("--data", required=True, help="shard directory (with manifest.json) to evaluate on")
    p.add_argument("--horizons", type=int, nargs="+", default=list(DEFAULT_HORIZONS), help="predicted frames")
    p.add_argument("--context", type=int, default=None, help="context frames (default: the model's)")
    p.add_argument("--samples", type=int, default=64, help="number of clips (fixed per leaderboard)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data stream and of the rollouts")
    p.add_argument("--batch-size", type=int, default=8, help="clips per rollout call")
    p.add_argument("--resolution", type=int, default=64, help="square clip side the data is read at")
    p.add_argument("--i3d-weights", default=None, help="I3D file (default: $WM_I3D_WEIGHTS, then the cache)")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS backbone")
    p.add_argument("--no-fvd", action="store_true", help="skip FVD (recorded as disabled)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (recorded as disabled)")
    p.add_argument("--random-weights", action="store_true",
                   help="development only: random feature extractors when weights are absent (labelled as such)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", required=True, help="eval.json to write (samples go next to it)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from pipeline.models.loading import Ensemble, load_world_model

    try:
        models = [load_world_model(path, map_location=args.device) for path in args.ckpt]
    except (OSError, ValueError, RuntimeError) as err:
        print(f"wm eval: cannot load checkpoint: {err}", file=sys.stderr)
        return 1
    model = models[0] if len(models) == 1 else Ensemble(models)
    checkpoint = [{"file": p, "sha256": sha256_of(p)} for p in args.ckpt]
    try:
        record = evaluate(
            model, args.data, horizons=args.horizons, context=args.context, samples=args.samples, seed=args.seed,
            batch_size=args.batch_size, resolution=args.resolution, out=args.out,
            checkpoint=checkpoint[0] if len(checkpoint) == 1 else {"ensemble": checkpoint},
            i3d_weights=args.i3d_weights, lpips_net=args.lpips_net, fvd=not args.no_fvd, lpips=not args.no_lpips,
            random_weights=args.random_weights,
        )
    except (OSError, ValueError) as err:
        print(f"wm eval: {err}", file=sys.stderr)
        return 1
    for h, values in record["metrics"].items():
        shown = "  ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "count")
        print(f"h={h:>3}  {shown}")
    for name, reason in record["absent"].items():
        print(f"{name}: absent ({reason})")
    print(f"wrote {args.out} ({record['samples']} clips)")
    return 0
