#!/usr/bin/env bash
# A training run on a lent GPU machine in one call: set up Python, train a config for a fixed
# number of minutes (the steps fitted to the machine), and leave the run folder in the output
# folder, to be exported and scored here. See docs/gpu-check.md ("Training on a lent GPU").
#
#   bash scripts/gpu-train.sh --pack      # here: the config's training events into build/gpu-data, and the wheels
#   run(command="bash scripts/gpu-train.sh", carry=["build/gpu-wheels", "build/gpu-data"], timeout_s=590)
#   bash scripts/gpu-train.sh --minutes 1 --out /tmp/gpu-train   # anywhere: proves it runs (CPU where there is no GPU;
#       the config's 12 workers hold about 11 GB: on a small machine give --config a copy with fewer)
#
# Options: --config FILE (default configs/ablation/ensemble-gan-gpu.toml), --minutes M (the training
# loop's wall-clock, default 5; loading the events and timing the steps come on top, about 1.5 min
# on a lent machine), --out DIR (default $OUT, else runs/gpu-train), --setup (as scripts/gpu-check.sh).
# The radar files are read from build/gpu-data where --pack made it, else from NOWCAST_DATA_ROOT.
# Python and the packages: scripts/gpu-env.sh; the wheels' folder is $GPU_CHECK_WHEELS (default
# build/gpu-wheels, made by scripts/gpu-check.sh --fetch-wheels).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
WHEELS=${GPU_CHECK_WHEELS:-build/gpu-wheels}
SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
DATA=build/gpu-data
CONFIG=configs/ablation/ensemble-gan-gpu.toml
MINUTES=5
OUT_DIR=${OUT:-runs/gpu-train}
SETUP=0
PACK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --setup) SETUP=1; shift ;;
    --pack) PACK=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -f "$CONFIG" ] || { echo "no config $CONFIG" >&2; exit 2; }

if [ "$PACK" = 1 ]; then
  # the radar files of the config's training events, copied under their archive paths: the lent
  # machines reach nothing, and the checkout that travels is limited to 64 MiB
  PY=${PYTHON:-.venv/bin/python}
  rm -rf "$DATA.tmp" && mkdir -p "$DATA.tmp" || exit 2
  PYTHONPATH="$REPO" "$PY" - "$CONFIG" "$DATA.tmp" <<'EOF' || exit 2
import shutil
import sys
from pathlib import Path

from nowcast import config as config_io
from nowcast.gan.config import ExperimentConfig
from nowcast.io.catalogue import archive_root, find_event_files, get_event, load_catalogue

cfg = config_io.load(ExperimentConfig, sys.argv[1])
dest, root = Path(sys.argv[2]), archive_root(cfg.data.data_root)
events = load_catalogue(cfg.data.catalogue) if cfg.data.catalogue else None
for name in cfg.data.train_events:
    event = events[name] if events else get_event(name)
    files = find_event_files(event, cfg.data.data_root)
    for _, path in files:
        target = dest / path.resolve().relative_to(root.resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    print(f"{name}: {len(files)} files")
EOF
  rm -rf "$DATA" && mv "$DATA.tmp" "$DATA"
  [ -d "$WHEELS" ] && ls "$WHEELS" | grep -q . || bash scripts/gpu-check.sh --fetch-wheels
  tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  carried=$(du -cb "$WHEELS" "$DATA" | tail -1 | cut -f1)
  echo "travels: $(( (tree + carried) / 1048576 )) MiB of 64 (checkout $(( tree / 1048576 )), $WHEELS and $DATA $(( carried / 1048576 )))"
  echo "then: run(command=\"bash scripts/gpu-train.sh\", carry=[\"$WHEELS\", \"$DATA\"], timeout_s=590)"
  exit 0
fi

JOB=gpu-train
# shellcheck source=scripts/gpu-env.sh
source scripts/gpu-env.sh
log "$CONFIG for $MINUTES min"
log "$SETUP_NOTE; setup took $(( $(date +%s) - began )) s"
[ -d "$DATA" ] && export NOWCAST_DATA_ROOT="$REPO/$DATA"
export NOWCAST_CACHE_DIR=${NOWCAST_CACHE_DIR:-/tmp/nowcast-cache}
log "radar files from ${NOWCAST_DATA_ROOT:-the default archive}"

# the run folder sits directly in the output folder: what comes back from a lent machine is at
# most two folders deep and eight files
PYTHONUNBUFFERED=1 "$PY" -m nowcast.cli train --config "$CONFIG" --out "$OUT_DIR/run" --no-progress \
  --fit-minutes "$MINUTES" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
ls -l "$OUT_DIR/run" 2>&1 | tee -a "$LOG"
log "== gpu-train done in $(( $(date +%s) - began )) s, exit $status"
log "here: nowcast export RUN --name NAME --version vN --models-dir DIR, then nowcast evaluate (docs/gpu-check.md)"
exit "$status"
