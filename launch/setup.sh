#!/usr/bin/env bash
# Creates .venv in the repository root (once) and installs the project into it.
#   bash launch/setup.sh          runtime only
#   bash launch/setup.sh --dev    plus the test and lint tools
# torch and torchvision are pinned here so every machine trains with the same pair.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PIN=${TORCH_PIN:-"torch==2.14.1 torchvision==0.29.1"}
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# shellcheck disable=SC2086
"${pip[@]}" $TORCH_PIN
target="."
[ "${1:-}" = "--dev" ] && target=".[dev]"
"${pip[@]}" -e "$target"
