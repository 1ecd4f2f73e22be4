"""The retraining job on tiny models and synthetic events: the gate refuses a bad candidate and promotes a
good one, the live pointer moves and rolls back, the service follows it, and a killed job resumes exactly."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from nowcast import artifacts
from nowcast import config as config_io
from nowcast.cli import app
from nowcast.config import ConfigError
from nowcast.errors import InputError, UnreadableFileError
from nowcast.forecasters import get_forecaster
from nowcast.gan.export import export_run
from nowcast.gan.train import train
from nowcast.retrain import (
    GATE_FILE,
    REPORT_FILE,
    RESULT_FILE,
    RetrainConfig,
    _split_phase,
    load_config,
    retrain,
)
from nowcast.synthetic import SyntheticRain, synthetic_sequence

NAME = "tiny-gan"
MODEL = {"n_input": 4, "n_output": 5, "generator_channels": [8, 8, 6], "discriminator_channels": [4, 4, 4],
         "generator_layers": 3, "envelope_db": 0.0, "correction_deadzone_db": 0.0, "correction_db_per_step": 0.0}
ROOT = Path(__file__).resolve().parent.parent


def config(tmp: Path | None = None, **train: Any) -> dict[str, Any]:
    """A retrain of the tiny model on synthetic events (named by their seed), evaluated in this process."""
    steps = {"steps": 3, "batch_size": 2, "log_every": 1, "val_every": 3, "checkpoint_every": 1,
             "lr_generator": 1e-5, "lr_discriminator": 1e-5, **train}
    return {
        "name": NAME, "seed": 3,
        "split": {"by": "day", "train": ["1", "2"], "validation": ["3"], "test": ["4", "5"]},
        "evaluation": {"n_input": 4, "steps": 5, "stride": 3, "scheduler": "none"},
        # the forecast time of models this small is mostly noise; a tolerance for near-identical models
        "gate": {"max_time_factor": 20.0, "n_resamples": 500, "csi_tolerance": 0.02},
        "experiment": {"model": MODEL, "train": steps,
                       "data": {"event_source": "synthetic", "patch_size": 32, "val_patch_size": 40,
                                "val_patches_per_event": 2}},
    }


def build(data: dict[str, Any]) -> RetrainConfig:
    return config_io.from_dict(RetrainConfig, data)


@pytest.fixture(scope="module")
def live_registry(tmp_path_factory) -> Path:
    """A registry whose live tiny-gan v1 was trained for a few steps."""
    root = tmp_path_factory.mktemp("retrain-live")
    first = build(config(steps=8, lr_generator=1e-4, lr_discriminator=2e-4))
    train(first.training(None), root / "run", progress=False)
    export_run(root / "run", NAME, models_dir=root / "models")
    artifacts.promote(NAME, "v1", by="test", reason="the first model", models_dir=root / "models")
    return root / "models"


@pytest.fixture()
def models(tmp_path, live_registry) -> Path:
    return Path(shutil.copytree(live_registry, tmp_path / "models"))


def _weights(models: Path, version: str) -> dict[str, torch.Tensor]:
    return torch.load(artifacts.resolve(NAME, version, models) / artifacts.WEIGHTS_FILE, weights_only=True)


def test_a_good_candidate_is_promoted_and_rollback_restores_the_previous_version(tmp_path, models):
    path = tmp_path / "retrain.json"
    path.write_text(json.dumps(config()))
    runner = CliRunner()
    done = runner.invoke(app, ["retrain", "--config", str(path), "--out", str(tmp_path / "work"),
                               "--models-dir", str(models), "--no-progress"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.splitlines()[0])
    assert summary == {"name": NAME, "version": "v2", "decision": "promote", "promoted": True, "live_version": "v2"}
    gate = json.loads((tmp_path / "work" / GATE_FILE).read_text())
    assert [c["name"] for c in gate["criteria"]] == ["finite values", "CSI at 1 mm/h", "CSI at 4 mm/h",
                                                     "CSI at 8 mm/h", "forecast time"]
    assert all(c["passed"] for c in gate["criteria"])
    csi = gate["criteria"][1]
    lead = next(iter(csi["leads"].values()))
    assert lead["low"] <= lead["difference"] <= lead["high"] and csi["margin"] >= 0
    # the card holds the gate report and what reproduces the job; the pointer holds why it is live
    card = artifacts.card(NAME, "v2", models)
    assert card["retrain"]["decision"] == "promote"
    reproduce = card["retrain"]["reproduce"]
    assert reproduce["split"] == {"by": "day", "train": ["1", "2"], "validation": ["3"], "test": ["4", "5"]}
    assert set(reproduce["data_sha256"]) == {"1", "2", "3", "4", "5"} and reproduce["seed"] == 3
    assert reproduce["initialised_from"] == f"{NAME}@v1" and reproduce["nowcast_version"]
    assert card["evaluation"]["method"] == NAME and NAME in card["evaluation"]["scores"]
    assert "## Gate: promote" in (artifacts.resolve(NAME, "v2", models) / artifacts.CARD_MARKDOWN).read_text()
    assert "## Gate: promote" in (tmp_path / "work" / REPORT_FILE).read_text()
    record = artifacts.live_record(NAME, models)
    assert record["version"] == "v2" and record["gate_report"]["decision"] == "promote"
    assert artifacts.resolve(NAME, None, models).name == "v2"
    listing = runner.invoke(app, ["models", "--models-dir", str(models)], terminal_width=250)
    assert "v2 (gate: promote)" in listing.stdout and "v2: promote by" in listing.stdout
    assert "✓ CSI at 1 mm/h" in listing.stdout
    # rollback: v1 again, then nothing before it
    back = runner.invoke(app, ["rollback", NAME, "--reason", "drill", "--models-dir", str(models)])
    assert back.exit_code == 0 and back.stdout.strip() == f"{NAME}@v1 is live"
    assert artifacts.resolve(NAME, None, models).name == "v1"
    again = runner.invoke(app, ["rollback", NAME, "--reason", "drill", "--models-dir", str(models)])
    assert again.exit_code == 2 and "no earlier live version" in again.stderr
    history = artifacts.live_record(NAME, models)["history"]
    assert [(e["action"], e["version"]) for e in history] == [("promote", "v1"), ("promote", "v2"),
                                                              ("rollback", "v1")]


def test_a_damaged_candidate_is_refused_and_the_live_version_stays(tmp_path, models):
    # no live version recorded yet: the name means its latest version, which a refused candidate must not become
    (models / NAME / artifacts.LIVE_FILE).unlink()
    # a learning rate that wrecks the weights within three steps
    result = retrain(build(config(lr_generator=5.0)), tmp_path / "work", models_dir=models, progress=False)
    assert result["decision"] == "refuse" and not result["promoted"] and result["version"] == "v2"
    assert artifacts.live_version(NAME, models) == "v1" and artifacts.resolve(NAME, None, models).name == "v1"
    assert "no live version had been recorded" in artifacts.live_record(NAME, models)["reason"]
    gate = json.loads((tmp_path / "work" / GATE_FILE).read_text())
    failed = [c for c in gate["criteria"] if not c["passed"]]
    assert failed and all(c["margin"] < 0 for c in failed)
    assert artifacts.card(NAME, "v2", models)["retrain"]["decision"] == "refuse"  # exported all the same
    runner = CliRunner()
    refused = runner.invoke(app, ["promote", f"{NAME}@v2", "--reason", "try", "--models-dir", str(models)])
    assert refused.exit_code == 2 and "failed its retrain gate" in refused.stderr
    assert artifacts.live_version(NAME, models) == "v1"
    forced = runner.invoke(app, ["promote", f"{NAME}@v2", "--reason", "override", "--force", "--by", "ops",
                                 "--models-dir", str(models)])
    assert forced.exit_code == 0 and artifacts.live_record(NAME, models)["by"] == "ops"


def test_nan_weights_fail_the_finite_values_criterion(tmp_path, models):
    from nowcast.retrain import _gate_phase, _Plan

    # a candidate whose weights were damaged after training: every forecast pixel NaN
    report = _evaluate_damaged(tmp_path, models)
    plan = _Plan("x", {}, "v1", "now", "0")
    gate = _gate_phase(build(config()), plan, tmp_path, report)
    finite = gate["criteria"][0]
    assert gate["decision"] == "refuse" and finite["name"] == "finite values" and not finite["passed"]
    assert finite["candidate"]["nan"] == finite["candidate"]["values"]


def _evaluate_damaged(tmp_path: Path, models: Path) -> dict[str, Any]:
    from nowcast.evaluate import evaluate

    staging = tmp_path / "staging"
    for label in ("candidate", "live"):
        shutil.copytree(artifacts.resolve(NAME, "v1", models), staging / label / "v1")
    folder = staging / "candidate" / "v1"
    weights = torch.load(folder / artifacts.WEIGHTS_FILE, weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
               folder / artifacts.WEIGHTS_FILE)
    lines = [line for line in (folder / artifacts.CHECKSUMS_FILE).read_text().splitlines()
             if not line.endswith(artifacts.WEIGHTS_FILE)]
    lines.append(f"{artifacts._sha256(folder / artifacts.WEIGHTS_FILE)}  {artifacts.WEIGHTS_FILE}")
    (folder / artifacts.CHECKSUMS_FILE).write_text("\n".join(lines) + "\n")
    events = {name: synthetic_sequence(SyntheticRain(ny=48, nx=48, frames=24), seed=int(name)) for name in "45"}
    return evaluate(["candidate", "live", "persistence"], list(events), steps=5, stride=3,
                    loader=events.__getitem__, out_dir=tmp_path / "eval", progress=False, models_dir=staging)


def test_a_killed_retrain_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, live_registry):
    killed, whole = (Path(shutil.copytree(live_registry, tmp_path / name)) for name in ("killed", "whole"))
    cfg = build(config(steps=4))
    stopped = retrain(cfg, tmp_path / "work-killed", models_dir=killed, progress=False, stop_after=2)
    assert stopped["finished"] is False and artifacts.list_versions(NAME, killed) == ["v1"]
    with pytest.raises(InputError, match="--resume"):
        retrain(cfg, tmp_path / "work-killed", models_dir=killed, progress=False)
    with pytest.raises(ConfigError, match="another config"):
        retrain(build(config(steps=5)), tmp_path / "work-killed", models_dir=killed, progress=False, resume=True)
    resumed = retrain(cfg, tmp_path / "work-killed", models_dir=killed, progress=False, resume=True)
    straight = retrain(cfg, tmp_path / "work-whole", models_dir=whole, progress=False)
    assert resumed["version"] == straight["version"] == "v2"
    assert resumed["decision"] == straight["decision"]
    a, b = _weights(killed, "v2"), _weights(whole, "v2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming a finished job changes nothing and exports no second version
    again = retrain(cfg, tmp_path / "work-killed", models_dir=killed, progress=False, resume=True)
    assert again["version"] == "v2" and artifacts.list_versions(NAME, killed) == ["v1", "v2"]
    assert json.loads((tmp_path / "work-killed" / RESULT_FILE).read_text())["version"] == "v2"


def test_the_split_is_checked_for_overlap_by_event_and_by_day(tmp_path):
    catalogue = tmp_path / "events.toml"
    catalogue.write_text("\n".join([
        '[sources.r]', 'root_path = "radar/r"', 'path_fmt = "%Y%m%d"', 'fn_pattern = "%H%M"', 'fn_ext = "h5"',
        'importer = "odim_hdf5"', 'timestep = 5',
        '[events.morning]', 'source = "r"', 'start = 2020-05-01T06:00:00', 'end = 2020-05-01T07:00:00',
        '[events.late-morning]', 'source = "r"', 'start = 2020-05-01T06:55:00', 'end = 2020-05-01T08:00:00',
        '[events.evening]', 'source = "r"', 'start = 2020-05-01T18:00:00', 'end = 2020-05-01T19:00:00',
        '[events.next-day]', 'source = "r"', 'start = 2020-05-02T18:00:00', 'end = 2020-05-02T19:00:00',
    ]) + "\n")
    loader = {name: synthetic_sequence(SyntheticRain(ny=16, nx=16, frames=13), seed=i)
              for i, name in enumerate(["morning", "late-morning", "evening", "next-day"])}.__getitem__

    def split(by: str, train: list[str], test: list[str]) -> dict[str, Any]:
        data = {**config(), "catalogue": str(catalogue), "split": {"by": by, "train": train, "test": test}}
        data["experiment"]["data"]["event_source"] = "catalogue"
        work = tmp_path / f"{by}-{'-'.join(train + test)}"
        work.mkdir()
        return _split_phase(build(data), work, loader)

    with pytest.raises(InputError, match="share the frame at 2020-05-01T06:55:00"):
        split("event", ["morning"], ["late-morning"])
    assert split("event", ["morning"], ["evening"])["events"]["evening"]["set"] == "test"
    with pytest.raises(InputError, match="share the day 2020-05-01"):
        split("day", ["morning"], ["evening"])
    written = split("day", ["morning"], ["next-day"])
    assert written["events"]["next-day"]["radar"] == "odim_hdf5:radar/r"
    assert len(written["events"]["morning"]["sha256"]) == 64
    with pytest.raises(ConfigError, match="in both train and test"):
        build({**config(), "split": {"train": ["1"], "test": ["1"]}})
    with pytest.raises(InputError, match="not in the catalogue"):
        split("event", ["morning"], ["atlantis"])


def test_configs_are_checked(tmp_path):
    for path in sorted((ROOT / "configs" / "retrain").glob("*.toml")):
        shipped = load_config(path)
        assert shipped.name == "default-gan" and shipped.split.test and shipped.evaluation.scheduler == "local"
    with pytest.raises(ConfigError, match="unknown key"):
        build({**config(), "gaet": {}})
    with pytest.raises(ConfigError, match="level"):
        build({**config(), "gate": {"level": 1.5}})
    bad = tmp_path / "retrain.toml"
    bad.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match=r"\[split\]"):
        load_config(bad)
    with pytest.raises(ConfigError, match="draws members"):
        build({**config(), "spread_gain": {"fit": True}})
    with pytest.raises(ConfigError, match=r"spread_gain\.members"):
        build({**config(), "spread_gain": {"members": 1}})
    with pytest.raises(ConfigError, match="spread gain 5"):
        build({**config(), "spread_gain": {"ends": [5.0]}})
    with pytest.raises(ConfigError, match=r"rate_map\.fit needs a model that draws members"):
        build({**config(), "rate_map": {"fit": True}})
    with pytest.raises(ConfigError, match=r"rate_map\.thresholds_mmh: .*increasing"):
        build({**config(), "rate_map": {"thresholds_mmh": [2.0, 1.0]}})
    with pytest.raises(ConfigError, match=r"neighbourhood\.fit needs a model that draws members"):
        build({**config(), "neighbourhood": {"fit": True}})
    with pytest.raises(ConfigError, match=r"neighbourhood\.rates: .*outside \[0, 10\]"):
        build({**config(), "neighbourhood": {"rates": [12.0]}})


def test_an_ensemble_candidate_is_scored_and_exported_with_its_own_fitted_spread_gain_and_neighbourhood(tmp_path):
    """[spread_gain] fit = true: the candidate's gain is fitted on the training events, the staged candidate is
    scored with it and the exported version carries it, with the fit on its card; [rate_map] fit = true: so is its
    rate map, fitted on the members it draws with that gain; [neighbourhood] fit = true: so is its probability
    products' neighbourhood, fitted on the members it draws with both."""
    data = config()
    data["experiment"]["model"] = {**MODEL, "noise_channels": 2, "member_intensity_db": 3.0}
    data["evaluation"]["members"] = 4
    data["spread_gain"] = {"fit": True, "starts": [1.0], "ends": [0.5, 1.5], "members": 4}
    data["rate_map"] = {"fit": True, "thresholds_mmh": [0.5, 2.0], "members": 4}
    data["neighbourhood"] = {"fit": True, "rates": [1.0, 3.0], "members": 4}
    models = tmp_path / "models"
    result = retrain(build(data), tmp_path / "work", models_dir=models, progress=False)
    fitted = json.loads((tmp_path / "work" / "spread_gain.json").read_text())
    assert fitted["events"] == ["1", "2"] and fitted["members"] == 4 and len(fitted["candidates"]) == 2
    best = fitted["best"]
    lowest = min(fitted["candidates"], key=lambda candidate: candidate["crps"])
    assert best == [lowest["start"], lowest["end"]]
    staged = get_forecaster("candidate", models_dir=tmp_path / "work" / "registry").model_config
    exported = get_forecaster(f"{NAME}@{result['version']}", models_dir=models).model_config
    for model in (staged, exported):
        assert [model.member_spread_gain_start, model.member_spread_gain_end] == best
    assert artifacts.card(NAME, result["version"], models)["retrain"]["spread_gain_fit"]["best"] == best
    rate_map = json.loads((tmp_path / "work" / "rate_map.json").read_text())
    assert rate_map["model"] == "candidate@v2" and rate_map["member_rate_map_mmh"] == [0.5, 2.0]
    for model in (staged, exported):
        assert [list(row) for row in model.member_rate_map] == rate_map["member_rate_map"]
        assert list(model.member_rate_map_minutes) == rate_map["member_rate_map_minutes"]
    assert artifacts.card(NAME, result["version"], models)["retrain"]["rate_map_fit"]["member_rate_map"] == (
        rate_map["member_rate_map"])
    neighbourhood = json.loads((tmp_path / "work" / "neighbourhood.json").read_text())
    assert neighbourhood["model"] == "candidate@v3"  # the members as the gain and the map leave them
    assert [c["km_per_minute"] for c in neighbourhood["candidates"]] == [0.0, 1.0, 3.0]
    highest = max(neighbourhood["candidates"], key=lambda candidate: candidate["brier_skill"])
    assert exported.probability_neighbourhood_km_per_minute == highest["km_per_minute"] == neighbourhood["best"]
    assert artifacts.card(NAME, result["version"], models)["retrain"]["neighbourhood_fit"]["best"] == (
        neighbourhood["best"])


