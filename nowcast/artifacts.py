"""The versioned model registry under ``models/``.

An artifact describes itself; one folder ``models/NAME/VERSION/`` holds:

* ``config.json``: everything that rebuilds the model (architecture, normalisation,
  input/output frames, time step) plus how it was trained;
* ``weights.pt``: the generator's ``state_dict`` (plain tensors, loaded with
  ``weights_only=True``);
* ``card.json`` and ``README.md``: the model card (training data, steps, validation
  scores against the baselines), for machines and for people;
* ``SHA256SUMS``: checksums of the files above, checked on every load.

Versions are ``v1``, ``v2``, ... ; without a version, the *live* one is used: the
version ``models/NAME/LIVE`` names (set by :func:`promote`, moved back by
:func:`rollback`), else the highest one. An artifact is written into a temporary folder
and renamed into place, so a registry never holds a half-written version; versions are
never changed afterwards, only the live pointer moves.

``LIVE`` is one JSON file, replaced atomically: the live version, when, by whom, why
(and the gate report of the retrain that proposed it), and the append-only history of
every promotion and rollback, from which :func:`rollback` knows the version that was
live before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nowcast.errors import InputError, UnknownNameError, UnreadableFileError
from nowcast.files import write_text_atomically
from nowcast.paths import models_dir as default_models_dir

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
CARD_FILE = "card.json"
CARD_MARKDOWN = "README.md"
CHECKSUMS_FILE = "SHA256SUMS"
LIVE_FILE = "LIVE"
_LIVE_LOCK = ".LIVE.lock"
PROMOTE = "promote"
ROLLBACK = "rollback"
# a LIVE file is small; anything larger was not written by this module
_MAX_LIVE_BYTES = 4 << 20
_VERSION_RE = re.compile(r"^v(\d+)$")
#: A model name is one folder of the registry, never a path out of it.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def list_models(models_dir: str | Path | None = None) -> list[str]:
    """Names of the models that have at least one complete version."""
    root = default_models_dir(models_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_versions(p.name, root))


def list_versions(name: str, models_dir: str | Path | None = None) -> list[str]:
    """Versions of ``name``, oldest first (none for a name that is not a plain folder name)."""
    if not NAME_RE.match(name):
        return []
    folder = default_models_dir(models_dir) / name
    if not folder.is_dir():
        return []
    versions = [p.name for p in folder.iterdir()
                if p.is_dir() and _VERSION_RE.match(p.name) and (p / CHECKSUMS_FILE).is_file()]
    return sorted(versions, key=lambda v: int(v[1:]))


def default_version(name: str, models_dir: str | Path | None = None) -> str:
    """The version ``name`` means without one: the live version where one is recorded, else the highest."""
    root = default_models_dir(models_dir)
    versions = _known_versions(name, root)
    live = live_version(name, root)
    if live is None:
        return versions[-1]
    if live not in versions:
        raise UnreadableFileError(f"{root / name / LIVE_FILE}: the live version {live} is not in the registry "
                                  f"(versions: {', '.join(versions)}); promote one of them")
    return live


def resolve(name: str, version: str | None = None, models_dir: str | Path | None = None) -> Path:
    """The folder of ``name`` at ``version`` (the live one, else the latest, when None)."""
    root = default_models_dir(models_dir)
    if version is None:
        return root / name / default_version(name, root)
    versions = _known_versions(name, root)
    if version not in versions:
        raise UnknownNameError(f"model {name!r} has no version {version!r}; versions: {', '.join(versions)}")
    return root / name / version


def _known_versions(name: str, root: Path) -> list[str]:
    """``name``'s versions in the registry at ``root``; an error naming the models there if it has none."""
    versions = list_versions(name, root)
    if not versions:
        raise UnknownNameError(f"no model {name!r} in {root}; models there: {', '.join(list_models(root)) or 'none'}")
    return versions


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


# --- the live pointer ---------------------------------------------------------------------------


