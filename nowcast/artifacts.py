"""The versioned model registry under ``models/``.

An artifact describes itself; one folder ``models/NAME/VERSION/`` holds:

* ``config.json``: everything that rebuilds the model (architecture, normalisation,
  input/output frames, time step) plus how it was trained;
* ``weights.pt``: the generator's ``state_dict`` (plain tensors, loaded with
  ``weights_only=True``);
* ``card.json`` and ``README.md``: the model card (training data, steps, validation
  scores against the baselines), for machines and for people;
* ``SHA256SUMS``: checksums of the files above, checked on every load.

Versions are ``v1``, ``v2``, ... ; without a version the highest one is used. An
artifact is written into a temporary folder and renamed into place, so a registry
never holds a half-written version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nowcast.errors import InputError, UnknownNameError, UnreadableFileError
from nowcast.paths import models_dir as default_models_dir

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
CARD_FILE = "card.json"
CARD_MARKDOWN = "README.md"
CHECKSUMS_FILE = "SHA256SUMS"
_VERSION_RE = re.compile(r"^v(\d+)$")
#: A model name is one folder of the registry, never a path out of it.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def list_models(models_dir: str | Path | None = None) -> list[str]:
    """Names of the models that have at least one complete version."""
    root = default_models_dir(models_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_versions(p.name, root))


def list_versions(name: str, models_dir: str | Path | None = None) -> list[str]:
    """Versions of ``name``, oldest first (none for a name that is not a plain folder name)."""
    if not _NAME_RE.match(name):
        return []
    folder = default_models_dir(models_dir) / name
    if not folder.is_dir():
        return []
    versions = [p.name for p in folder.iterdir()
                if p.is_dir() and _VERSION_RE.match(p.name) and (p / CHECKSUMS_FILE).is_file()]
    return sorted(versions, key=lambda v: int(v[1:]))


def resolve(name: str, version: str | None = None, models_dir: str | Path | None = None) -> Path:
    """The folder of ``name`` at ``version`` (the latest one when None)."""
    root = default_models_dir(models_dir)
    versions = list_versions(name, root)
    if not versions:
        raise UnknownNameError(
            f"no model {name!r} in {root}; models there: {', '.join(list_models(root)) or 'none'}"
        )
    if version is None:
        version = versions[-1]
    if version not in versions:
        raise UnknownNameError(f"model {name!r} has no version {version!r}; versions: {', '.join(versions)}")
    return root / name / version


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc})") from exc


def card(name: str, version: str | None = None, models_dir: str | Path | None = None) -> dict[str, Any]:
    """The model card of an artifact."""
    return read_json(resolve(name, version, models_dir) / CARD_FILE)


def verify(folder: Path) -> None:
    """Check every file listed in ``SHA256SUMS``; raise on a mismatch or a missing file."""
    sums = (folder / CHECKSUMS_FILE).read_text().split("\n")
    for line in filter(None, sums):
        digest, filename = line.split(maxsplit=1)
        path = folder / filename.strip()
        if not path.is_file():
            raise UnreadableFileError(f"{folder}: {filename} is listed in {CHECKSUMS_FILE} but missing")
        if _sha256(path) != digest:
            raise UnreadableFileError(f"{folder}: checksum mismatch for {filename} (corrupt artifact)")


def verified_folder(name: str, version: str | None = None, models_dir: str | Path | None = None) -> Path:
    """The folder of ``name`` at ``version``, its files checked against ``SHA256SUMS``."""
    folder = resolve(name, version, models_dir)
    verify(folder)
    return folder


def next_version(name: str, models_dir: str | Path | None = None) -> str:
    versions = list_versions(name, models_dir)
    return f"v{int(versions[-1][1:]) + 1}" if versions else "v1"


def write_artifact(
    name: str,
    *,
    config: dict[str, Any],
    weights_writer: Any,
    card_data: dict[str, Any],
    card_markdown: str,
    models_dir: str | Path | None = None,
    version: str | None = None,
) -> Path:
    """Write a new version of ``name`` atomically and return its folder.

    ``weights_writer(path)`` writes the weights file (e.g. ``torch.save`` of a
    state_dict); the rest is JSON and markdown written here.
    """
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise InputError(f"model name {name!r}: use letters, digits, '_', '.', '-'")
    root = default_models_dir(models_dir)
    version = version or next_version(name, root)
    if not _VERSION_RE.match(version):
        raise InputError(f"version {version!r} must look like v1, v2, ...")
    target = root / name / version
    if target.exists():
        raise InputError(f"{target} exists already; versions are never overwritten")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
    try:
        card_data = {**card_data, "name": name, "version": version}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        weights_writer(tmp / WEIGHTS_FILE)
        (tmp / CARD_FILE).write_text(json.dumps(card_data, indent=2, sort_keys=True) + "\n")
        (tmp / CARD_MARKDOWN).write_text(card_markdown)
        lines = [f"{_sha256(tmp / f)}  {f}" for f in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, CARD_MARKDOWN)]
        (tmp / CHECKSUMS_FILE).write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s", target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