# --- the live pointer -------------------------------------------------------------------------------------


def test_the_live_pointer_is_checked(tmp_path, models):
    pointer = models / NAME / artifacts.LIVE_FILE
    for text in ("{", json.dumps({"version": "../x", "history": []}),
                 json.dumps({"version": "v1", "history": [{"action": "promote", "version": "v2"}]})):
        pointer.write_text(text)
        with pytest.raises(UnreadableFileError, match="LIVE"):
            artifacts.resolve(NAME, None, models)
    pointer.write_text(json.dumps({"version": "v7", "history": [{"action": "promote", "version": "v7"}]}))
    with pytest.raises(UnreadableFileError, match="live version v7 is not in the registry"):
        artifacts.resolve(NAME, None, models)
    pointer.unlink()
    assert artifacts.resolve(NAME, None, models).name == "v1"  # no pointer: the latest
    with pytest.raises(InputError, match="nothing to roll back"):
        artifacts.rollback(NAME, by="t", reason="r", models_dir=models)
    (artifacts.resolve(NAME, "v1", models) / artifacts.WEIGHTS_FILE).write_bytes(b"damaged")
    with pytest.raises(UnreadableFileError, match="checksum"):
        artifacts.promote(NAME, "v1", by="t", reason="r", models_dir=models)
    assert not pointer.exists()


