#!/usr/bin/env bash
# Make localhost/nowcast-base:bookworm, a Debian 12 base with python3.11, without any image registry:
# debootstrap --variant=minbase from the Debian mirror apt uses, then `podman|docker import`.
# Skips everything when the image already exists (FORCE=1 rebuilds). Root only (debootstrap).
#
#   scripts/make-base-image.sh [IMAGE]          ENGINE=podman|docker  MIRROR=http://deb.debian.org/debian
#
# Python is Debian's (/usr/bin/python3.11, 3.11.2), which the Dockerfile's venv links to; python3.11-venv
# brings ensurepip (python3-distutils: debootstrap does not resolve python3.11-venv's virtual dependency on it);
# libgomp1 for pysteps' OpenMP extensions (torch's wheels carry their own). No compilers: the build stage adds them.
set -euo pipefail

IMAGE=${1:-${BASE_IMAGE:-localhost/nowcast-base:bookworm}}
SUITE=${SUITE:-bookworm}
PACKAGES=${BASE_PACKAGES:-python3.11,python3.11-venv,python3-distutils,ca-certificates,libgomp1}
ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}

die() { echo "make-base-image: $*" >&2; exit 1; }

if [ -z "${FORCE:-}" ] && "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "make-base-image: $IMAGE exists (FORCE=1 to rebuild)"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install -y debootstrap"

# the mirror apt on this host uses (deb822 .sources or a classic sources.list), else Debian's CDN
if [ -z "${MIRROR:-}" ]; then
  MIRROR=$( (grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
             grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}') \
           | grep -vE 'security|updates' | grep -E '/debian/?$' | head -n1 || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

ROOT=$(mktemp -d "${TMPDIR:-/var/tmp}/nowcast-rootfs.XXXXXX")
LOG=$ROOT.log
trap 'rm -rf "$ROOT"' EXIT
echo "make-base-image: debootstrap $SUITE from $MIRROR into $ROOT (+ $PACKAGES)"
start=$SECONDS
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$LOG" 2>&1 \
  || { cp "$ROOT/debootstrap/debootstrap.log" "$LOG.dpkg" 2>/dev/null; tail -n 30 "$LOG" >&2; die "debootstrap failed (logs: $LOG, $LOG.dpkg)"; }
rm -f "$LOG"

# security updates too, when the mirror's host serves them; then leave no apt lists or caches behind
SECURITY=${MIRROR%/debian}/debian-security
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq' >"$LOG" 2>&1 \
  || echo "make-base-image: warning: no updates applied (mirror unreachable? log: $LOG)" >&2
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/* "$ROOT"/tmp/* \
       "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/*
# documentation out, the packages' copyright files (their licences) kept
find "$ROOT/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete
: >"$ROOT/etc/resolv.conf"
chroot "$ROOT" python3.11 -c 'import venv, ensurepip, ssl, sqlite3, lzma, bz2, ctypes' \
  || die "the rootfs's python3.11 misses standard modules"
ln -sf python3.11 "$ROOT/usr/bin/python3"

tar --numeric-owner -C "$ROOT" -c . | "$ENGINE" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$IMAGE" >"$LOG" 2>&1 || { cat "$LOG" >&2; die "$ENGINE import failed"; }
rm -f "$LOG"
echo "make-base-image: $IMAGE made in $((SECONDS - start)) s ($("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE") bytes)"
