#!/usr/bin/env bash
# Prove the deployment: build the image with podman (or docker), run it the way production should (read-only
# root filesystem, a tmpfs for /tmp, the image's non-root user), wait for its HEALTHCHECK, send a real forecast
# request (CF-netCDF in and out) and check the answer. Exits non-zero, saying what failed, on any failure.
#
#   scripts/container-check.sh            the CPU image (localhost/nowcast:check)
#   scripts/container-check.sh --cuda     the CUDA image (PyPI's torch wheel with its nvidia-* libraries,
#                                         localhost/nowcast:check-cuda): torch must import with CUDA support,
#                                         then the same checks (the service runs on the CPU without a GPU)
#   --rm-image                            remove the image afterwards (the base image and build cache stay)
#   --no-feed                             skip the live-feed check: where the real radar archive is here, a
#                                         watcher container and an API container share a product folder while
#                                         an event is replayed; the watcher is killed (SIGKILL) and restarted
#
# Environment: ENGINE=podman|docker; BASE_IMAGE (default localhost/nowcast-base:bookworm, made here by
# scripts/make-base-image.sh with debootstrap when missing, since no image registry need be reachable;
# BASE_IMAGE=python:3.11-slim-bookworm uses the Dockerfile's default from a registry); WHEELS_DIR (a folder
# of wheels for the build; default: a local CPU torch wheel found in pip's find-links); TORCH_VERSION;
# HOST_PYTHON (default .venv/bin/python: makes the request and reads the answer); PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL (http(s) ones are passed to the build) and the CA bundle pip uses here (PIP_CERT,
# pip's global.cert, REQUESTS_CA_BUNDLE, SSL_CERT_FILE: a build secret, not stored in the image).
# Where neither podman nor a docker with a running daemon is here and this runs as root on Debian, podman is
# installed.
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$SECONDS
CUDA=0
RM_IMAGE=0
FEED=1
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=1 ;;
    --rm-image) RM_IMAGE=1 ;;
    --no-feed) FEED=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "container-check: unknown argument $arg (--help)" >&2; exit 2 ;;
  esac
done

say() { echo "container-check: $*"; }
fail() { echo "container-check: FAIL: $*" >&2; exit 1; }

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
BASE_IMAGE=${BASE_IMAGE:-localhost/nowcast-base:bookworm}
HOST_PYTHON=${HOST_PYTHON:-.venv/bin/python}
API_KEY=check-$RANDOM$RANDOM
if [ "$CUDA" = 1 ]; then IMAGE=${IMAGE:-localhost/nowcast:check-cuda}; else IMAGE=${IMAGE:-localhost/nowcast:check}; fi
NAME=nowcast-check-$$
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nowcast-check.XXXXXX")
CONTAINER_STARTED=0

cleanup() {
  local rc=$?
  if [ "$CONTAINER_STARTED" = 1 ]; then
    if [ "$rc" -ne 0 ]; then
      echo "--- container log (last 40 lines) ---" >&2
      "$ENGINE" logs "$NAME" 2>&1 | grep -v 'systemd' | tail -n 40 >&2 || true
    fi
    for container in "$NAME" "$NAME-watch" "$NAME-api"; do
      if [ "$rc" -ne 0 ] && [ "$container" != "$NAME" ] && "$ENGINE" inspect "$container" >/dev/null 2>&1; then
        echo "--- $container log (last 30 lines) ---" >&2
        "$ENGINE" logs "$container" 2>&1 | tail -n 30 >&2 || true
      fi
      "$ENGINE" rm -f "$container" >/dev/null 2>&1 || true
    done
  fi
  if [ "$RM_IMAGE" = 1 ] && [ -n "${ENGINE:-}" ]; then "$ENGINE" rmi -f "$IMAGE" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$HOST_PYTHON" ] || fail "$HOST_PYTHON missing: run scripts/setup.sh (or set HOST_PYTHON)"

# --- the engine ------------------------------------------------------------------------------------------------
if [ -z "${ENGINE:-}" ]; then
  if command -v podman >/dev/null; then ENGINE=podman
  # a docker client without a daemon it can reach cannot build anything: podman is installed then
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
  elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "no podman, and no docker with a daemon: installing Debian's podman, runc and debootstrap"
    t=$SECONDS
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap; } \
      >"$WORK/apt.log" 2>&1 || { tail -n 20 "$WORK/apt.log" >&2; fail "apt-get install podman failed"; }
    say "podman installed in $((SECONDS - t)) s"
    ENGINE=podman
  else
    fail "neither podman nor a docker with a running daemon is here (as root on Debian this script installs podman)"
  fi
