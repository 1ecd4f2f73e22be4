"""The demo's case: the sample download (against a loopback file server) and the three sources of rain."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nowcast.demo import SMOKE_TEST_LABEL, run_demo
from nowcast.errors import InputError
from nowcast.io.catalogue import load_event
from nowcast.io.samples import (
    DEFAULT_EVENT,
    OFFLINE_ENV,
    SAMPLE_URL_ENV,
    SampleIntegrityError,
    SampleUnavailableError,
    fetch_sample,
    load_manifest,
    sample_event,
)

FAKE_EVENT = "fake-20200101"


class _CountingHandler(SimpleHTTPRequestHandler):
    """Counts requests; for the paths in ``server.cut_short``, announces the whole file but sends half."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path in self.server.cut_short:
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            return
        super().do_GET()

    def log_message(self, format, *args):  # keep the test output clean
        pass


@pytest.fixture()
def serve(monkeypatch):
    """Serves a folder on 127.0.0.1: the server, with its base URL (``url``) and the paths requested (``requests``)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    servers = []

    def start(folder: Path) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_CountingHandler, directory=str(folder)))
        server.requests, server.cut_short = [], set()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        server.url = f"http://127.0.0.1:{server.server_address[1]}/"
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def fake_sample(tmp_path):
    """A served tree of three small files and its manifest: (served folder, manifest path, {path: bytes})."""
    served = tmp_path / "served"
    contents = {f"radar/fake/2020/frame{i}.bin": bytes(range(i, 256)) * (10 + i) for i in range(3)}
    for path, data in contents.items():
        (served / path).parent.mkdir(parents=True, exist_ok=True)
        (served / path).write_bytes(data)
    manifest = {
        "event_id": FAKE_EVENT, "base_url": "https://example.invalid/pysteps-data/", "credit": "nobody",
        "source": "made up by the test", "licence": "none needed",
        "files": [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in contents.items()],
    }
    manifest_file = tmp_path / "fake.json"
    manifest_file.write_text(json.dumps(manifest))
    return served, manifest_file, contents


def _free_port() -> int:
    """A loopback port nobody listens on (once the probe is closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# --- the download, on a fake sample ------------------------------------------------------------------


def test_fetch_downloads_checks_and_reuses(serve, fake_sample, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nowcast.io.samples")
    served, manifest, contents = fake_sample
    server = serve(served)
    url, requests = server.url, server.requests
    cache = tmp_path / "cache"
    root = fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=url)
    assert root == cache
    assert _files_under(cache) == sorted(contents)
    for path, data in contents.items():
        assert hashlib.sha256((cache / path).read_bytes()).digest() == hashlib.sha256(data).digest()
    assert len(requests) == 3
    assert "made up by the test" in caplog.text and "Terms: none needed" in caplog.text
    assert fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=url) == cache
    assert len(requests) == 3, "a complete cache must not touch the network"


def test_fetch_takes_the_url_from_the_environment(serve, fake_sample, tmp_path, monkeypatch):
    served, manifest, contents = fake_sample
    server = serve(served)
    url, requests = server.url, server.requests
    monkeypatch.setenv(SAMPLE_URL_ENV, url)
    fetch_sample(FAKE_EVENT, manifest=manifest, cache=tmp_path / "cache")
    assert sorted(r.lstrip("/") for r in requests) == sorted(contents)


def test_fetch_refuses_wrong_bytes_and_keeps_nothing(serve, fake_sample, tmp_path):
    served, manifest, contents = fake_sample
    bad = sorted(contents)[1]
    data = bytearray(contents[bad])
    data[7] ^= 0xFF  # same size, other content
    (served / bad).write_bytes(bytes(data))
    url = serve(served).url
    cache = tmp_path / "cache"
    with pytest.raises(SampleIntegrityError, match=bad):
        fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=url)
    assert bad not in _files_under(cache)
    assert not [p for p in _files_under(cache) if p.endswith(".part")]


@pytest.mark.parametrize("served_size", ["truncated", "longer"])
def test_fetch_refuses_a_file_of_another_size(serve, fake_sample, tmp_path, served_size):
    served, manifest, contents = fake_sample
    bad = sorted(contents)[0]
    data = contents[bad][:-5] if served_size == "truncated" else contents[bad] + b"extra"
    (served / bad).write_bytes(data)
    url = serve(served).url
    cache = tmp_path / "cache"
    with pytest.raises(SampleIntegrityError, match=bad):
        fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=url)
    assert _files_under(cache) == []


def test_fetch_refuses_a_download_cut_short(serve, fake_sample, tmp_path):
    served, manifest, contents = fake_sample
    bad = sorted(contents)[0]
    server = serve(served)
    server.cut_short.add("/" + bad)
    cache = tmp_path / "cache"
    with pytest.raises(SampleUnavailableError, match=bad):
        fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=server.url)
    assert _files_under(cache) == []


def test_fetch_replaces_a_damaged_cached_file(serve, fake_sample, tmp_path):
    served, manifest, contents = fake_sample
    server = serve(served)
    url, requests = server.url, server.requests
    cache = tmp_path / "cache"
    fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=url)
    damaged = sorted(contents)[2]
    (cache / damaged).write_bytes(b"x" * len(contents[damaged]))
    fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=url)
    assert requests[-1].lstrip("/") == damaged and len(requests) == 4
    assert (cache / damaged).read_bytes() == contents[damaged]


