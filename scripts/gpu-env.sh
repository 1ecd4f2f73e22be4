# Sourced by scripts/gpu-check.sh and scripts/gpu-train.sh: picks the Python that runs the job and
# installs what the project needs beyond it. Expects JOB (the log's name), OUT_DIR, REPO, WHEELS, SITE and
# SETUP (0/1); makes OUT_DIR, starts OUT_DIR/JOB.log and sets log (a function), began, CARD (nvidia-smi -L),
# HAS_GPU (0/1), PY, PYTHONPATH and SETUP_NOTE. See docs/gpu-check.md.
#
# Python: $PYTHON, else .venv/bin/python, else python3; where nvidia-smi sees a GPU, the first of
# them whose torch sees CUDA. A machine without a package index (the lent GPU machines) gets the
# project's missing packages from the folder $WHEELS (made by gpu-check.sh --fetch-wheels and
# carried along): wheels are installed into $SITE, sdists (pysteps, jsmin) built there first,
# without network.
NEEDED_MODULES="torch numpy scipy xarray pandas cv2 pysteps netCDF4 pyproj fastapi uvicorn pydantic_settings msgspec httpx pytest pytest_timeout"

mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/$JOB.log"
: >"$LOG"
log() { echo "$*" | tee -a "$LOG"; }
began=$(date +%s)
log "== $JOB $(date -u +%FT%TZ) in $REPO"

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
