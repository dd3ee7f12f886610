"""The README's test and lint commands reach every file: no test file or module is silently skipped.

pytest's default `norecursedirs` and ruff's default `exclude` skip folder names such as `dist` and `build`;
a folder with such a name would drop out of CI without a word. These tests run the commands as the README
prints them (from the repository root) and compare what they reach with the files on disk.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _project_files(pattern: str) -> set[str]:
    """Tracked and untracked-but-not-ignored files matching `pattern`, relative to the repository root."""
    proc = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", pattern],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {line for line in proc.stdout.splitlines() if (ROOT / line).is_file()}


def test_every_test_file_is_collected_by_the_readme_command() -> None:
    on_disk = {f for f in _project_files("tests/*.py") if Path(f).name.startswith("test_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = {line.split("::", 1)[0] for line in proc.stdout.splitlines() if "::" in line}
    assert on_disk, "no test files found"
    assert on_disk - collected == set(), "test files on disk that `python -m pytest` does not collect"


def test_every_python_file_is_linted_by_the_readme_command() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    proc = subprocess.run([str(ruff), "check", "--show-files", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    linted = {str(Path(line.strip()).resolve().relative_to(ROOT)) for line in proc.stdout.splitlines() if line.strip()}
    on_disk = _project_files("*.py")
    assert {"pipeline/distributed/env.py", "tests/distributed/test_world_checks.py"} <= on_disk
    assert on_disk - linted == set(), "python files that `ruff check .` does not lint"