fi
command -v "$ENGINE" >/dev/null || fail "ENGINE=$ENGINE is not installed"

# podman: runc, the cgroupfs manager, no default ulimits (crun refuses some cgroup v1 layouts, and podman's
# default ulimits can exceed a VM's hard limits). Used unless this machine has a configuration of its own.
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] && [ ! -e /etc/containers/containers.conf ]; then
  if command -v runc >/dev/null; then
    cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    export CONTAINERS_CONF=$WORK/containers.conf
    say "podman configuration: $CONTAINERS_CONF (runc, cgroupfs, no default ulimits)"
  fi
fi
"$ENGINE" info >"$WORK/info.log" 2>&1 || { tail -n 20 "$WORK/info.log" >&2; fail "$ENGINE info failed"; }
say "engine: $("$ENGINE" --version)"

# --- the base image --------------------------------------------------------------------------------------------
case "$BASE_IMAGE" in
  localhost/nowcast-base:*) ENGINE=$ENGINE bash scripts/make-base-image.sh "$BASE_IMAGE" || fail "no base image" ;;
esac

# --- build -----------------------------------------------------------------------------------------------------
pip_setting() {  # pip's own setting (environment or pip.conf), empty when unset
  "$HOST_PYTHON" -m pip config get "$1" 2>/dev/null || true
}

build=(build -t "$IMAGE" --build-arg "PYTHON_IMAGE=$BASE_IMAGE" --build-arg "RUNTIME_IMAGE=$BASE_IMAGE"
       --build-arg "TORCH_VERSION=$TORCH_VERSION")
if [ "$ENGINE" = podman ]; then
  build+=(--format docker)  # OCI images have no HEALTHCHECK
else
  export DOCKER_BUILDKIT=1   # RUN --mount, --secret, --build-context
fi

# the CA bundle pip trusts here (a TLS-intercepting proxy's CA lies in it) as a build secret
ca_file=${PIP_CERT:-$(pip_setting global.cert)}
ca_file=${ca_file:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}
if [ -n "$ca_file" ] && [ -s "$ca_file" ]; then build+=(--secret "id=pip_cert,src=$ca_file"); fi
# a PyPI mirror or proxy reachable over http(s) (file:// indexes of this machine are not visible in the build)
index_url=${PIP_INDEX_URL:-$(pip_setting global.index-url)}
case "$index_url" in http*) build+=(--build-arg "PIP_INDEX_URL=$index_url") ;; esac
extra_urls=""
for url in ${PIP_EXTRA_INDEX_URL:-$(pip_setting global.extra-index-url)}; do
  case "$url" in http*) extra_urls="$extra_urls $url" ;; esac
done
if [ -n "$extra_urls" ]; then build+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra_urls# }"); fi
for var in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  if [ -n "${!var:-}" ]; then build+=(--build-arg "$var=${!var}"); fi
done

if [ "$CUDA" = 1 ]; then
  # PyPI's Linux wheel of torch is the CUDA build; a CPU wheel in the wheels folder would win over it
  case "$index_url" in http*) torch_index=$index_url ;; *) torch_index=https://pypi.org/simple ;; esac
  build+=(--build-arg "TORCH_INDEX_URL=$torch_index")
  wheels=${WHEELS_DIR:-}
  say "variant: CUDA (torch $TORCH_VERSION from PyPI with the nvidia-* wheels)"
