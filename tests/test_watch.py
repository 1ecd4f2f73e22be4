"""``nowcast watch``: a live feed that misbehaves (late, twice, broken, missing, half-written files, a grid that
changes), a model that fails or hangs, a watcher killed with SIGKILL and restarted, and a replayed real event.

Frames are small synthetic CF-netCDF files of a source that the test's own catalogue describes. The model
runs in a spawned worker process, so the test doubles below live at module level, where it can import them.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from nowcast.config import ConfigError
from nowcast.ensemble import neighbourhood_probability, neighbourhood_window_pixels
from nowcast.feed import MANIFEST, read_manifest, read_manifest_extras, read_product
from nowcast.forecasters.persistence import Persistence
from nowcast.io.catalogue import load_sources
from nowcast.io.netcdf import write_netcdf
from nowcast.products import ProductRequest, ensemble_products
from nowcast.synthetic import SyntheticRain, synthetic_sequence
from nowcast.watch import FileNames, WatchConfig, Watcher, load_watch_config, replay_event

START = pd.Timestamp("2024-06-01T12:00")
STEP = pd.Timedelta(minutes=5)
CATALOGUE = """
[sources.synth]
fn_pattern = "synth_%Y%m%d%H%M"
fn_ext = "nc"
importer = "netcdf"
timestep = 5
"""


class WindowPersistence(Persistence):
    """The last frame repeated, from a window of three: a quick model with a window to complete."""

    name = "window-persistence"
    n_input_frames = 3

    def warmup(self, ny: int = 128, nx: int = 128) -> None:
        pass


class Failing(WindowPersistence):
    def predict(self, past, steps, **kwargs):
        raise RuntimeError("weights went missing")


class Hanging(WindowPersistence):
    def predict(self, past, steps, **kwargs):
        time.sleep(3600)


class Members(WindowPersistence):
    """An 'ensemble': each member the last frame times its own factor."""

    supports_members = True

    def predict(self, past, steps, *, members=None, seed=None, spacing=None):
        single = super().predict(past, steps)
        factors = np.linspace(0.5, 1.5, members, dtype=np.float32)[None, :, None, None, None]
        return single[:, None] * factors


@pytest.fixture()
def feed(tmp_path):
    """Folders, a catalogue, frames to deliver, and a watcher factory on a clock the test moves on."""

    class Feed:
        input = tmp_path / "in"
        output = tmp_path / "out"
        catalogue = tmp_path / "catalogue.toml"
        rain = synthetic_sequence(SyntheticRain(ny=24, nx=32, frames=16), seed=3)
        def __init__(self) -> None:
            self.shift = [0.0]
            self.watchers: list[Watcher] = []

        def clock(self) -> float:
            return time.time() + self.shift[0]

        def config(self, **overrides) -> WatchConfig:
            fields = {"input_dir": str(self.input), "output_dir": str(self.output), "source": "synth",
                      "catalogue": str(self.catalogue), "model": "persistence", "steps": 3, "settle_s": 0.0,
                      "missing_wait_s": 0.0, "max_missing_frames": 1, "retention_hours": 1.0}
            return WatchConfig(**{**fields, **overrides})

        def watcher(self, factory=WindowPersistence, **overrides) -> Watcher:
            watcher = Watcher(self.config(**overrides), model_factory=functools.partial(factory),
                              clock=self.clock)
            watcher.start()
            self.watchers.append(watcher)
            return watcher

        def deliver(self, k: int, *, folder: str = "", rain=None) -> Path:
            when = START + k * STEP
            path = self.input / folder / f"synth_{when:%Y%m%d%H%M}.nc"
            path.parent.mkdir(parents=True, exist_ok=True)
            frames = self.rain if rain is None else rain
            write_netcdf(frames.isel(time=[k % frames.sizes["time"]]).assign_coords(time=[when]), path)
            return path

    feed = Feed()
    feed.input.mkdir()
    feed.catalogue.write_text(CATALOGUE)
    yield feed
    for watcher in feed.watchers:
        watcher.close()


def products(folder: Path) -> dict[pd.Timestamp, object]:
    return {pd.Timestamp(e.reference_time).tz_convert(None): e for e in read_manifest(folder)}


def metric(watcher: Watcher, name: str, **labels: str) -> float:
    value = watcher.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def at(k: int) -> pd.Timestamp:
    return START + k * STEP


# --- config and file names ------------------------------------------------------------------------


def test_the_config_refuses_unknown_keys_takes_paths_from_its_folder_and_the_service_settings(
        tmp_path, monkeypatch) -> None:
    path = tmp_path / "watch.toml"
    path.write_text('input_dir = "in"\noutput_dir = "/abs/out"\nsource = "fmi"\nsteps = 6\n')
    monkeypatch.setenv("NOWCAST_MODEL", "extrapolation")
    monkeypatch.setenv("NOWCAST_DEVICE", "auto")
    config = load_watch_config(path)
    assert config.input_dir == str(tmp_path / "in") and config.output_dir == "/abs/out"
    assert (config.model, config.device, config.steps) == ("extrapolation", None, 6)
    assert load_watch_config(path, model="persistence").model == "persistence"
    path.write_text('input_dir = "in"\noutput_dir = "out"\nsource = "fmi"\nstep = 6\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['step'\]"):
        load_watch_config(path)
    with pytest.raises(ConfigError, match="members must be at least 2"):
        WatchConfig(input_dir="a", output_dir="b", source="fmi", members=1)
    with pytest.raises(Exception, match="thresholds"):
        WatchConfig(input_dir="a", output_dir="b", source="fmi", thresholds=(4.0, 1.0))


def test_the_accumulation_thresholds_default_to_1_5_10_mm_and_bad_ones_are_refused_by_name(tmp_path) -> None:
    config = WatchConfig(input_dir="a", output_dir="b", source="fmi", members=4)
    assert config.accumulation_thresholds == (1.0, 5.0, 10.0)
    assert config.request.accumulation_thresholds == (1.0, 5.0, 10.0)
    assert "accumulation_probabilities" in config.request.products
    path = tmp_path / "watch.toml"
    base = 'input_dir = "in"\noutput_dir = "out"\nsource = "fmi"\nmodel = "persistence"\nmembers = 4\n'
    path.write_text(base + "accumulation_thresholds = [2, 20.5]\n")
    assert load_watch_config(path).request.accumulation_thresholds == (2.0, 20.5)
    for bad, words in [("[10, 5]", "accumulation_thresholds: values must be strictly increasing; got 10, 5"),
                       ("[2000]", "accumulation_thresholds: 2000 is outside [0, 1000]"),
                       ("[]", "accumulation_thresholds: give at least one value"),
                       ('"1,5"', "accumulation_thresholds: expected a list")]:
        path.write_text(base + f"accumulation_thresholds = {bad}\n")
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            load_watch_config(path)


def test_the_shipped_example_config_loads() -> None:
    config = load_watch_config(Path(__file__).resolve().parent.parent / "deploy" / "watch-fmi.toml",
                               input_dir="feed", output_dir="products")
    assert (config.source, config.input_dir, config.output_dir, config.steps) == ("fmi", "feed", "products", 12)


def test_the_commands_report_a_bad_config_or_event_in_one_line(tmp_path) -> None:
    from typer.testing import CliRunner

    from nowcast.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["watch", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "cannot read the watch config" in result.output
    (tmp_path / "w.toml").write_text('input_dir = "in"\noutput_dir = "out"\nsource = "nope"\nmodel = "persistence"\n')
    result = runner.invoke(app, ["watch", str(tmp_path / "w.toml")])
    assert result.exit_code == 2 and "unknown radar source 'nope'" in result.output
    result = runner.invoke(app, ["replay", "no-such-event", "--to", str(tmp_path / "feed")])
    assert result.exit_code == 2 and "unknown event 'no-such-event'" in result.output


def test_valid_times_come_from_every_catalogue_source_s_file_names() -> None:
    sources = load_sources()
    cases = {
        "fmi": ("201705091205_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "2017-05-09T12:05"),
        "mch": ("AQC161932100V_00005.801.gif", "2016-07-11T21:00"),
        "knmi": ("RAD_NL25_RAP_5min_201008260005.h5", "2010-08-26T00:05"),
        "bom": ("2_20180616_100600.prcp-cscn.nc", "2018-06-16T10:06"),
    }
    for name, (file_name, expected) in cases.items():
        names = FileNames.of(sources[name])
        assert names.valid_time(file_name) == pd.Timestamp(expected), name
        assert names.valid_time("." + file_name) is None and names.valid_time(file_name + ".part") is None
    assert FileNames.of(sources["fmi"]).valid_time("201713091205_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz") \
        is None  # month 13: not a time, not a crash


# --- the loop -------------------------------------------------------------------------------------------


def test_a_misbehaving_feed_never_stops_the_loop_nor_writes_a_partial_product(feed) -> None:
    watcher = feed.watcher(missing_wait_s=60.0, settle_s=30.0)
    for k in range(3):
        feed.deliver(k)
    feed.shift[0] = 31.0  # the files are settled
    decisions = watcher.poll_once()
    # the feed's first frame has no past; the second lacks one frame: extrapolation from two, said so
    assert [d.reason.split(":")[0] for d in decisions] == ["missing_frames", "", ""]
    made = products(feed.output)
    assert sorted(made) == [at(1), at(2)]
    assert made[at(1)].fallback and made[at(1)].missing_frames == 1 and made[at(1)].model == "extrapolation"
    assert "needs 3 consecutive frames" in made[at(1)].fallback_reason
    assert not made[at(2)].fallback and made[at(2)].model == "persistence"
    fields = read_product(feed.output / made[at(2)].file)
    assert fields.attrs["fallback"] == 0 and fields.attrs["missing_frames"] == 0
    assert fields.observed.sizes["time"] == 3 and fields.forecast.sizes["time"] == 3
    np.testing.assert_allclose(fields.forecast.values[0], feed.rain.values[2], rtol=1e-6)

    # a corrupt file: logged, counted, skipped; the next frame waits for the missing one, then gives up
    # (extrapolation needs two consecutive frames: 12:10 and 12:20 are not)
    corrupt = feed.input / f"synth_{at(3):%Y%m%d%H%M}.nc"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"not really" * 50)
    feed.deliver(4)
    feed.shift[0] = 62.0
    assert watcher.poll_once() == []  # 12:20 waits for 12:15
    assert metric(watcher, "nowcast_watch_skipped_files_total", reason="unreadable") == 1
    assert watcher.poll_once() == []  # the broken file is not read again while it is unchanged
    assert metric(watcher, "nowcast_watch_skipped_files_total", reason="unreadable") == 1
    feed.shift[0] = 130.0
    [decision] = watcher.poll_once()
    assert decision.entry is None and "fewer than 2 consecutive frames" in decision.reason
    assert read_manifest_extras(feed.output)["last_reference_time"] == "2024-06-01T12:20:00Z"

    # the late frame, now whole: kept for the next window, not forecast; a second file of a frame: duplicate
    feed.deliver(3)
    feed.deliver(4, folder="2024/06")
    feed.shift[0] = 200.0
    assert watcher.poll_once() == []
    assert metric(watcher, "nowcast_watch_skipped_forecasts_total", reason="late") == 1
    assert metric(watcher, "nowcast_watch_skipped_files_total", reason="duplicate") == 1
    feed.deliver(5)
    feed.shift[0] = 240.0
    [decision] = watcher.poll_once()
    assert not decision.entry.fallback  # 12:15 (late), 12:20, 12:25: a whole window

    # a file still being written is not read until it has settled
    feed.shift[0] = 0.0
    path = feed.deliver(6)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 3])
    assert watcher.poll_once() == [] and watcher.unsettled == 1
    feed.shift[0] = 20.0
    path.write_bytes(whole)  # written on, 20 s later
    os.utime(path, (feed.clock(), feed.clock()))
    feed.shift[0] = 40.0
    assert watcher.poll_once() == [] and watcher.unsettled == 1
    feed.shift[0] = 60.0
    [decision] = watcher.poll_once()
    assert decision.entry is not None and not decision.entry.fallback
    assert metric(watcher, "nowcast_watch_skipped_files_total", reason="unreadable") == 1

    assert sorted(products(feed.output)) == [at(k) for k in (1, 2, 5, 6)]
    assert metric(watcher, "nowcast_watch_forecasts_written_total", kind="model") == 3
    assert metric(watcher, "nowcast_watch_fallbacks_total", reason="missing_frames") == 1
    assert metric(watcher, "nowcast_watch_skipped_forecasts_total", reason="missing_frames") == 2
    assert metric(watcher, "nowcast_watch_frames_ingested_total") == 7
    assert metric(watcher, "nowcast_watch_latency_seconds_count") == 4
    assert sorted(p.name for p in feed.output.iterdir()) == sorted([MANIFEST, *(e.file for e in
                                                                              read_manifest(feed.output))])


def test_a_grid_change_restarts_the_window_and_retention_drops_old_products(feed) -> None:
    watcher = feed.watcher(retention_hours=0.25)
    other = synthetic_sequence(SyntheticRain(ny=20, nx=28, frames=16), seed=4)
    for k in range(4):
        feed.deliver(k)
    watcher.poll_once()
    for k in range(4, 7):
        feed.deliver(k, rain=other)
    decisions = watcher.poll_once()
    assert decisions[0].reason.startswith("grid_change: 2 of 3 input frames missing")
    assert decisions[1].entry.fallback and decisions[1].entry.missing_frames == 1
    assert not decisions[2].entry.fallback
    assert read_product(feed.output / decisions[2].entry.file).forecast.shape == (3, 20, 28)
    for k in range(7, 10):
        feed.deliver(k, rain=other)
    watcher.poll_once()
    made = sorted(products(feed.output))
    assert made == [at(k) for k in (6, 7, 8, 9)]  # 15 min back from 12:45
    assert sorted(p.name for p in feed.output.iterdir()) == sorted(
        [MANIFEST, *(e.file for e in read_manifest(feed.output))])
    assert read_manifest_extras(feed.output) == {"source": "synth", "last_reference_time": "2024-06-01T12:45:00Z"}


def test_a_failing_model_gives_extrapolation_marked_as_fallback(feed) -> None:
    watcher = feed.watcher(Failing, max_missing_frames=0)
    for k in range(4):
        feed.deliver(k)
    watcher.poll_once()
    made = products(feed.output)
    assert sorted(made) == [at(2), at(3)]
    for entry in made.values():
        assert entry.fallback and entry.model == "extrapolation" and entry.missing_frames == 0
        assert "weights went missing" in entry.fallback_reason
        attrs = read_product(feed.output / entry.file).attrs
        assert attrs["fallback"] == 1 and "weights went missing" in attrs["fallback_reason"]
        assert attrs["configured_model"] == "persistence"
    assert metric(watcher, "nowcast_watch_fallbacks_total", reason="model_error") == 2


def test_a_hanging_model_is_killed_at_its_deadline_and_does_not_block_the_next_frame(feed) -> None:
    watcher = feed.watcher(Hanging, max_missing_frames=0, model_deadline_s=1.0)
    hung = watcher.model._process
    for k in range(3):
        feed.deliver(k)
    tic = time.monotonic()
    *_, decision = watcher.poll_once()
    assert decision.entry.fallback and "no forecast within 1 s" in decision.entry.fallback_reason
    hung.join(timeout=5)
    assert not hung.is_alive()  # killed, and a fresh worker is loading the model
    feed.deliver(3)
    [decision] = watcher.poll_once()  # still loading, or hanging again: either way an answer by the deadline
    assert decision.entry.fallback
    assert time.monotonic() - tic < 60  # not the hour the model would hang for
    assert metric(watcher, "nowcast_watch_fallbacks_total", reason="deadline") >= 1


def test_an_ensemble_writes_its_probability_matched_mean_and_probabilities(feed) -> None:
    watcher = feed.watcher(Members, members=4, thresholds=(0.5, 2.0), accumulation_thresholds=(0.1, 0.5),
                           max_missing_frames=0)
    for k in range(3):
        feed.deliver(k)
    *_, decision = watcher.poll_once()
    entry = decision.entry
    assert entry.members == 4 and entry.thresholds == (0.5, 2.0) and not entry.fallback
    fields = read_product(feed.output / entry.file)
    assert fields.probabilities is not None and fields.probabilities.shape == (2, 3, 24, 32)
    last = feed.rain.values[2]
    members = last[None] * np.linspace(0.5, 1.5, 4, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(fields.probabilities.values[0, 0], (members > 0.5).mean(axis=0), atol=1e-6)
    assert fields.members is None  # not asked for: a product members times smaller
    # the forecast's maximum: these members hold the last frame at every lead, so it is any lead's probability
    assert fields.max_probabilities is not None and fields.max_probabilities.shape == (2, 24, 32)
    np.testing.assert_allclose(fields.max_probabilities.values[1], (members > 2.0).mean(axis=0), atol=1e-6)
    # the rain over the forecast period: the same as ensemble_products makes of the same members
    accumulations = fields.accumulation_probabilities
    assert accumulations is not None and accumulations.shape == (2, 24, 32)
    assert list(accumulations["accumulation_threshold"].values) == [0.1, 0.5]
    ensemble = xr.DataArray(members[:, None].repeat(3, axis=1), dims=("member", *fields.forecast.dims),
                            coords=fields.forecast.coords,
                            attrs={"forecast_reference_time": str(feed.rain["time"].values[2])})
    expected = ensemble_products(ensemble, ProductRequest(("accumulation_probabilities",),
                                                          accumulation_thresholds=(0.1, 0.5)))
    made = expected["accumulation_probabilities"].values
    assert made.min() == 0.0 and made.max() == 1.0 and ((made > 0) & (made < 1)).any()  # all of it, to compare
    np.testing.assert_allclose(accumulations.values, made, atol=1e-6)


def test_an_ensemble_writes_neighbourhood_processed_probabilities_when_asked(feed) -> None:
    watcher = feed.watcher(Members, members=4, thresholds=(0.5,), neighbourhood=0.6, max_missing_frames=0)
    for k in range(3):
        feed.deliver(k)
    *_, decision = watcher.poll_once()
    fields = read_product(feed.output / decision.entry.file)
    last = feed.rain.values[2]
    members = last[None] * np.linspace(0.5, 1.5, 4, dtype=np.float32)[:, None, None]
    raw = np.where(np.isfinite(last), (members > 0.5).mean(axis=0), np.nan)
    lead = (fields.probabilities["time"].values[0] - feed.rain["time"].values[2]) / np.timedelta64(1, "m")
    window = neighbourhood_window_pixels(float(lead), 0.6, 1.0)
    assert window > 1
    np.testing.assert_allclose(fields.probabilities.values[0, 0], neighbourhood_probability(raw, window), atol=1e-6)
    with pytest.raises(Exception, match="neighbourhood"):
        WatchConfig(input_dir="in", output_dir="out", source="synth", members=4, neighbourhood=-1.0)


def test_an_ensemble_keeps_its_members_when_asked(feed) -> None:
    watcher = feed.watcher(Members, members=4, thresholds=(0.5,), write_members=True, max_missing_frames=0)
    for k in range(3):
        feed.deliver(k)
    *_, decision = watcher.poll_once()
    fields = read_product(feed.output / decision.entry.file)
    assert fields.members is not None and fields.members.shape == (4, 3, 24, 32)
    last = feed.rain.values[2]
    np.testing.assert_allclose(fields.members.values[:, 0], last[None] * np.linspace(0.5, 1.5, 4)[:, None, None],
                               rtol=1e-5)
    with pytest.raises(ConfigError, match="write_members needs members"):
        WatchConfig(input_dir="in", output_dir="out", source="synth", write_members=True)
    with pytest.raises(ConfigError, match="neighbourhood needs members"):
        WatchConfig(input_dir="in", output_dir="out", source="synth", neighbourhood=0.8)


def test_a_restart_tidies_what_a_killed_run_left_and_goes_on_where_it_stopped(feed) -> None:
    first = feed.watcher()
    for k in range(4):
        feed.deliver(k)
    first.poll_once()
    first.close()
    before = products(feed.output)
    assert sorted(before) == [at(1), at(2), at(3)]
    # a run killed after writing 12:20's product but before listing it, and while writing temporary files
    feed.deliver(4)
    left = [feed.output / "nowcast_20240601T1220Z.nc", feed.output / ".nowcast_20240601T1220Z.nc.x1.tmp",
            feed.output / ".manifest.json.x2"]
    for path in left:
        path.write_bytes(b"half")
    (feed.output / "notes.txt").write_text("not the feed's")
    second = feed.watcher()
    assert not any(path.exists() for path in left) and (feed.output / "notes.txt").exists()
    decisions = second.poll_once()
    assert [d.reference_time for d in decisions] == [at(4)]  # 12:00-12:15 are not done again
    after = products(feed.output)
    assert all(after[when].written_at == entry.written_at for when, entry in before.items())
    assert read_product(feed.output / after[at(4)].file).forecast.shape == (3, 24, 32)
    assert metric(second, "nowcast_watch_skipped_forecasts_total", reason="late") == 0


def test_a_watcher_refuses_an_output_folder_of_another_source(feed) -> None:
    feed.output.mkdir()
    (feed.output / MANIFEST).write_text(json.dumps({"schema": 1, "source": "fmi", "products": []}))
    with pytest.raises(Exception, match="products of source 'fmi'"):
        feed.watcher()


# --- a real process, killed -----------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_with_sigkill_and_restarted_it_loses_nothing_and_forecasts_nothing_twice(feed, tmp_path) -> None:
    big = synthetic_sequence(SyntheticRain(ny=192, nx=192, frames=16), seed=5)
    config = tmp_path / "watch.toml"
    config.write_text('input_dir = "in"\noutput_dir = "out"\nsource = "synth"\ncatalogue = "catalogue.toml"\n'
                      'model = "extrapolation"\nsteps = 6\nsettle_s = 0.0\nmissing_wait_s = 0.0\n'
                      'poll_interval_s = 0.2\nmax_missing_frames = 0\n')
    command = [sys.executable, "-m", "nowcast.cli", "watch", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "first.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        before: dict = {}
        k = 0
        deadline = time.monotonic() + 120
        while len(before) < 3 and time.monotonic() < deadline and process.poll() is None:
            if k < 12:
                feed.deliver(k, rain=big)
                k += 1
            time.sleep(0.3)
            before = products(feed.output) if (feed.output / MANIFEST).exists() else {}
        assert len(before) >= 3, (tmp_path / "first.log").read_text()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = products(feed.output)
    for rest in range(k, 12):
        feed.deliver(rest, rain=big)
    second = subprocess.run([*command, "--once"], capture_output=True, text=True, env=env, timeout=240)
    assert second.returncode == 0, second.stderr
    after = products(feed.output)
    assert sorted(after) == [at(k) for k in range(3, 12)], second.stderr  # 12:00-12:10 lack a whole window
    for when, entry in before.items():
        assert after[when].written_at == entry.written_at  # not forecast again
    assert sorted(p.name for p in feed.output.iterdir()) == sorted([MANIFEST, *(e.file for e in after.values())])
    for entry in after.values():
        read_product(feed.output / entry.file)  # every listed product is whole


# --- replaying an archive -------------------------------------------------------------------------------


@pytest.mark.realdata
def test_replay_writes_files_one_by_one_in_the_source_s_layout(tmp_path, real_data_root) -> None:
    from nowcast.io.catalogue import get_event

    event = get_event("fmi-20170509")
    pauses: list[float] = []
    written = replay_event(event, tmp_path / "feed", interval_s=5.0, frames=3, root=real_data_root,
                           write_seconds=0.8, sleep=pauses.append)
    assert [p.relative_to(tmp_path / "feed").parts[0] for p in written] == ["20170509"] * 3
    assert written[0].name == "201705091045_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"
    assert pauses.count(5.0) == 2 and pauses.count(0.1) == 24  # 8 chunks a file, 0.8 s
    assert not [p for p in (tmp_path / "feed").rglob(".*")]


@pytest.mark.realdata
@pytest.mark.slow
def test_a_replayed_real_event_gives_products_on_its_grid(tmp_path, real_data_root) -> None:
    from nowcast.io.catalogue import get_event

    replay_event(get_event("fmi-20170509"), tmp_path / "feed", interval_s=0.0, frames=4, root=real_data_root)
    config = WatchConfig(input_dir=str(tmp_path / "feed"), output_dir=str(tmp_path / "out"), source="fmi",
                         model="extrapolation", steps=3, settle_s=0.0, max_missing_frames=0)
    watcher = Watcher(config)
    watcher.run(once=True)
    [entry] = read_manifest(tmp_path / "out")
    assert entry.reference_time == pd.Timestamp("2017-05-09T11:00Z") and not entry.fallback
    fields = read_product(tmp_path / "out" / entry.file)
    assert fields.forecast.shape == (3, 1226, 760) and fields.observed.sizes["time"] == 4
    assert np.nanmax(fields.forecast.values) > 1.0  # rain, not an empty field
