#!/usr/bin/env bash
# Measure the default settings as a user meets them: ten minutes of `charnn train` on Tiny
# Shakespeare with no other option, then the validation curve against time and a sample.
#
#   bash scripts/default_quality.sh [RUN_DIR]        (default RUN_DIR: runs/default-10m)
#
# Run it on an otherwise idle machine: the budget is wall-clock time, so anything else
# running steals training steps.
set -euo pipefail
cd "$(dirname "$0")/.."
charnn=${CHARNN:-.venv/bin/charnn}
python=${PYTHON:-.venv/bin/python}
out=${1:-runs/default-10m}

"$charnn" train corpora/tinyshakespeare.txt --max-time 10m --out "$out" --overwrite
"$python" scripts/curve.py "$out"
"$charnn" eval "$out" --json
"$charnn" sample "$out" -n 600 --temp 0.8 --seed 1
echo
