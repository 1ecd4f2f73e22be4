"""The evaluation on Dask's distributed scheduler gives the single-process scores to the last bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from nowcast import forecasters
from nowcast.errors import InputError
from nowcast.evaluate import LOCAL_CLUSTER, evaluate
from nowcast.forecasters.base import Forecaster
from nowcast.gan.export import export_run
from nowcast.gan.train import train
from nowcast.synthetic import SyntheticRain, synthetic_sequence

pytest.importorskip("distributed")

# what differs between two runs of the same evaluation: when and how fast
_RUN_KEYS = ("started", "runtime_seconds", "timing")


@pytest.fixture(scope="module")
def events() -> dict[str, xr.DataArray]:
    return {
        "east": synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=20, no_data_border=2), seed=21),
        "west": synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=17, velocity=(-0.5, -2.0)), seed=22),
    }


@pytest.fixture(scope="module")
def registry(tmp_path_factory, events):
    """A tiny trained model, so that the workers run a GAN from the registry too."""
    from tests.test_gan import tiny_experiment

    root = tmp_path_factory.mktemp("dask-registry")
    training = {f"syn{i}": synthetic_sequence(SyntheticRain(ny=48, nx=48, frames=12), seed=i) for i in range(3)}
    train(tiny_experiment(steps=2), root / "run", loader=training.__getitem__, progress=False)
    export_run(root / "run", "tiny-gan", models_dir=root / "models")
    return root / "models"


def _scores(report: dict) -> str:
    return json.dumps({k: v for k, v in report.items() if k not in _RUN_KEYS}, sort_keys=True)


def test_local_cluster_scores_equal_the_single_process_ones(tmp_path, events, registry):
    arguments = dict(n_input=4, steps=5, stride=3, loader=events.__getitem__, progress=False, models_dir=registry,
                     members=2, seed=4)
    methods = ["persistence", "extrapolation", "steps", "tiny-gan"]
    here = evaluate(methods, list(events), out_dir=tmp_path / "here", **arguments)
    there = evaluate(methods, list(events), out_dir=tmp_path / "dask", scheduler=LOCAL_CLUSTER, workers=2,
                     **arguments)
    assert here["overall"]["n_evaluated"] >= 6
    assert _scores(there) == _scores(here)
    for name in methods:
        assert there["timing"][name]["n_forecasts"] == here["timing"][name]["n_forecasts"]
    assert here["nonfinite"]["persistence"]["inf"] == 0 and here["nonfinite"]["tiny-gan"]["values"] > 0
    assert (tmp_path / "dask" / "scores.json").read_text() != ""


class DiesOnce(Forecaster):
    """Persistence whose first forecast kills the process running it, as Dask kills a worker past its memory
    budget; the frames scattered to that worker go with it."""

    name = "dies-once"
    n_input_frames = 1

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def predict(self, past: np.ndarray, steps: int, **_: object) -> np.ndarray:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return np.repeat(past[:, -1:], steps, axis=1)


def test_a_start_time_lost_with_its_worker_is_scored_again(tmp_path, events, monkeypatch):
    marker = tmp_path / "died"
    monkeypatch.setitem(forecasters.METHODS, "dies-once", lambda: DiesOnce(marker))
    arguments = dict(n_input=4, steps=5, stride=3, loader=events.__getitem__, progress=False)
    there = evaluate(["dies-once"], list(events), out_dir=tmp_path / "dask", scheduler=LOCAL_CLUSTER, workers=2,
                     **arguments)
    assert marker.exists()  # a worker did die
    here = evaluate(["dies-once"], list(events), out_dir=tmp_path / "here", **arguments)
    assert _scores(there) == _scores(here)


def test_unreachable_scheduler_is_a_clear_error(tmp_path, events, monkeypatch):
    monkeypatch.setattr("nowcast.evaluate.CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(InputError, match="cannot connect"):
        evaluate(["persistence"], ["east"], loader=events.__getitem__, out_dir=tmp_path, progress=False,
                 scheduler="tcp://127.0.0.1:9", workers=None)
    with pytest.raises(InputError, match="workers"):
        evaluate(["persistence"], ["east"], loader=events.__getitem__, out_dir=tmp_path, progress=False,
                 scheduler=LOCAL_CLUSTER, workers=0)
