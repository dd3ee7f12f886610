"""`wm weights where|download NAME`: locate or fetch feature-extractor weights."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.eval.weights import SPECS, candidates, download, find_weights, sha256_of


def lpips_backbones() -> list[tuple[str, str]]:
    """(net, expected torchvision cache path) of the LPIPS backbones."""
    from pipeline.eval.lpips import backbone_path

    return [(net, str(backbone_path(net))) for net in ("alex", "vgg")]


def where() -> int:
    for name, spec in SPECS.items():
        try:
            path = find_weights(name)
            print(f"{name:<16} found    {path}  sha256={sha256_of(path)}")
        except FileNotFoundError:
            places = ", ".join(str(p) for _, p in candidates(name))
            env = "set" if os.environ.get(spec.env) else "unset"
            print(f"{name:<16} missing  (looked at {places}; ${spec.env} {env})")
    for net, path in lpips_backbones():
        state = "found  " if os.path.isfile(path) else "missing"
        print(f"lpips-{net:<10} {state}  {path}  (torchvision cache under TORCH_HOME)")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wm weights", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("where", help="list where each weights file was found (or looked for)")
    dl = sub.add_parser("download", help="fetch a published weights file into the cache and check its sha256")
    dl.add_argument("name", choices=sorted(SPECS))
    dl.add_argument("--dest", default=None, help="directory (default: WM_CACHE or ~/.cache/world-model-pipeline)")
    dl.add_argument("--sha256", default=None, help="expected digest (overrides the pinned one)")
    args = parser.parse_args(argv)
    if args.action == "where":
        return where()
    try:
        path, digest = download(args.name, args.dest, sha256=args.sha256)
    except (OSError, ValueError) as err:
        print(f"wm weights download {args.name}: {err}", file=sys.stderr)
        return 1
    print(f"{path}\nsha256={digest}")
    return 0
