"""Real sample events fetched on first use, for machines without the radar archive.

A fresh machine has no radar archive, and a demo on synthetic rain says nothing about
skill. So, the way :func:`pysteps.datasets.download_pysteps_data` fetches the pysteps
example data, :func:`fetch_sample` downloads the files of one real event from the
public pysteps-data repository, but only that event's files, each checked against a
manifest shipped with the product (``nowcast/samples/EVENT.json``: path, size, sha256)
before it is used. The files are cached in a pysteps-data style tree, by default
``cache_dir() / "samples" / "pysteps-data"`` (``NOWCAST_CACHE_DIR``), whose root is
passed to :func:`nowcast.io.catalogue.load_event` as ``root=``.

``NOWCAST_SAMPLE_URL`` replaces the manifest's base URL (a mirror, or a test server);
``NOWCAST_OFFLINE=1`` forbids the network (files already cached are still used).
Network failures and files that do not match the manifest raise
:class:`SampleUnavailableError`, so that callers can fall back.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

from nowcast.errors import InputError
from nowcast.files import replaced_atomically
from nowcast.io.catalogue import Event, cache_dir, get_event, parse_catalogue

logger = logging.getLogger(__name__)

DEFAULT_EVENT = "mch-20160711"
SAMPLE_URL_ENV = "NOWCAST_SAMPLE_URL"
OFFLINE_ENV = "NOWCAST_OFFLINE"
#: Bounds what a manifest may ask us to download: radar frames are kilobytes to a few MB.
MAX_FILE_BYTES = 64 * 2**20
_CHUNK_BYTES = 64 * 1024
_EVENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_PATH_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST_KEYS = ("event_id", "base_url", "credit", "source", "licence", "files")


class SampleUnavailableError(InputError):
    """A sample event that cannot be had now: offline, no network, or the server sent other files."""


class SampleIntegrityError(SampleUnavailableError):
    """A downloaded file whose size or sha256 is not the manifest's; it is not kept."""