else
  wheels=${WHEELS_DIR:-}
  if [ -z "$wheels" ]; then
    # a local CPU build of torch in pip's find-links (setup.sh installs the same one on the host)
    for dir in ${PIP_FIND_LINKS:-} $(pip_setting global.find-links); do
      found=$(find "${dir#file://}" -maxdepth 1 -name "torch-$TORCH_VERSION+cpu-*.whl" 2>/dev/null | head -n1)
      if [ -n "$found" ]; then
        mkdir -p "$WORK/wheels"
        ln "$found" "$WORK/wheels/" 2>/dev/null || cp "$found" "$WORK/wheels/"
        wheels=$WORK/wheels
        say "variant: CPU, torch from $found"
        break
      fi
    done
    [ -n "$wheels" ] || say "variant: CPU, torch from the Dockerfile's TORCH_INDEX_URL (no local CPU wheel)"
  fi
fi
if [ -n "$wheels" ]; then build+=(--build-context "wheels=$wheels"); fi

say "building $IMAGE on $BASE_IMAGE ($ENGINE ${build[*]:3})"
t=$SECONDS
"$ENGINE" "${build[@]}" . >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; fail "image build failed"; }
BUILD_S=$((SECONDS - t))
SIZE=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
say "built in ${BUILD_S} s; image size $((SIZE / 1000000)) MB ($SIZE bytes)"
"$ENGINE" image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q service.healthcheck \
  || fail "the image has no HEALTHCHECK"

