#!/usr/bin/env bash
# Create ./.venv (or $PLDA_VENV) and install plda-wsss with every extra, tests included.
# Works offline from the package index only; torch/torchvision are pinned to releases that
# install from a local wheel cache on the project's CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PLDA_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev,crf,coco,effnet,onnx]"
echo "plda-wsss installed in $VENV (activate with: . $VENV/bin/activate)"