def live_record(name: str, models_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The content of ``models/NAME/LIVE`` (checked), or None where no version was ever promoted."""
    if not NAME_RE.match(name):
        return None
    path = default_models_dir(models_dir) / name / LIVE_FILE
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_LIVE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc})") from exc
    if len(raw) > _MAX_LIVE_BYTES:
        raise UnreadableFileError(f"{path}: larger than {_MAX_LIVE_BYTES} bytes; not a live pointer")
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"{path}: not JSON ({exc})") from exc
    _check_live_record(record, path)
    return record


def live_version(name: str, models_dir: str | Path | None = None) -> str | None:
    """The version ``LIVE`` names, or None."""
    record = live_record(name, models_dir)
    return None if record is None else str(record["version"])


def promote(name: str, version: str, *, by: str, reason: str, gate_report: dict[str, Any] | None = None,
            models_dir: str | Path | None = None) -> dict[str, Any]:
    """Make ``version`` (complete, its checksums checked) the live version of ``name``; returns the record."""
    root = default_models_dir(models_dir)
    verify(resolve(name, version, root))
    with _live_lock(root / name):
        record = live_record(name, root)
        history = list(record["history"]) if record else []
        return _write_live(root / name, name, version, PROMOTE, by=by, reason=reason, gate_report=gate_report,
                           history=history)


def rollback(name: str, *, by: str, reason: str, models_dir: str | Path | None = None) -> dict[str, Any]:
    """Make the version that was live before the current one live again; returns the new record.

    Successive rollbacks walk back through the promotions (v3 -> v2 -> v1), as a stack.
    """
    root = default_models_dir(models_dir)
    with _live_lock(root / name):
        record = live_record(name, root)
        if record is None:
            raise InputError(f"model {name!r} has no live version recorded; nothing to roll back")
        stack = live_stack(record["history"])
        if len(stack) < 2:
            raise InputError(f"{name}@{record['version']} is the first version promoted; there is no earlier "
                             "live version to roll back to")
        previous = stack[-2]
        verify(resolve(name, previous, root))
        gate_report = next((e.get("gate_report") for e in reversed(record["history"])
                            if e["version"] == previous and e["action"] == PROMOTE), None)
        return _write_live(root / name, name, previous, ROLLBACK, by=by, reason=reason, gate_report=gate_report,
                           history=list(record["history"]))


def live_stack(history: list[dict[str, Any]]) -> list[str]:
    """The versions promoted and not rolled back, oldest first: the last is live, the one before it is
    where a rollback goes."""
    stack: list[str] = []
    for entry in history:
        if entry["action"] == PROMOTE:
            stack.append(entry["version"])
        elif stack:
            stack.pop()
    return stack


def _write_live(folder: Path, name: str, version: str, action: str, *, by: str, reason: str,
                gate_report: dict[str, Any] | None, history: list[dict[str, Any]]) -> dict[str, Any]:
    entry = {"version": version, "action": action, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
             "by": by, "reason": reason, "gate_report": gate_report}
    record = {"name": name, "version": version, "promoted_at": entry["at"], "by": by, "reason": reason,
              "action": action, "gate_report": gate_report, "history": [*history, entry]}
    _check_live_record(record, folder / LIVE_FILE)
    write_text_atomically(folder / LIVE_FILE, json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
    logger.info("%s: %s@%s is live (%s by %s: %s)", action, name, version, action, by, reason)
    return record


@contextlib.contextmanager
def _live_lock(folder: Path) -> Iterator[None]:
    """One promotion or rollback of a name at a time (two people, or a retrain and a person)."""
    if not folder.is_dir():
        raise UnknownNameError(f"no model {folder.name!r} in {folder.parent}")
    with (folder / _LIVE_LOCK).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_live_record(record: Any, path: Path) -> None:
    def bad(what: str) -> UnreadableFileError:
        return UnreadableFileError(f"{path}: {what}; not a live pointer written by nowcast promote")

    if not isinstance(record, dict):
        raise bad("not a JSON object")
    if not isinstance(record.get("version"), str) or not _VERSION_RE.match(record["version"]):
        raise bad(f"version {record.get('version')!r} is not v1, v2, ...")
    history = record.get("history")
    if not isinstance(history, list) or not history:
        raise bad("no history")
    for entry in history:
        if not isinstance(entry, dict) or entry.get("action") not in (PROMOTE, ROLLBACK) \
                or not isinstance(entry.get("version"), str) or not _VERSION_RE.match(entry["version"]):
            raise bad(f"history entry {str(entry)[:80]!r} is not a promotion or rollback of a version")
    stack = live_stack(history)
    if not stack or stack[-1] != record["version"]:
        raise bad(f"its history leaves {stack[-1] if stack else 'no version'} live, not {record['version']}")
