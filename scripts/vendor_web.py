"""Fetch the forecasters' page libraries pinned in service/static/vendor/VERSIONS.json, or check them.

Each package is fetched with ``npm pack NAME@VERSION`` (npm checks the registry's integrity hash),
only the files VERSIONS.json names are taken out of the tarball, and each must match its sha256
before it is written (temporary file, then rename). Files already present and matching are left
alone, so a second run reads nothing from the network. Exit status 1 names what is wrong.

    python scripts/vendor_web.py            # fetch what is missing or different
    python scripts/vendor_web.py --check    # only check; fetch nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "service" / "static" / "vendor"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stale_files(package: dict) -> dict[str, dict]:
    """The files of ``package`` that are missing or differ from their pinned hash."""
    return {source: target for source, target in package["files"].items()
            if not (VENDOR / target["to"]).is_file() or sha256(VENDOR / target["to"]) != target["sha256"]}


def fetch(package: dict, files: dict[str, dict]) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"vendor_web: npm is needed to fetch {package['name']}@{package['version']} (not found)")
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"{package['name']}@{package['version']}"
        done = subprocess.run([npm, "pack", "--silent", "--pack-destination", tmp, spec], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"vendor_web: npm pack {spec} failed: {done.stderr.strip()[-500:]}")
        tarball = Path(tmp) / done.stdout.strip().splitlines()[-1]
        with tarfile.open(tarball) as archive:
            for source, target in files.items():
                member = archive.extractfile(f"package/{source}")
                if member is None:
                    raise SystemExit(f"vendor_web: {spec} has no file {source}")
                content = member.read()
                if hashlib.sha256(content).hexdigest() != target["sha256"]:
                    raise SystemExit(f"vendor_web: {spec} {source} does not match its pinned sha256")
                write(VENDOR / target["to"], content)


def write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the files; fetch nothing")
    args = parser.parse_args()
    packages = json.loads((VENDOR / "VERSIONS.json").read_text())["packages"]
    wrong = []
    for package in packages:
        files = stale_files(package)
        if files and not args.check:
            fetch(package, files)
            files = stale_files(package)
        wrong += [f"{package['name']}@{package['version']}: {source}" for source in files]
    if wrong:
        print("vendor_web: missing or different: " + "; ".join(wrong), file=sys.stderr)
        return 1
    print(f"page libraries ready: {', '.join(p['name'] + '@' + p['version'] for p in packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
