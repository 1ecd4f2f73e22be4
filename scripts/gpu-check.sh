#!/usr/bin/env bash
# The GPU check in one command: set up the Python environment, print the card, run
# bench/gpu_check.py (bounded phases), leave gpu-check.json/.md/.log in the output folder.
# See docs/gpu-check.md.
#
#   bash scripts/gpu-check.sh --quick --device cpu --out /tmp/gpucheck   # here, no GPU: proves it runs
#   bash scripts/gpu-check.sh                                            # on a GPU machine, into $OUT
#   bash scripts/gpu-check.sh --fetch-wheels    # with a package index: the wheels a machine without one needs
#
# Options: --out DIR (default $OUT, else runs/gpu-check), --setup (create .venv with
# scripts/setup.sh and TORCH_SPEC, default torch==2.13.0 from PyPI: a CUDA 13 build on Linux x86-64,
# when the interpreter lacks the project's packages and an index is reachable); everything else
# (--quick, --device, --budget-s, --phases, --models) goes to bench/gpu_check.py.
#
# Python and the packages: scripts/gpu-env.sh; the wheels' folder is $GPU_CHECK_WHEELS (default
# build/gpu-wheels, made by --fetch-wheels and carried along).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
WHEELS=${GPU_CHECK_WHEELS:-build/gpu-wheels}
SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
# what the project imports beyond a CUDA image's usual numpy/scipy/torch/xarray/pandas/httpx/pytest stack
EXTRA_PACKAGES="pysteps jsmin jsonschema jsonschema-specifications referencing rpds-py netCDF4 cftime pyproj
fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
typing-extensions msgspec uvicorn httptools opentelemetry-api"

OUT_DIR=${OUT:-runs/gpu-check}
SETUP=0
FETCH=0
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    --out=*) OUT_DIR=${1#--out=}; shift ;;
    --setup) SETUP=1; shift ;;
    --fetch-wheels) FETCH=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

if [ "$FETCH" = 1 ]; then
  # versions: those of .venv (what CI tests); cp312 manylinux x86-64 (the lent machines' python3),
  # else the sdist, built on the machine
  PY=${PYTHON:-.venv/bin/python}
  mkdir -p "$WHEELS"
  for name in $EXTRA_PACKAGES; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) || {
      echo "skip $name: not installed in $PY"; continue; }
    spec="$name==$version"
    if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_CHECK_PYVER:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$WHEELS" "$spec" >/dev/null 2>&1; then
      echo "wheel $spec"
    elif "$PY" -m pip download -q --no-deps --no-binary="$name" -d "$WHEELS" "$spec" >/dev/null 2>&1; then
      echo "sdist $spec (built on the machine)"
    else
      echo "MISSING $spec"
    fi
  done
  du -sh "$WHEELS"
  echo "carry it: run(carry=[\"$WHEELS\"], command=\"bash scripts/gpu-check.sh\")"
  exit 0
fi

JOB=gpu-check
# shellcheck source=scripts/gpu-env.sh
source scripts/gpu-env.sh
export GPU_CHECK_SETUP="$SETUP_NOTE; setup took $(( $(date +%s) - began )) s; nvidia-smi -L: $CARD"
log "$GPU_CHECK_SETUP"

PYTHONUNBUFFERED=1 "$PY" bench/gpu_check.py --out "$OUT_DIR" "${ARGS[@]}"
status=$?
log "== gpu-check done in $(( $(date +%s) - began )) s, exit $status"
exit $status
