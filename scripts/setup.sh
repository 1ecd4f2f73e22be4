#!/usr/bin/env bash
# Create .venv with nowcast and its dev tools. Idempotent: a second run only checks.
# PYTHON picks the interpreter (default python3, 3.11+). TORCH_SPEC pins torch; the
# default takes the CPU build where pip finds one locally, else PyPI's wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# the forecasters' page libraries, pinned with their hashes (npm pack; only what is missing or different)
.venv/bin/python scripts/vendor_web.py
.venv/bin/python -c "import nowcast, torch, pysteps, cv2; print('nowcast ready: torch', torch.__version__)"
