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
# Python: $PYTHON, else .venv/bin/python, else python3; where nvidia-smi sees a GPU, the first of
# them whose torch sees CUDA. A machine without a package index (the lent GPU machines) gets the
# project's missing packages from the folder $GPU_CHECK_WHEELS (default build/gpu-wheels,
# made by --fetch-wheels and carried along): wheels are installed into a private folder, sdists
# (pysteps, jsmin) are built there first, without network.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
WHEELS=${GPU_CHECK_WHEELS:-build/gpu-wheels}
SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
# what the project imports beyond a CUDA image's usual numpy/scipy/torch/xarray/pandas/httpx/pytest stack
EXTRA_PACKAGES="pysteps jsmin jsonschema jsonschema-specifications referencing rpds-py netCDF4 cftime pyproj
fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
typing-extensions msgspec uvicorn httptools opentelemetry-api"
NEEDED_MODULES="torch numpy scipy xarray pandas cv2 pysteps netCDF4 pyproj fastapi uvicorn pydantic_settings msgspec httpx pytest pytest_timeout"

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

mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/gpu-check.log"
: >"$LOG"
log() { echo "$*" | tee -a "$LOG"; }
began=$(date +%s)

log "== gpu-check $(date -u +%FT%TZ) in $REPO"
if command -v nvidia-smi >/dev/null 2>&1; then
  CARD=$(timeout 20 nvidia-smi -L 2>&1)
else
  CARD="nvidia-smi: not found"
fi
log "nvidia-smi -L: $CARD"
HAS_GPU=0
case "$CARD" in GPU\ 0*) HAS_GPU=1 ;; esac

has_torch() { timeout 120 "$1" -c "import torch" >/dev/null 2>&1; }
has_cuda() { timeout 120 "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }
PY=""
CANDIDATES=()
[ -n "${PYTHON:-}" ] && CANDIDATES+=("$PYTHON")
[ -x .venv/bin/python ] && CANDIDATES+=(".venv/bin/python")
command -v python3 >/dev/null 2>&1 && CANDIDATES+=("$(command -v python3)")
if [ "$HAS_GPU" = 1 ]; then
  for c in "${CANDIDATES[@]}"; do has_cuda "$c" && { PY=$c; break; }; done
fi
if [ -z "$PY" ]; then
  for c in "${CANDIDATES[@]}"; do has_torch "$c" && { PY=$c; break; }; done
fi
if [ -z "$PY" ] && [ "$SETUP" = 1 ]; then
  log "no python with torch: scripts/setup.sh with TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}"
  TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0} timeout 900 bash scripts/setup.sh 2>&1 | tee -a "$LOG"
  PY=.venv/bin/python
fi
[ -z "$PY" ] && { log "FAIL: no python with torch among: ${CANDIDATES[*]:-none}"; exit 2; }
log "python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1))"

missing() {
  "$PY" - $NEEDED_MODULES <<'EOF' 2>/dev/null
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
MISSING=$(missing)
SETUP_NOTE="python $PY; nothing to install"
if [ -n "$MISSING" ]; then
  log "missing modules: $MISSING"
  if [ -d "$WHEELS" ] && ls "$WHEELS" | grep -q .; then
    mkdir -p "$SITE" "$SITE.built"
    wheels=("$WHEELS"/*.whl)
    if [ -e "${wheels[0]}" ]; then
      timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}" 2>&1 | tail -5 | tee -a "$LOG"
    fi
    export PYTHONPATH="$SITE:$PYTHONPATH"
    for sdist in "$WHEELS"/jsmin-*.tar.gz "$WHEELS"/*.tar.gz; do  # jsmin first: pysteps needs it
      [ -e "$sdist" ] || continue
      ls "$SITE.built" | grep -qi "^$(basename "$sdist" | sed 's/-[0-9].*//')-" && continue
      log "building $(basename "$sdist") (no network, no build isolation)"
      timeout 300 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$SITE.built" "$sdist" \
        2>&1 | tail -5 | tee -a "$LOG"
    done
    built=("$SITE.built"/*.whl)
    if [ -e "${built[0]}" ]; then
      timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${built[@]}" 2>&1 | tail -5 | tee -a "$LOG"
    fi
    SETUP_NOTE="python $PY; installed from $WHEELS into $SITE"
  elif [ "$SETUP" = 1 ]; then
    log "scripts/setup.sh (TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0})"
    TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0} timeout 900 bash scripts/setup.sh 2>&1 | tee -a "$LOG"
    PY=.venv/bin/python
    SETUP_NOTE="scripts/setup.sh with ${TORCH_SPEC:-torch==2.13.0}"
  else
    log "no $WHEELS to install from and no --setup: phases that need them will fail"
  fi
  MISSING=$(missing)
  [ -n "$MISSING" ] && SETUP_NOTE="$SETUP_NOTE; still missing: $MISSING"
  log "after setup, missing: ${MISSING:-none}"
fi
export GPU_CHECK_SETUP="$SETUP_NOTE; setup took $(( $(date +%s) - began )) s; nvidia-smi -L: $CARD"
log "$GPU_CHECK_SETUP"

PYTHONUNBUFFERED=1 "$PY" bench/gpu_check.py --out "$OUT_DIR" "${ARGS[@]}"
status=$?
log "== gpu-check done in $(( $(date +%s) - began )) s, exit $status"
exit $status
