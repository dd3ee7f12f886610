from __future__ import annotations

import subprocess
import sys

from pipeline import cli


def test_help_lists_every_command(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in (*cli.LIGHTNING, *cli.COMMANDS):
        assert f"  {name} " in out


def test_unknown_command_fails_with_usage(capsys) -> None:
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "usage: wm" in err


def test_console_script_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "wm COMMAND" in proc.stdout


def test_version(capsys) -> None:
    import pipeline

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"wm (world-model-pipeline) {pipeline.__version__}"