def test_fetch_from_a_server_that_is_down_fails_fast(fake_sample, tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    started = time.monotonic()
    with pytest.raises(SampleUnavailableError, match="cannot download"):
        fetch_sample(FAKE_EVENT, manifest=fake_sample[1], cache=tmp_path / "cache",
                     base_url=f"http://127.0.0.1:{_free_port()}/", timeout_s=5)
    assert time.monotonic() - started < 5
    assert _files_under(tmp_path / "cache") == []


def test_fetch_offline_uses_only_the_cache(serve, fake_sample, tmp_path, monkeypatch):
    served, manifest, _ = fake_sample
    server = serve(served)
    url, requests = server.url, server.requests
    cache = tmp_path / "cache"
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(SampleUnavailableError, match=OFFLINE_ENV):
        fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=url)
    assert requests == []
    fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=url, offline=False)
    assert fetch_sample(FAKE_EVENT, manifest=manifest, cache=cache, base_url=url) == cache
    assert len(requests) == 3


@pytest.mark.parametrize(("field", "value", "message"), [
    ("path", "../outside.bin", "not a relative path"),
    ("path", "/etc/passwd", "not a relative path"),
    ("size", 10**12, "not a byte count"),
    ("sha256", "abc", "not 64"),
])
def test_hostile_manifest_entries_are_refused(fake_sample, tmp_path, field, value, message):
    _, manifest_file, _ = fake_sample
    manifest = json.loads(manifest_file.read_text())
    manifest["files"][0][field] = value
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=message):
        fetch_sample(FAKE_EVENT, manifest=manifest_file, cache=tmp_path / "cache", offline=True)


def test_shipped_manifest_lists_the_held_out_event():
    manifest = load_manifest()
    event = sample_event()
    assert manifest.event_id == DEFAULT_EVENT == event.id
    assert len(manifest.files) == event.n_frames == 40
    assert manifest.base_url == "https://raw.githubusercontent.com/pySTEPS/pysteps-data/master/"
    assert "MeteoSwiss" in manifest.licence and "pysteps-data" in manifest.licence
    assert all(f.path.startswith("radar/mch/20160711/") for f in manifest.files)


# --- the demo ------------------------------------------------------------------------------------------


@pytest.fixture()
def no_archive(tmp_path, monkeypatch):
    """No local radar archive, an empty cache."""
    monkeypatch.setenv("NOWCAST_DATA_ROOT", str(tmp_path / "no-archive"))
    monkeypatch.setenv("NOWCAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NOWCAST_EVENT_CATALOGUE", raising=False)


def test_demo_offline_is_a_labelled_smoke_test(no_archive, tmp_path, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    result = run_demo(tmp_path / "out", model="persistence", steps=3)
    assert result["smoke_test"] is True
    assert result["case"] == SMOKE_TEST_LABEL and "smoke test" in result["case"]
    assert set(result) == {"case", "smoke_test", "grid", "methods", "files"}
    assert all(Path(f).is_file() for f in result["files"])


def test_demo_without_download_is_a_smoke_test(no_archive, tmp_path, monkeypatch):
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    monkeypatch.setenv(SAMPLE_URL_ENV, "http://127.0.0.1:9/")  # never asked
    result = run_demo(tmp_path / "out", model="persistence", steps=3, download=False)
    assert result["smoke_test"] is True


def test_demo_falls_back_to_a_smoke_test_when_the_server_is_down(no_archive, tmp_path, monkeypatch):
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv(SAMPLE_URL_ENV, f"http://127.0.0.1:{_free_port()}/")
    result = run_demo(tmp_path / "out", model="persistence", steps=3)
    assert result["smoke_test"] is True and result["case"] == SMOKE_TEST_LABEL


# --- with the real files ------------------------------------------------------------------------------


@pytest.fixture()
def served_sample(real_data_root, tmp_path, serve):
    """The held-out event's files copied from the real archive into a served pysteps-data tree."""
    served = tmp_path / "served"
    for item in load_manifest().files:
        (served / item.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real_data_root / item.path, served / item.path)
    server = serve(served)
    return server.url, server.requests


@pytest.mark.realdata
def test_fetch_real_sample_loads_like_the_archive(served_sample, real_data_root, tmp_path):
    url, requests = served_sample
    root = fetch_sample(cache=tmp_path / "cache", base_url=url)
    assert len(requests) == 40
    sample = load_event(sample_event(), root=root, cache=False)
    archive = load_event(sample_event(), root=real_data_root, cache=False)
    assert sample.shape == (40, 640, 710)
    assert sample.equals(archive)


@pytest.mark.realdata
def test_demo_downloads_the_held_out_event(served_sample, no_archive, tmp_path, monkeypatch):
    url, requests = served_sample
    monkeypatch.setenv(SAMPLE_URL_ENV, url)
    result = run_demo(tmp_path / "out", model="default-gan", steps=3)
    assert result["smoke_test"] is False
    assert result["case"].startswith(f"real event {DEFAULT_EVENT} (held out; downloaded sample, MeteoSwiss")
    assert result["grid"] == [640, 710]
    assert all(Path(f).is_file() for f in result["files"])
    assert len(requests) == 40


@pytest.mark.realdata
def test_demo_prefers_the_local_archive(real_data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NOWCAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(SAMPLE_URL_ENV, f"http://127.0.0.1:{_free_port()}/")  # never asked
    monkeypatch.delenv("NOWCAST_EVENT_CATALOGUE", raising=False)
    result = run_demo(tmp_path / "out", model="persistence", steps=3)
    assert result["case"] == f"real event {DEFAULT_EVENT} (held out; local archive)"
    assert result["smoke_test"] is False
    assert not (tmp_path / "cache" / "samples").exists()
