"""The `wm` console script: one entry point, one module per subcommand.

`wm fit|validate|test` go to LightningCLI; every other subcommand lives in the module named in
COMMANDS, which exposes `main(argv: list[str]) -> int` and is imported only when used, so that
`wm shards ...` does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
import sys

LIGHTNING = ("fit", "validate", "test")

COMMANDS: dict[str, tuple[str, str]] = {
    "shards": ("pipeline.data.commands", "write, index and verify shards (videos, atari, sample, verify, index)"),
    "eval": ("pipeline.eval.commands", "evaluate a checkpoint per prediction horizon into eval.json"),
    "leaderboard": ("pipeline.eval.board_command", "rank runs per horizon from eval.json files"),
    "analyze": ("pipeline.eval.analyze_command", "compounding-error analysis of an eval.json"),
    "weights": ("pipeline.eval.weights_command", "locate or download feature-extractor weights"),
    "bench": ("pipeline.bench", "benchmarks with JSON results (data, train, sample, frechet)"),
    "export": ("pipeline.distributed.export", "consolidate a checkpoint into one safetensors file"),
    "plan": ("pipeline.plan.command", "plan with a learned world model (CEM/MPC), online or offline"),
    "demo": ("pipeline.demo", "train, evaluate and rank the tiny models on the sample corpus"),
}


def usage() -> str:
    lines = ["usage: wm COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12} LightningCLI {name} (--config YAML, any key overridable)" for name in LIGHTNING]
    lines += [f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `wm COMMAND --help` for the options of one command; `wm --version` prints the version."]
    return "\n".join(lines)


def lightning_main(argv: list[str]) -> int:
    """Run LightningCLI with any LightningModule / LightningDataModule chosen by class_path."""
    from pipeline.train_cli import run_lightning

    return run_lightning(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        import pipeline

        print(f"wm (world-model-pipeline) {pipeline.__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name in LIGHTNING:
        return lightning_main(argv)
    if name not in COMMANDS:
        print(f"wm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