@dataclass(frozen=True)
class SampleFile:
    """One file of a sample: its path inside the pysteps-data tree, size in bytes and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SampleManifest:
    """What a sample event is made of, where it is served from and on what terms."""

    event_id: str
    base_url: str
    credit: str
    source: str
    licence: str
    files: tuple[SampleFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.files)


# --- manifests ----------------------------------------------------------------------------------


def available_samples() -> list[str]:
    """Ids of the events that ship with a sample manifest."""
    folder = resources.files("nowcast").joinpath("samples")
    return sorted(entry.name.removesuffix(".json") for entry in folder.iterdir() if entry.name.endswith(".json"))


def manifest_path(event_id: str = DEFAULT_EVENT) -> Path:
    """Where the shipped manifest of ``event_id`` lives (the file may not exist yet)."""
    if not _EVENT_ID_RE.match(event_id):
        raise InputError(f"not a sample event id: {event_id!r}")
    return Path(str(resources.files("nowcast").joinpath("samples", f"{event_id}.json")))


def load_manifest(event_id: str = DEFAULT_EVENT, path: str | os.PathLike[str] | None = None) -> SampleManifest:
    """The manifest at ``path``, else the one shipped for ``event_id``."""
    source = Path(path) if path is not None else manifest_path(event_id)
    if path is None and not source.is_file():
        raise InputError(f"no sample of event {event_id!r}; samples: {', '.join(available_samples()) or 'none'}")
    try:
        if source.stat().st_size > 1_000_000:  # a manifest lists a few dozen files
            raise InputError(f"{source}: too large for a sample manifest")
        data = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{source}: cannot read the sample manifest ({exc})") from exc
    return parse_manifest(data, where=str(source))


def parse_manifest(data: Any, *, where: str = "sample manifest") -> SampleManifest:
    """A manifest from its JSON content, every field checked (paths stay inside the tree)."""
    if not isinstance(data, Mapping) or sorted(data) != sorted(_MANIFEST_KEYS):
        raise InputError(f"{where}: expected a JSON object with exactly the keys {list(_MANIFEST_KEYS)}")
    if not isinstance(data["event_id"], str) or not _EVENT_ID_RE.match(data["event_id"]):
        raise InputError(f"{where}: event_id {data['event_id']!r} is not an event id")
    for key in ("base_url", "credit", "source", "licence"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise InputError(f"{where}: {key} must be a non-empty string")
    if not isinstance(data["files"], list) or not data["files"]:
        raise InputError(f"{where}: files must be a non-empty list")
    files = tuple(_parse_file(entry, f"{where}: files[{i}]") for i, entry in enumerate(data["files"]))
    if len({item.path for item in files}) != len(files):
        raise InputError(f"{where}: a path is listed twice")
    return SampleManifest(event_id=data["event_id"], base_url=_checked_base_url(data["base_url"], where),
                          credit=data["credit"], source=data["source"], licence=data["licence"], files=files)


def _parse_file(entry: Any, where: str) -> SampleFile:
    if not isinstance(entry, Mapping) or sorted(entry) != ["path", "sha256", "size"]:
        raise InputError(f"{where}: expected an object with path, size and sha256")
    path, size, digest = entry["path"], entry["size"], entry["sha256"]
    if not isinstance(path, str) or not _PATH_RE.match(path) or {".", ".."} & set(path.split("/")):
        raise InputError(f"{where}: path {path!r} is not a relative path inside the tree")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_FILE_BYTES:
        raise InputError(f"{where}: size {size!r} is not a byte count between 1 and {MAX_FILE_BYTES}")
    if not isinstance(digest, str) or not _SHA256_RE.match(digest):
        raise InputError(f"{where}: sha256 {digest!r} is not 64 lower-case hex digits")
    return SampleFile(path=path, size=size, sha256=digest)


def _checked_base_url(url: str, where: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"{where}: base URL {url!r} is not an http(s) URL")
    return url if url.endswith("/") else url + "/"


def sample_event(event_id: str = DEFAULT_EVENT) -> Event:
    """The shipped catalogue's description of a sample event (how its files are laid out).

    The shipped catalogue, not ``NOWCAST_EVENT_CATALOGUE``'s: the manifest lists that layout.
    """
    text = resources.files("nowcast").joinpath("events.toml").read_text()
    return get_event(event_id, parse_catalogue(tomllib.loads(text), where="nowcast/events.toml"))


# --- fetching -----------------------------------------------------------------------------------


def default_sample_cache() -> Path:
    """The pysteps-data style tree that downloaded samples are kept in."""
    return cache_dir() / "samples" / "pysteps-data"


def fetch_sample(
    event_id: str = DEFAULT_EVENT,
    *,
    cache: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    timeout_s: float = 30.0,
    manifest: SampleManifest | str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> Path:
    """Download the sample event's missing files; the root to pass to ``load_event(..., root=root)``.

    Files already in ``cache`` with the manifest's size and sha256 are used without the
    network. The others are fetched from ``base_url`` (else ``NOWCAST_SAMPLE_URL``, else
    the manifest's), at most their listed size each, within ``timeout_s`` per file, and
    kept only once they match. ``offline`` (default: ``NOWCAST_OFFLINE``) forbids the
    network. ``manifest`` replaces the shipped one (a manifest or its path).
    """
    listing = _manifest_for(event_id, manifest)
    root = Path(cache) if cache is not None else default_sample_cache()
    missing = [item for item in listing.files if not _is_intact(root / item.path, item)]
    if not missing:
        logger.debug("sample %s: all %d files in %s", event_id, len(listing.files), root)
        return root
    if _is_offline(offline):
        raise SampleUnavailableError(
            f"sample event {event_id}: {len(missing)} of {len(listing.files)} files are not in {root}, "
            f"and the network is off (offline=True or {OFFLINE_ENV}=1)"
        )
    url = _checked_base_url(base_url or os.environ.get(SAMPLE_URL_ENV) or listing.base_url,
                            f"base_url or {SAMPLE_URL_ENV}")
    logger.info("downloading sample event %s: %d files, %.1f MB, from %s into %s", event_id, len(missing),
                sum(item.size for item in missing) / 1e6, url, root)
    logger.info("sample data: %s. Terms: %s", listing.source, listing.licence)
    for item in missing:
        _download(item, url, root, timeout_s)
    return root


def _manifest_for(event_id: str, manifest: SampleManifest | str | os.PathLike[str] | None) -> SampleManifest:
    if not isinstance(manifest, SampleManifest):
        manifest = load_manifest(event_id, manifest)
    if manifest.event_id != event_id:
        raise InputError(f"the sample manifest is for event {manifest.event_id!r}, not {event_id!r}")
    return manifest


def _is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _is_intact(path: Path, item: SampleFile) -> bool:
    """Whether ``path`` holds the manifest's file (size first, so a huge stray file is not hashed)."""
    if not path.is_file() or path.stat().st_size != item.size:
        return False
    if _sha256_of(path) == item.sha256:
        return True
    logger.warning("sample file %s differs from its manifest entry; fetching it again", path)
    return False


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(item: SampleFile, base_url: str, root: Path, timeout_s: float) -> None:
    """Fetch one file into a temporary name beside its place; rename it there only once it matches."""
    target = root / item.path
    with contextlib.ExitStack() as stack:
        try:
            part = stack.enter_context(replaced_atomically(target, suffix=".part"))
        except OSError as exc:
            raise SampleUnavailableError(f"cannot write the sample cache at {target.parent} ({exc})") from exc
        with part.open("wb") as out:
            size, digest = _copy_bounded(base_url + urllib.parse.quote(item.path), item, out, timeout_s)
        _check(item, size, digest)
    logger.debug("fetched %s (%d bytes)", item.path, item.size)


def _copy_bounded(url: str, item: SampleFile, out: IO[bytes], timeout_s: float) -> tuple[int, str]:
    """Copy at most ``item.size`` bytes of ``url`` into ``out``; their count and sha256."""
    deadline = time.monotonic() + timeout_s
    digest, copied = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            _check_declared_length(response, item)
            while copied < item.size:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete after {timeout_s:g} s")
                chunk = response.read(min(_CHUNK_BYTES, item.size - copied))
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                copied += len(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # incl. HTTP errors, timeouts
        raise SampleUnavailableError(f"cannot download sample file {item.path} from {url} ({exc})") from exc
    return copied, digest.hexdigest()


def _check_declared_length(response: Any, item: SampleFile) -> None:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip() != str(item.size):
        raise SampleIntegrityError(
            f"sample file {item.path}: the server announces {declared.strip()} bytes, "
            f"the manifest lists {item.size}; not downloaded"
        )


def _check(item: SampleFile, size: int, digest: str) -> None:
    if size != item.size:
        raise SampleIntegrityError(f"sample file {item.path}: got {size} of its {item.size} bytes (truncated)")
    if digest != item.sha256:
        raise SampleIntegrityError(
            f"sample file {item.path}: sha256 {digest} is not the manifest's {item.sha256}; not kept"
        )
