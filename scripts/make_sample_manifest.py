"""Write the manifest of a downloadable sample event from a local pysteps-data copy.

The manifest (``nowcast/samples/EVENT.json``) lists every file of the event's time range
with its path inside the pysteps-data tree, size and sha256, so that
:func:`nowcast.io.samples.fetch_sample` can download the files and check them before use.

    .venv/bin/python scripts/make_sample_manifest.py                      # mch-20160711 from the data root
    .venv/bin/python scripts/make_sample_manifest.py --root ../shared/data/pysteps-data --event mch-20160711
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

from nowcast.io.catalogue import find_event_files
from nowcast.io.samples import DEFAULT_EVENT, manifest_path, sample_event
from nowcast.paths import data_root

# pysteps-data's files as GitHub serves them raw: BASE_URL + path inside the repository.
BASE_URL = "https://raw.githubusercontent.com/pySTEPS/pysteps-data/master/"
README_URL = "https://github.com/pySTEPS/pysteps-data/blob/master/README.md"
# Who made the data, per radar network of pysteps-data.
NETWORKS = {
    "mch": {"owner": "MeteoSwiss", "full_name": "MeteoSwiss (Federal Office of Meteorology and Climatology)",
            "product": "Swiss radar composite, AQC product (5-min precipitation accumulation, 1 km)"},
}


def describe_source(network: str) -> dict[str, str]:
    if network not in NETWORKS:
        raise SystemExit(f"no source text for radar network {network!r}; add it to NETWORKS in {__file__}")
    owner, full_name, product = (NETWORKS[network][key] for key in ("owner", "full_name", "product"))
    return {
        "credit": f"{owner} via pysteps-data",
        "source": f"{full_name}, {product}, from the pysteps example data (https://github.com/pySTEPS/pysteps-data)",
        "licence": f"{owner} data, redistributed by the pysteps project in pysteps-data for research and examples; "
                   f"the data remain {owner}'s. Read the terms in pysteps-data's README ({README_URL}) "
                   "before using them for anything else.",
    }


def describe_file(path: Path, root: Path) -> dict[str, object]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": digest}


def build_manifest(event_id: str, root: Path) -> dict[str, object]:
    files = find_event_files(sample_event(event_id), root)
    return {
        "event_id": event_id,
        "base_url": BASE_URL,
        **describe_source(event_id.split("-", 1)[0]),
        "files": [describe_file(path, root) for _, path in files],
    }


def write_atomically(data: dict[str, object], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, suffix=".part", delete=False) as tmp:
        json.dump(data, tmp, indent=1)
        tmp.write("\n")
    os.replace(tmp.name, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--event", default=DEFAULT_EVENT, help="event id of nowcast/events.toml")
    parser.add_argument("--root", type=Path, default=None, help="pysteps-data tree (default: the data root)")
    parser.add_argument("--out", type=Path, default=None, help="manifest file (default: nowcast/samples/EVENT.json)")
    args = parser.parse_args()
    root = data_root(args.root).resolve()
    manifest = build_manifest(args.event, root)
    out = args.out or manifest_path(args.event)
    write_atomically(manifest, out)
    print(f"{out}: {len(manifest['files'])} files of {args.event} from {root}")


if __name__ == "__main__":
    main()