def test_the_service_follows_the_live_pointer_without_a_failed_request(tmp_path, models):
    from fastapi.testclient import TestClient

    from service import create_app
    from service.core.config import Settings

    _second_version(models)
    past = synthetic_sequence(SyntheticRain(ny=32, nx=32, frames=4), seed=9)
    body = {"frames": past.values.tolist(), "steps": 2,
            "timestamps": [pd.Timestamp(t).isoformat() + "Z" for t in past["time"].values]}
    settings = Settings(_env_file=None, model=NAME, models_dir=models, device="cpu", warmup_grid=16,
                        live_poll_s=0.05, admin_keys=["root"])
    answers: list[Any] = []
    stop = threading.Event()

    def hammer(client: TestClient) -> None:
        while not stop.is_set():
            answers.append(client.post("/v1/nowcasts", json=body))

    def wait_for(client: TestClient, version: str) -> None:
        deadline = time.monotonic() + 30
        while client.get("/v1/models").json()["active"]["version"] != version:
            assert time.monotonic() < deadline, f"the service did not switch to {version}"
            time.sleep(0.05)

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        threads = [threading.Thread(target=hammer, args=(client,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        artifacts.promote(NAME, "v2", by="t", reason="better", models_dir=models)
        wait_for(client, "v2")
        time.sleep(0.3)
        artifacts.rollback(NAME, by="t", reason="drill", models_dir=models)
        wait_for(client, "v1")
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
        # a version asked for by number is pinned: it stays when the pointer moves
        pinned = client.put("/v1/admin/active-model", json={"name": f"{NAME}@v1"}, headers={"X-API-Key": "root"})
        artifacts.promote(NAME, "v2", by="t", reason="again", models_dir=models)
        time.sleep(0.5)
        still = client.get("/v1/models").json()["active"]["version"]
        # ... and a switch by name alone takes the live version
        live = client.put("/v1/admin/active-model", json={"name": NAME}, headers={"X-API-Key": "root"})
    assert [a.status_code for a in answers if a.status_code != 200] == [], answers[-1].text
    assert {a.json()["model"]["version"] for a in answers} == {"v1", "v2"}
    assert pinned.status_code == 200 and still == "v1"
    assert live.json()["active"]["version"] == "v2"


def _second_version(models: Path) -> None:
    """v2: v1's weights nudged, so that the two versions forecast differently."""
    folder = artifacts.resolve(NAME, "v1", models)
    weights = torch.load(folder / artifacts.WEIGHTS_FILE, weights_only=True)
    spec = artifacts.read_json(folder / artifacts.CONFIG_FILE)
    nudged = {k: v * 1.01 if v.is_floating_point() else v for k, v in weights.items()}
    artifacts.write_artifact(NAME, config=spec, weights_writer=lambda path: torch.save(nudged, path),
                             card_data={"description": "nudged"}, card_markdown="# v2\n", models_dir=models)


@pytest.mark.slow
def test_retrain_runs_data_parallel_under_torchrun(tmp_path, models):
    import os
    import subprocess
    import sys

    path = tmp_path / "retrain.json"
    path.write_text(json.dumps(config(steps=2)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "nowcast.cli", "retrain", "--config", str(path), "--out", str(tmp_path / "work"), "--models-dir",
           str(models), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "work" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and records[-1]["world_size"] == 2
    result = json.loads((tmp_path / "work" / RESULT_FILE).read_text())
    assert result["version"] == "v2" and artifacts.list_versions(NAME, models) == ["v1", "v2"]
    assert done.stdout.splitlines()[0].startswith("{"), done.stdout
    assert json.loads(done.stdout.splitlines()[0])["version"] == "v2"  # rank 0 alone reports