# --- the CUDA variant: torch imports with CUDA support (no GPU needed) ------------------------------------------
if [ "$CUDA" = 1 ]; then
  out=$("$ENGINE" run --rm "$IMAGE" python -c '
import torch
print(torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.is_available(),
      torch.backends.cudnn.version(), "gpu", torch.cuda.is_available())
assert torch.version.cuda, "torch without CUDA support"
' 2>"$WORK/cuda.err") || { cat "$WORK/cuda.err" >&2; fail "torch does not import with CUDA support"; }
  say "torch in the CUDA image: $out"
fi

# --- run it as production would ------------------------------------------------------------------------------
run=(run -d --name "$NAME" --read-only --tmpfs "/tmp:rw,nosuid,nodev,size=512m,mode=1777"
     -p 127.0.0.1::8080 -e "NOWCAST_API_KEYS=$API_KEY" -e "NOWCAST_TORCH_THREADS=$(nproc)")
# docker probes every --interval (30 s in the image) from the start: probe often here
if [ "$ENGINE" = docker ]; then run+=(--health-interval 2s); fi
t=$SECONDS
"$ENGINE" "${run[@]}" "$IMAGE" >"$WORK/run.log" 2>&1 || { cat "$WORK/run.log" >&2; fail "$ENGINE run failed"; }
CONTAINER_STARTED=1
ADDR=$("$ENGINE" port "$NAME" 8080 | head -n1)
ADDR=${ADDR/0.0.0.0/127.0.0.1}
[ -n "$ADDR" ] || fail "no published port"
say "container $NAME started, serving on $ADDR"

# the image's HEALTHCHECK must report healthy (podman without systemd runs no timers: run it here)
deadline=$((SECONDS + ${HEALTH_TIMEOUT_S:-180}))
while :; do
  [ "$("$ENGINE" inspect --format '{{.State.Running}}' "$NAME")" = true ] || fail "the container exited"
  if [ "$ENGINE" = podman ]; then podman healthcheck run "$NAME" >/dev/null 2>&1 || true; fi
  health=$("$ENGINE" inspect --format '{{.State.Health.Status}}' "$NAME" 2>/dev/null || true)
  [ "$health" = healthy ] && break
  [ "$SECONDS" -lt "$deadline" ] || fail "HEALTHCHECK not healthy after ${HEALTH_TIMEOUT_S:-180} s (status: $health)"
  sleep 1
done
say "HEALTHCHECK healthy after $((SECONDS - t)) s"

# the container runs as 10001 on a read-only root filesystem with a writable /tmp
uid=$("$ENGINE" exec "$NAME" id -u) || fail "$ENGINE exec failed"
[ "$uid" = 10001 ] || fail "the service runs as uid $uid, not 10001"
if "$ENGINE" exec "$NAME" sh -c ': >/app/probe' 2>/dev/null; then fail "the root filesystem is writable"; fi
"$ENGINE" exec "$NAME" sh -c ': >/tmp/probe && rm /tmp/probe' || fail "/tmp is not writable"
say "uid $uid, root filesystem read-only, /tmp writable"

# --- a real forecast: CF-netCDF in, CF-netCDF out ----------------------------------------------------------------
"$HOST_PYTHON" - "$ADDR" "$API_KEY" "$WORK" <<'PY' || fail "the forecast request failed"
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import xarray as xr

addr, key, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
base = f"http://{addr}"
STEPS = 6


def call(path, body=None, headers=None, timeout=300):
    request = urllib.request.Request(base + path, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# ready: a warmed-up model serves
deadline = time.monotonic() + 300
while (status := call("/readyz")[0]) != 200:
    if time.monotonic() > deadline:
        sys.exit(f"/readyz still {status} after 300 s")
    time.sleep(1)
status, _, body = call("/v1/models", headers={"X-API-Key": key})
assert status == 200, (status, body[:300])
active = json.loads(body).get("active", {})
print(f"container-check: ready, active model {active.get('name')}@{active.get('version')}")

# the input: the wettest 256x256 window of a real radar event where the archive is here, else synthetic rain
try:
    from nowcast.io.catalogue import load_event

    seq = load_event("knmi-20100826", start="2010-08-26T03:00", end="2010-08-26T03:35", cache=False)
    rain = np.nan_to_num(seq.values[-1])
    csum = np.pad(rain.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = csum[256:, 256:] - csum[:-256, 256:] - csum[256:, :-256] + csum[:-256, :-256]
    y0, x0 = np.unravel_index(np.argmax(sums[::16, ::16]), sums[::16, ::16].shape)
    seq = seq.isel(y=slice(16 * y0, 16 * y0 + 256), x=slice(16 * x0, 16 * x0 + 256))
    source = "KNMI radar, 2010-08-26 03:00-03:35"
except Exception as exc:  # no archive here
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    seq = synthetic_sequence(SyntheticRain(ny=256, nx=256, frames=8), seed=1)
    source = f"synthetic rain ({type(exc).__name__}: no real event)"
from nowcast.io.netcdf import write_netcdf

body = write_netcdf(seq, work / "input.nc").read_bytes()
print(f"container-check: input {source}: {dict(seq.sizes)}, {len(body)} bytes of CF-netCDF")

# a request without the key is refused (a keyless POST is refused before its body is read: the server may
# close the connection while the client still sends, so ask with a GET)
status, _, _ = call("/v1/models")
assert status == 401, f"a request without X-API-Key got {status}, not 401"

headers = {"Content-Type": "application/x-netcdf", "Accept": "application/x-netcdf", "X-API-Key": key}
started = time.monotonic()
status, answer_headers, answer = call(f"/v1/nowcasts?steps={STEPS}", body, headers)
seconds = time.monotonic() - started
if status != 200:
    sys.exit(f"POST /v1/nowcasts answered {status}: {answer[:500]!r}")
content_type = answer_headers.get("content-type", answer_headers.get("Content-Type", ""))
assert content_type.startswith("application/x-netcdf"), content_type
(work / "forecast.nc").write_bytes(answer)
with xr.open_dataset(work / "forecast.nc", engine="netcdf4") as ds:
    ds.load()
rates = [name for name, v in ds.data_vars.items() if v.attrs.get("standard_name") == "lwe_precipitation_rate"]
assert rates, f"no lwe_precipitation_rate variable in {list(ds.data_vars)}"
fc = ds[rates[0]]
assert fc.dims[-3:] == ("time", "y", "x"), fc.dims
assert fc.sizes["time"] == STEPS, f"{fc.sizes['time']} frames, asked for {STEPS}"
assert (fc.sizes["y"], fc.sizes["x"]) == (seq.sizes["y"], seq.sizes["x"]), "the grid changed"
assert ds.attrs.get("Conventions", "").startswith("CF-"), ds.attrs.get("Conventions")
reference = np.datetime64(ds["forecast_reference_time"].values, "s")
assert reference == np.datetime64(seq["time"].values[-1], "s"), (reference, seq["time"].values[-1])
assert np.datetime64(ds["time"].values[0], "s") > reference, "the first forecast frame is not after the input"
values = fc.values
finite = values[np.isfinite(values)]
assert finite.size and finite.min() >= 0 and finite.max() <= 1000, "rates outside [0, 1000] mm/h or all no-data"
print(f"container-check: POST /v1/nowcasts -> {status} {content_type}, {len(answer)} bytes in {seconds:.2f} s; "
      f"{rates[0]}{tuple(fc.shape)} {fc.attrs.get('units')}, {fc.sizes['time']} frames from {reference}, "
      f"max {finite.max():.2f} mm/h, wet (>0.1) {np.mean(finite > 0.1):.0%}; "
      f"request {answer_headers.get('x-request-id', answer_headers.get('X-Request-ID'))}")
PY

# --- the live feed: a watcher container and an API container sharing the product folder ----------------------
DATA_ROOT=${NOWCAST_DATA_ROOT:-../shared/data/pysteps-data}
if [ "$FEED" = 1 ] && [ -d "$DATA_ROOT/radar/KNMI" ]; then
  t=$SECONDS
  mkdir -p "$WORK/feed" "$WORK/products"
  chown 10001:10001 "$WORK/products"   # the image's user writes products; the feed stays read-only to it
  cat >"$WORK/watch.toml" <<'TOML'
input_dir = "/var/lib/nowcast/feed"
output_dir = "/var/lib/nowcast/products"
source = "knmi"
steps = 6
settle_s = 1.0
poll_interval_s = 0.5
missing_wait_s = 0.0
max_missing_frames = 0
model_deadline_s = 300.0
TOML
  feed_run=(run -d --read-only --tmpfs "/tmp:rw,nosuid,nodev,size=512m,mode=1777" -e "NOWCAST_TORCH_THREADS=$(nproc)")
  "$ENGINE" "${feed_run[@]}" --name "$NAME-watch" -v "$WORK/watch.toml:/etc/nowcast/watch.toml:ro" \
    -v "$WORK/feed:/var/lib/nowcast/feed:ro" -v "$WORK/products:/var/lib/nowcast/products" \
    "$IMAGE" python -m nowcast.cli watch /etc/nowcast/watch.toml >>"$WORK/feed-run.log" 2>&1 \
    || { cat "$WORK/feed-run.log" >&2; fail "the watcher did not start"; }
  "$ENGINE" "${feed_run[@]}" --name "$NAME-api" -p 127.0.0.1::8080 -e "NOWCAST_API_KEYS=$API_KEY" \
    -e NOWCAST_PRODUCTS_DIR=/var/lib/nowcast/products -e NOWCAST_STALE_AFTER_S=1000000000 \
    -v "$WORK/products:/var/lib/nowcast/products:ro" "$IMAGE" >>"$WORK/feed-run.log" 2>&1 \
    || { cat "$WORK/feed-run.log" >&2; fail "the feed's API did not start"; }
  FEED_ADDR=$("$ENGINE" port "$NAME-api" 8080 | head -n1)
  FEED_ADDR=${FEED_ADDR/0.0.0.0/127.0.0.1}
  NOWCAST_DATA_ROOT=$DATA_ROOT "$HOST_PYTHON" - "$ENGINE" "$NAME" "$WORK" "$FEED_ADDR" "$API_KEY" <<'PY' \
    || fail "the live-feed check failed"
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd

from nowcast.feed import MANIFEST, read_manifest, read_product
from nowcast.forecasters import get_forecaster
from nowcast.io.catalogue import find_event_files, get_event
from nowcast.watch import replay_event

engine, name, work, addr, key = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]
feed, products = work / "feed", work / "products"
event = get_event("knmi-20100826")
times = [when for when, _ in find_event_files(event, start="2010-08-26T02:00")][:8]


def listed() -> dict:
    return {e.reference_time: e for e in read_manifest(products)} if (products / MANIFEST).exists() else {}


def wait_for(count: int, what: str) -> dict:
    deadline = time.monotonic() + 420
    while len(found := listed()) < count:
        if time.monotonic() > deadline:
            sys.exit(f"{what}: {len(found)} products after 420 s, expected {count}")
        time.sleep(0.5)
    return found


def get(path: str) -> dict:
    request = urllib.request.Request(f"http://{addr}{path}", headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.load(answer)


replay_event(event, feed, interval_s=1.0, start=times[0], frames=6)
before = wait_for(2, "before the kill")
subprocess.run([engine, "kill", "--signal", "KILL", f"{name}-watch"], check=True, capture_output=True)
time.sleep(1)  # a restart must not race the kill
print(f"container-check: feed: watcher killed (SIGKILL) after {len(before)} products")
replay_event(event, feed, interval_s=0.0, start=times[6], frames=2)
subprocess.run([engine, "start", f"{name}-watch"], check=True, capture_output=True)
n_input = get_forecaster("default-gan").n_input_frames  # the model the watcher runs by default
after = wait_for(len(times) - n_input + 1, "after the restart")
expected = [pd.Timestamp(t, tz="UTC").to_pydatetime() for t in times[n_input - 1:]]
assert sorted(after) == expected, (sorted(after), expected)
for when, entry in before.items():
    assert after[when].written_at == entry.written_at, f"{when} was forecast twice"
assert sorted(p.name for p in products.iterdir()) == sorted([MANIFEST, *(e.file for e in after.values())]), \
    sorted(p.name for p in products.iterdir())
newest = after[max(after)]
fields = read_product(products / newest.file)
assert not newest.fallback and newest.model.startswith("default-gan@"), newest
deadline = time.monotonic() + 300
while True:  # the API container warms its model up first
    try:
        latest = get("/v1/nowcasts/latest")
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(1)
assert pd.Timestamp(latest["reference_time"]) == pd.Timestamp(newest.reference_time), latest
lon = sum(c[0] for c in latest["grid"]["corners_lonlat"]) / 4
lat = sum(c[1] for c in latest["grid"]["corners_lonlat"]) / 4
point = get(f"/v1/nowcasts/latest/point?lat={lat:.4f}&lon={lon:.4f}")
row, col = point["location"]["row"], point["location"]["col"]
served = [step["rate_mmh"] for step in point["forecast"]]
stored = [round(float(v), 4) if v == v else None for v in fields.forecast.values[:, row, col]]
assert served == stored, (served, stored)
print(f"container-check: feed: {len(after)} products by {newest.model} on the {fields.forecast.shape[1:]} KNMI grid, "
      f"none forecast twice, no stray file; /v1/nowcasts/latest {latest['reference_time']}; "
      f"point {lat:.2f}N {lon:.2f}E (row {row}, col {col}) = the product's values")
PY
  say "live feed: watcher and API containers sharing a product folder, checked in $((SECONDS - t)) s"
elif [ "$FEED" = 1 ]; then
  say "live feed: not checked (no real radar archive at $DATA_ROOT)"
fi

say "OK: $IMAGE (${SIZE} bytes) built in ${BUILD_S} s; whole check $((SECONDS - T0)) s"
