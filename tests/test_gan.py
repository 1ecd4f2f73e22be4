"""The multi-scale GAN: shapes, losses, training, save/load, resume and DDP, on tiny configs."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nowcast import artifacts
from nowcast import config as config_io
from nowcast.errors import InputError
from nowcast.forecasters import get_forecaster
from nowcast.gan.config import DataConfig, ExperimentConfig, LossConfig, ModelConfig, TrainConfig
from nowcast.gan.data import SampleSource, load_events, make_batch
from nowcast.gan.export import MEAN_SETTINGS, MEMBER_POSTPROCESSING, PRODUCT_SETTINGS, export_run, retune_version
from nowcast.gan.losses import discriminator_loss, gdl_loss, generator_loss, lp_loss
from nowcast.gan.model import Discriminator, Generator
from nowcast.gan.train import CHECKPOINT, CONFIG, METRICS, load_generator, train
from nowcast.synthetic import SyntheticRain, synthetic_sequence

# without the shipped limits, so that tests see the generator's raw corrections
TINY_MODEL = ModelConfig(n_input=4, n_output=5, generator_channels=(8, 8, 6), discriminator_channels=(4, 4, 4),
                         generator_layers=3, envelope_db=0.0, correction_deadzone_db=0.0, correction_db_per_step=0.0)


def tiny_experiment(**train_overrides: object) -> ExperimentConfig:
    train_cfg = dict(steps=6, batch_size=2, log_every=2, val_every=3, checkpoint_every=2, seed=3)
    train_cfg.update(train_overrides)
    return ExperimentConfig(
        name="tiny",
        model=TINY_MODEL,
        data=DataConfig(train_events=("syn0", "syn1"), val_events=("syn2",), patch_size=32,
                        val_patch_size=40, val_patches_per_event=2),
        train=TrainConfig(**train_cfg),
    )


@pytest.fixture(scope="module")
def events():
    return {f"syn{i}": synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=14, no_data_border=2), seed=i)
            for i in range(3)}


@pytest.fixture(scope="module")
def batch(events):
    cfg = tiny_experiment()
    source = SampleSource(load_events(["syn0"], cfg.model, cfg.data, events.__getitem__), cfg.data,
                          cfg.model, cfg.normalisation, seed=0)
    return source.batch(3, step=0)


def test_generator_gives_every_scale_coarse_to_fine(batch):
    torch.manual_seed(0)
    generator = Generator(TINY_MODEL)
    predictions = generator(batch.past, batch.valid, **batch.conditioning())
    assert [tuple(p.shape) for p in predictions] == [(3, 5, 1, 8, 8), (3, 5, 1, 16, 16), (3, 5, 1, 32, 32)]
    assert isinstance(generator.scales, torch.nn.ModuleList)


@pytest.mark.parametrize("overrides", [{}, {"envelope_db": 10.0, "envelope_radius": 2, "noise_channels": 2},
                                       {"condition_on_advection": False}])
def test_finest_only_gives_the_finest_prediction_of_all_scales(batch, overrides):
    """Inference skips the coarser forecasts; the finest one must not move by a bit."""
    torch.manual_seed(0)
    generator = Generator(dataclasses.replace(TINY_MODEL, **overrides)).eval()
    for scale in generator.scales:  # corrections at every scale, so that each one feeds the next
        torch.nn.init.normal_(scale.head.weight, std=0.05)
    conditioning = batch.conditioning() if generator.config.condition_on_advection else {}
    with torch.no_grad():
        every = generator(batch.past, batch.valid, noise_generator=torch.Generator().manual_seed(1), **conditioning)
        finest = generator(batch.past, batch.valid, noise_generator=torch.Generator().manual_seed(1),
                           finest_only=True, **conditioning)
    assert len(finest) == 1
    assert torch.equal(finest[0], every[-1])
    assert not torch.equal(every[-1], batch.advected)  # the corrections did act


def test_untrained_generator_returns_its_advection_prior(batch):
    # zero-initialised heads: the refinement starts as the identity, i.e. extrapolation
    generator = Generator(TINY_MODEL)
    predictions = generator(batch.past, batch.valid, **batch.conditioning())
    assert torch.allclose(predictions[-1], batch.advected, atol=1e-6)
    assert torch.allclose(predictions[0], torch.nn.functional.avg_pool3d(batch.advected, (1, 4, 4)), atol=1e-6)


def test_a_forecast_says_nothing_where_its_rain_would_come_from_off_the_grid():
    """Rain moving in from the edges: an untrained forecaster (its advection) has no data where pySTEPS'
    extrapolation has none, over two of its passes, and the same rain elsewhere; its trajectories once
    stalled at the edge and painted the edge's rain inwards instead."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    past = synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=4, velocity=(1.0, 1.5)), seed=4)
    assert np.nanmax(past.values[-1][:, :2]) > 0.5  # rain on the edge it moves in from
    forecast = GANForecaster(Generator(TINY_MODEL), Normalisation(), device="cpu").forecast(past, 8).values
    extrapolated = get_forecaster("extrapolation").forecast(past, 8).values
    for lead in (3, 7):  # the second is TINY_MODEL's second pass
        ours, theirs = np.isnan(forecast[lead]), np.isnan(extrapolated[lead])
        assert (ours & theirs).sum() / (ours | theirs).sum() > 0.9
        assert ours[:, :int(1.5 * (lead + 1)) - 1].all() and ours[:, 16:].mean() < 0.2  # moving 1.5 px a step in x
        both = ~ours & ~theirs
        assert np.abs(forecast[lead][both] - extrapolated[lead][both]).mean() < 0.1


def test_training_leaves_out_the_targets_whose_rain_came_from_off_the_grid(events):
    """A patch at the grid's corner the rain moves in from: its target has no data exactly where its
    trajectories end off the grid (the forecast says nothing there), and the loss mask leaves those out."""
    from nowcast.gan.advection import known_at_source

    cfg = tiny_experiment()
    rain = {"edge": synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=14, velocity=(1.0, 1.5)), seed=4)}
    (samples,) = load_events(["edge"], cfg.model, cfg.data, rain.__getitem__)
    source = SampleSource([samples], cfg.data, cfg.model, cfg.normalisation, seed=0)
    crop = source._cut((samples, 2, 0, 0))
    future = crop.frames[cfg.model.n_input:]
    observed = samples.rate[samples.starts[2] + cfg.model.n_input:][:cfg.model.n_output, :32, :32]
    known = known_at_source(torch.ones(1, 64, 64, dtype=torch.bool), torch.from_numpy(crop.displacement)[None])[0]
    assert not known.all() and known[:, 20:, 20:].all()
    np.testing.assert_array_equal(future[known.numpy()], observed[known.numpy()])
    assert np.isnan(future[~known.numpy()]).all()
    batch = make_batch([crop], cfg.model, cfg.normalisation)
    assert torch.equal(batch.future_mask[0, :, 0] > 0, known & torch.from_numpy(np.isfinite(observed)))


def test_unconditioned_generator_needs_no_advection(batch):
    cfg = dataclasses.replace(TINY_MODEL, condition_on_advection=False, noise_channels=2)
    predictions = Generator(cfg)(batch.past, batch.valid)
    assert predictions[-1].shape == batch.future.shape
    with pytest.raises(ValueError, match="advect"):
        Generator(TINY_MODEL)(batch.past, batch.valid)
    with pytest.raises(ValueError, match="displacement"):
        Generator(TINY_MODEL)(batch.past, batch.valid, batch.advected)


def test_discriminator_scores_each_scale(batch):
    predictions = Generator(TINY_MODEL)(batch.past, batch.valid, **batch.conditioning())
    logits = Discriminator(TINY_MODEL)(batch.past, batch.valid, predictions)
    assert [tuple(lg.shape) for lg in logits] == [(3,)] * 3


def test_sharpness_terms_judge_only_the_first_leads_when_asked(batch):
    torch.manual_seed(0)
    predictions = Generator(TINY_MODEL)(batch.past, batch.valid, **batch.conditioning())
    late_changed = [p.clone() for p in predictions]
    for p in late_changed:
        p[:, 2:] += torch.randn_like(p[:, 2:])
    early_only, every_lead = Discriminator(TINY_MODEL, leads=2), Discriminator(TINY_MODEL)
    for a, b in zip(early_only(batch.past, batch.valid, predictions),
                    early_only(batch.past, batch.valid, late_changed), strict=True):
        torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(every_lead(batch.past, batch.valid, predictions),
                                                     every_lead(batch.past, batch.valid, late_changed), strict=True))
    early = LossConfig(lambda_csi=0.0, sharpness_leads=2)
    gdl = [generator_loss(p, batch.future, batch.future_mask, early)[1]["g_gdl"] for p in (predictions, late_changed)]
    assert gdl[0] == pytest.approx(gdl[1])
    everywhere = LossConfig(lambda_csi=0.0)
    gdl = [generator_loss(p, batch.future, batch.future_mask, everywhere)[1]["g_gdl"]
           for p in (predictions, late_changed)]
    assert gdl[0] != pytest.approx(gdl[1])


def test_sharpness_leads_must_fit_the_forecast():
    with pytest.raises(ValueError, match="sharpness_leads must be 0"):
        LossConfig(sharpness_leads=-1)
    with pytest.raises(ValueError, match=r"sharpness_leads \(6\) exceeds model.n_output \(5\)"):
        ExperimentConfig(model=TINY_MODEL, loss=LossConfig(sharpness_leads=6))


def test_losses_and_gradients_are_finite(batch):
    torch.manual_seed(0)
    generator, discriminator = Generator(TINY_MODEL), Discriminator(TINY_MODEL)
    predictions = generator(batch.past, batch.valid, **batch.conditioning())
    fake = discriminator(batch.past, batch.valid, predictions)
    loss, parts = generator_loss(predictions, batch.future, batch.future_mask, LossConfig(), fake)
    loss.backward()
    assert np.isfinite(list(parts.values())).all() and {"g_lp", "g_gdl", "g_adv"} <= set(parts)
    grads = [p.grad for p in generator.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    _d_loss, d_parts = discriminator_loss(fake, fake)
    assert np.isfinite(d_parts["d_loss"])


def test_masked_losses_ignore_no_data_pixels():
    target = torch.zeros(1, 2, 1, 8, 8)
    pred = torch.zeros(1, 2, 1, 8, 8)
    pred[..., :4] = 100.0  # wrong only where there is no data
    mask = torch.ones(1, 2, 1, 8, 8)
    mask[..., :5] = 0.0
    assert lp_loss(pred, target, mask, 1).item() == 0.0
    assert gdl_loss(pred, target, mask, 1.0).item() == 0.0
    mask[..., 3] = 1.0
    assert lp_loss(pred, target, mask, 1).item() > 0.0


def test_gdl_penalises_blur_that_l2_prefers():
    sharp = torch.zeros(1, 1, 1, 1, 8)
    sharp[..., 4:] = 1.0
    blurred = torch.linspace(0, 1, 8).reshape(1, 1, 1, 1, 8)
    mask = torch.ones_like(sharp)
    assert gdl_loss(blurred, sharp, mask, 1.0) > gdl_loss(sharp, sharp, mask, 1.0)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(batch):
    torch.manual_seed(0)
    generator = Generator(TINY_MODEL)
    opt = torch.optim.Adam(generator.parameters(), lr=3e-3)
    cfg = LossConfig(lambda_adv=0.0)
    losses = []
    for _ in range(25):
        loss, _ = generator_loss(generator(batch.past, batch.valid, **batch.conditioning()), batch.future,
                                 batch.future_mask, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_training_writes_log_checkpoint_and_validation(tmp_path, events):
    result = train(tiny_experiment(), tmp_path, loader=events.__getitem__, progress=False)
    assert (tmp_path / CHECKPOINT).is_file()
    records = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert "val_csi_gan@1" in records[-1] and "val_csi_advection@1" in records[-1]
    assert result["step"] == 6 and result["samples_per_s"] > 0


@pytest.mark.parametrize(("schedule", "ema_decay"), [("constant", 0.0), ("cosine", 0.0), ("cosine", 0.9)])
def test_resume_after_kill_gives_the_same_weights(tmp_path, events, schedule, ema_decay):
    full, killed = tmp_path / "full", tmp_path / "killed"
    cfg = tiny_experiment(lr_schedule=schedule, ema_decay=ema_decay)
    train(cfg, full, loader=events.__getitem__, progress=False)
    train(cfg, killed, loader=events.__getitem__, progress=False, stop_after=3)  # killed after step 3 ...
    state = torch.load(killed / CHECKPOINT, weights_only=True)
    assert state["step"] == 2  # ... whose last checkpoint was step 2
    train(cfg, killed, loader=events.__getitem__, progress=False, resume=True)
    a = torch.load(full / CHECKPOINT, weights_only=True)
    b = torch.load(killed / CHECKPOINT, weights_only=True)
    assert b["step"] == 6
    for key in a["generator"]:
        assert torch.equal(a["generator"][key], b["generator"][key]), key
    for key in a["discriminator"]:
        assert torch.equal(a["discriminator"][key], b["discriminator"][key]), key
    assert ("generator_ema" in a) == (ema_decay > 0)
    for key in a.get("generator_ema", {}):
        assert torch.equal(a["generator_ema"][key], b["generator_ema"][key]), key
    assert (full / METRICS).read_text().count("\n") == (killed / METRICS).read_text().count("\n")


def test_batches_drawn_by_worker_processes_train_the_same_weights(tmp_path, events):
    in_process, by_workers = tmp_path / "in-process", tmp_path / "workers"
    train(tiny_experiment(steps=4), in_process, loader=events.__getitem__, progress=False)
    train(tiny_experiment(steps=4, workers=2), by_workers, loader=events.__getitem__, progress=False)
    a = torch.load(in_process / CHECKPOINT, weights_only=True)
    b = torch.load(by_workers / CHECKPOINT, weights_only=True)
    for part in ("generator", "discriminator"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    with pytest.raises(ValueError, match="workers must be in"):
        tiny_experiment(workers=-1)


def test_steps_fitted_to_minutes_are_recorded_and_reproduce_the_run(tmp_path, events):
    cfg = tiny_experiment(steps=100_000, log_every=1, checkpoint_every=1, val_every=1000)
    fitted = tmp_path / "fitted"
    train(cfg, fitted, loader=events.__getitem__, progress=False, fit_minutes=0.005)
    saved = json.loads((fitted / CONFIG).read_text())
    steps = saved["train"]["steps"]
    assert 1 <= steps < 100_000
    assert torch.load(fitted / CHECKPOINT, weights_only=True)["step"] == steps
    assert json.loads((fitted / METRICS).read_text().splitlines()[-1])["step"] == steps
    plain = tmp_path / "plain"
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps)), plain,
          loader=events.__getitem__, progress=False)
    a = torch.load(fitted / CHECKPOINT, weights_only=True)
    b = torch.load(plain / CHECKPOINT, weights_only=True)
    for key in a["generator"]:
        assert torch.equal(a["generator"][key], b["generator"][key]), key
    with pytest.raises(config_io.ConfigError, match="a resumed run keeps its config's steps"):
        train(cfg, fitted, loader=events.__getitem__, progress=False, resume=True, fit_minutes=1.0)


def test_weight_average_is_what_a_run_serves(tmp_path, events):
    cfg = tiny_experiment(ema_decay=0.5)
    train(cfg, tmp_path, loader=events.__getitem__, progress=False)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert int(state["generator_ema"]["n_averaged"]) == cfg.train.steps
    served, _, _ = load_generator(tmp_path)
    last = Generator(cfg.model, scale_db=cfg.normalisation.scale_db)
    last.load_state_dict(state["generator"])
    differing = 0
    for name, weight in served.state_dict().items():
        assert torch.equal(weight, state["generator_ema"][f"module.{name}"]), name
        differing += not torch.equal(weight, last.state_dict()[name])
    assert differing > 0  # the average is not the last step's weights


def test_weight_average_decay_must_be_below_one():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_a_new_run_refuses_to_overwrite_an_old_one(tmp_path, events):
    cfg = tiny_experiment(steps=2)
    train(cfg, tmp_path, loader=events.__getitem__, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg, tmp_path, loader=events.__getitem__, progress=False)


def test_export_and_load_reproduce_the_same_forecast(tmp_path, events):
    cfg = tiny_experiment(steps=2)
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    folder = export_run(tmp_path / "run", "tiny-gan", models_dir=tmp_path / "models")
    assert folder.name == "v1" and artifacts.list_versions("tiny-gan", tmp_path / "models") == ["v1"]
    card = json.loads((folder / "card.json").read_text())
    assert card["training"]["steps"] == 2 and card["training"]["validation_events"] == ["syn2"]
    past = events["syn2"].isel(time=slice(0, 6))
    first = get_forecaster("tiny-gan", models_dir=tmp_path / "models").forecast(past, 7)
    again = get_forecaster("tiny-gan@v1", models_dir=tmp_path / "models").forecast(past, 7)
    assert first.shape == (7, 64, 64)
    np.testing.assert_array_equal(first.values, again.values)
    assert np.nanmin(first.values) >= 0
    # no-data where the last input frame had none (and where rain would come from there)
    assert np.isnan(first.values[0])[np.isnan(past.values[-1])].all()
    # a version is never overwritten, and a malformed one is refused by name
    with pytest.raises(InputError, match="exists already; versions are never overwritten"):
        export_run(tmp_path / "run", "tiny-gan", version="v1", models_dir=tmp_path / "models")
    with pytest.raises(InputError, match="version 'v2b' must look like v1, v2"):
        export_run(tmp_path / "run", "tiny-gan", version="v2b", models_dir=tmp_path / "models")
    assert artifacts.list_versions("tiny-gan", tmp_path / "models") == ["v1"]


def test_the_card_keeps_the_model_and_the_baselines_scores(tmp_path, events):
    """An export with an evaluation keeps that model's and the baselines' numbers, and no one else's."""
    from nowcast.evaluate import evaluate

    cfg = tiny_experiment(steps=2)
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    models = tmp_path / "models"
    export_run(tmp_path / "run", "tiny-gan", models_dir=models)
    export_run(tmp_path / "run", "other-gan", models_dir=models)
    evaluate(["persistence", "extrapolation", "tiny-gan", "other-gan"], ["syn2"], steps=3, stride=4,
             loader=events.__getitem__, out_dir=tmp_path / "eval", progress=False, models_dir=models)
    scores = tmp_path / "eval" / "scores.json"
    folder = export_run(tmp_path / "run", "tiny-gan", models_dir=models, evaluation=scores)
    card = json.loads((folder / "card.json").read_text())
    evaluation = card["evaluation"]
    assert evaluation["method"] == "tiny-gan"
    assert sorted(evaluation["scores"]) == ["extrapolation", "persistence", "tiny-gan"]
    assert evaluation["events"] == ["syn2"] and evaluation["n_evaluated"] > 0
    report = json.loads((tmp_path / "eval" / "scores.json").read_text())
    lead = next(iter(report["overall"]["scores"]["tiny-gan"]["leads"]))
    assert (evaluation["scores"]["tiny-gan"]["leads"][lead]["categorical"]
            == report["overall"]["scores"]["tiny-gan"]["leads"][lead]["categorical"])
    text = (folder / "README.md").read_text()
    assert "| lead (min) | n | tiny-gan | persistence | extrapolation |" in text and "other-gan" not in text
    with pytest.raises(InputError, match="has no scores of 'unscored'"):
        export_run(tmp_path / "run", "unscored", models_dir=models, evaluation=scores)
    assert not artifacts.list_versions("unscored", models)
    # a version that changes only how products are made keeps the scores: its members are the same
    products_only = retune_version(f"tiny-gan@{folder.name}", {"probability_neighbourhood_km_per_minute": 0.5},
                                   models_dir=models)
    kept = artifacts.card("tiny-gan", products_only.name, models)["evaluation"]
    assert kept == {**evaluation, "carried_from": f"tiny-gan@{folder.name}"}
    assert f"Scored as tiny-gan@{folder.name}" in (products_only / "README.md").read_text()
    members_changed = retune_version(f"tiny-gan@{folder.name}", {"member_intensity_db": 1.0}, models_dir=models)
    assert artifacts.card("tiny-gan", members_changed.name, models)["evaluation"] is None


def test_forecaster_pads_odd_grids_and_crops_back(events):
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    forecaster = GANForecaster(Generator(TINY_MODEL), Normalisation(), device="cpu")
    past = events["syn0"].isel(time=slice(0, 4), y=slice(0, 37), x=slice(0, 29))
    out = forecaster.forecast(past, 5)
    assert out.shape == (5, 37, 29)


def test_ensemble_members_differ_with_noise_and_repeat_with_seed(events):
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    cfg = dataclasses.replace(TINY_MODEL, noise_channels=2)
    torch.manual_seed(0)
    generator = Generator(cfg)
    for scale in generator.scales:  # a non-zero head, so that noise reaches the output
        torch.nn.init.normal_(scale.head.weight, std=0.1)
    forecaster = GANForecaster(generator, Normalisation(), device="cpu")
    past = events["syn0"].isel(time=slice(0, 4))
    ens = forecaster.forecast(past, 3, members=3, seed=7)
    assert ens.dims == ("member", "time", "y", "x") and ens.sizes["member"] == 3
    assert not np.allclose(ens.values[0], ens.values[1], equal_nan=True)
    np.testing.assert_array_equal(ens.values, forecaster.forecast(past, 3, members=3, seed=7).values)


def test_corrupt_artifact_is_refused(tmp_path, events):
    cfg = tiny_experiment(steps=2)
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    folder = export_run(tmp_path / "run", "tiny-gan", models_dir=tmp_path / "models")
    with (folder / "weights.pt").open("ab") as fh:
        fh.write(b"garbage")
    from nowcast.errors import UnreadableFileError

    with pytest.raises(UnreadableFileError, match="checksum"):
        get_forecaster("tiny-gan", models_dir=tmp_path / "models")


@pytest.mark.slow
def test_two_process_ddp_training_step(tmp_path, tiny_train_config):
    config = tiny_train_config("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nowcast.cli", "train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert records[-1]["step"] == 2 and records[-1]["world_size"] == 2
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 2


def test_balanced_lp_weights_missed_heavy_rain_more_than_false_alarms():
    from nowcast.transforms import Normalisation

    norm = Normalisation()
    heavy = torch.from_numpy(norm.encode(np.full((1, 1, 1, 2, 2), 20.0, dtype=np.float32)))
    dry = torch.zeros_like(heavy)
    mask = torch.ones_like(heavy)
    cfg = LossConfig(lambda_adv=0, lambda_gdl=0, lambda_csi=0, rain_weight_thresholds_mmh=(2.0, 10.0),
                     rain_weights=(2.0, 10.0))
    missed, _ = generator_loss([dry], heavy, mask, cfg, normalisation=norm)
    false_alarm, _ = generator_loss([heavy], dry, mask, cfg, normalisation=norm)
    assert missed.item() == pytest.approx(10.0 * false_alarm.item())
    with pytest.raises(ValueError, match="same length"):
        LossConfig(rain_weight_thresholds_mmh=(1.0,), rain_weights=())


def test_noisy_forecast_of_a_sequence_does_not_depend_on_its_batch(events):
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    cfg = dataclasses.replace(TINY_MODEL, noise_channels=2)
    torch.manual_seed(0)
    generator = Generator(cfg)
    for scale in generator.scales:
        torch.nn.init.normal_(scale.head.weight, std=0.1)
    forecaster = GANForecaster(generator, Normalisation(), device="cpu")
    a = events["syn0"].values[:4][None]
    b = events["syn1"].values[:4][None]
    alone = forecaster.predict(a, 3, seed=5)
    batched = forecaster.predict(np.concatenate([b, a]), 3, seed=5)
    np.testing.assert_allclose(batched[1], alone[0], rtol=1e-5, atol=1e-5)
    assert forecaster.batch_invariant


def test_training_patches_see_the_advection_the_forecaster_computes(events):
    """Advection over the whole grid, then cut: no dry inflow from a patch's own edges."""
    from nowcast.gan.advection import advect
    from nowcast.gan.data import EventSamples
    from nowcast.motion import lucas_kanade_coarse

    cfg = tiny_experiment()
    samples = EventSamples("syn0", events["syn0"], cfg.model)
    past = events["syn0"].values[2:6]
    motion = torch.from_numpy(lucas_kanade_coarse(past, cfg.model.motion_downsample))[None]
    expected = advect(torch.from_numpy(np.nan_to_num(past[-1]))[None], motion, cfg.model.n_output)[0].numpy()
    advected, displacement, moved_past = samples.moved(2, 10, 20, 30, 40)
    np.testing.assert_allclose(advected, expected[:, 10:40, 20:60], rtol=1e-5, atol=1e-5)
    assert displacement.shape == (cfg.model.n_output, 2, 30, 40) and moved_past.shape == (4, 30, 40)
    np.testing.assert_allclose(moved_past[-1], np.nan_to_num(past[-1])[10:40, 20:60], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift_moves_past", [True, False])
def test_a_members_past_moves_along_its_shift_only_where_the_model_says(events, shift_moves_past):
    """``member_shift_moves_past``: the shift always moves a member's advection; its past frames follow
    the shift, or the estimated motion every member shares, the same in training patches and forecasts."""
    from nowcast.gan.data import EventSamples
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    model = dataclasses.replace(TINY_MODEL, noise_channels=2, member_motion_sigma=1.0,
                                member_shift_moves_past=shift_moves_past)
    samples = EventSamples("syn0", events["syn0"], model)
    still = samples.moved(2, 10, 20, 30, 40)
    shifted = samples.moved(2, 10, 20, 30, 40, shift=np.array([1.5, -1.0]))
    assert not np.allclose(shifted[0], still[0], atol=1e-3)
    assert np.allclose(shifted[2], still[2], atol=1e-5) is not shift_moves_past

    forecaster = GANForecaster(Generator(model), Normalisation(), device="cpu")
    past = events["syn0"].values[2:6][None]
    drift = forecaster._drift(torch.tensor([[1.5, -1.0], [-0.5, 2.0]]), 5.0, 0)
    inputs, _ = forecaster._conditioning(past, np.isfinite(past[:, -1]), draws=2, drift=drift)
    alone, _ = forecaster._conditioning(past, np.isfinite(past[:, -1]))
    assert not torch.allclose(inputs["advected"][0], inputs["advected"][1], atol=1e-3)
    for draw in inputs["lagrangian_past"]:
        assert torch.allclose(draw, alone["lagrangian_past"][0], atol=1e-5) is not shift_moves_past


def test_a_training_patch_is_conditioned_as_a_forecast_on_the_same_frames(events):
    """The advection, trajectories and moved past of a training patch are the forecaster's on the same
    frames, read at the patch: what the generator learns from is what it is given in forecasts."""
    from nowcast.gan.data import EventSamples
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    normalisation = Normalisation()
    samples = EventSamples("syn0", events["syn0"], TINY_MODEL)
    advected, displacement, moved_past = samples.moved(3, 10, 20, 30, 40)
    start = samples.starts[3]
    past = events["syn0"].values[start:start + TINY_MODEL.n_input][None]
    valid = np.isfinite(past[:, -1])
    forecaster = GANForecaster(Generator(TINY_MODEL), normalisation, device="cpu")
    inputs, _ = forecaster._conditioning(past, valid)
    patch = (slice(10, 40), slice(20, 60))
    torch.testing.assert_close(inputs["displacement"][0][(..., *patch)], torch.from_numpy(displacement))
    torch.testing.assert_close(inputs["lagrangian_past"][0, :, 0][(..., *patch)],
                               normalisation.encode(torch.from_numpy(moved_past)))
    observed = torch.from_numpy(valid[0][patch])
    torch.testing.assert_close(inputs["advected"][0, :, 0][(..., *patch)],
                               normalisation.encode(torch.from_numpy(advected) * observed))


def _translated(shift: tuple[int, int], frames: int = 8, size: int = 48) -> np.ndarray:
    """A rain field moving ``shift`` = (dy, dx) whole pixels per step, (frames, size, size) mm/h."""
    field = synthetic_sequence(SyntheticRain(ny=size, nx=size, frames=1), seed=5).values[0]
    return np.stack([np.roll(field, (shift[0] * t, shift[1] * t), axis=(0, 1)) for t in range(frames)])


def test_lagrangian_past_lines_the_past_up_with_the_last_frame():
    """With the true motion, every past frame moved along it equals the last one away from the edges."""
    from nowcast.gan.advection import lagrangian_past, pixel_grid, trajectories

    frames = torch.from_numpy(_translated((1, 2))[:4])[None]
    velocity = torch.zeros(1, 2, 48, 48)
    velocity[:, 0], velocity[:, 1] = 2.0, 1.0  # (x, y) pixels per step
    points = pixel_grid(1, 48, 48)
    displacement = trajectories(velocity, 3, points)
    torch.testing.assert_close(displacement[0, 2, :, 5, 5], torch.tensor([-6.0, -3.0]))
    moved = lagrangian_past(frames, displacement, points)[0]
    inner = (slice(None), slice(8, -8), slice(8, -8))
    torch.testing.assert_close(moved[inner], frames[0, -1:].expand(4, -1, -1)[inner], rtol=0, atol=1e-5)
    assert not torch.allclose(frames[0][inner], frames[0, -1:].expand(4, -1, -1)[inner])  # they moved


@pytest.mark.parametrize("k,flip", [(1, False), (2, True), (3, False), (0, True)])
def test_augmented_displacements_still_point_at_the_source(k, flip):
    """Rotating and flipping a crop turns its trajectory vectors with it."""
    from nowcast.gan.advection import along, pixel_grid, trajectories
    from nowcast.gan.data import Crop

    size = 40
    rain = torch.from_numpy(_translated((0, 0), frames=1, size=size))
    velocity = torch.zeros(1, 2, size, size)
    velocity[:, 0], velocity[:, 1] = 1.5, -0.75
    points = pixel_grid(1, size, size)
    displacement = trajectories(velocity, 3, points)
    advected = along(rain, displacement, points)
    crop = Crop(np.zeros((5, size, size), np.float32), advected[0].numpy(), displacement[0].numpy(),
                rain.numpy().repeat(4, 0))
    turned = crop.augmented(k, flip)
    again = along(torch.from_numpy(turned.lagrangian_past[-1:]), torch.from_numpy(turned.displacement)[None],
                  points)[0].numpy()
    inner = (slice(None), slice(6, -6), slice(6, -6))
    np.testing.assert_allclose(again[inner], turned.advected[inner], atol=1e-4)


def test_lagrangian_generator_starts_as_advection_and_moves_its_correction(batch):
    generator = Generator(TINY_MODEL)
    predictions = generator(batch.past, batch.valid, **batch.conditioning())
    assert [tuple(p.shape) for p in predictions] == [(3, 5, 1, 8, 8), (3, 5, 1, 16, 16), (3, 5, 1, 32, 32)]
    assert torch.allclose(predictions[-1], batch.advected, atol=1e-6)  # zero heads: extrapolation
    with pytest.raises(ValueError, match="displacement"):
        generator(batch.past, batch.valid, batch.advected)
    for scale in generator.scales:  # a correction of +0.1 for every parcel, at the finest scale only
        torch.nn.init.zeros_(scale.head.bias)
    torch.nn.init.constant_(generator.scales[-1].head.bias, 0.1)
    correction = (generator(batch.past, batch.valid, **batch.conditioning())[-1] - batch.advected)
    # the correction lands where the advection carries a parcel that had data at the last frame
    from nowcast.gan.advection import warp

    source_valid = warp(batch.valid.expand_as(batch.advected), batch.displacement) > 0.999
    # (to the precision of interpolating along the trajectories)
    torch.testing.assert_close(correction[source_valid], torch.full_like(correction[source_valid], 0.1),
                               rtol=0, atol=1e-3)
    assert torch.all(correction[~source_valid].abs() < 0.1)
    assert (~source_valid).any() and source_valid.any()


def test_lagrangian_model_trains_exports_and_forecasts(tmp_path, events):
    """Losses fall on a fixed batch; a tiny trained model reproduces its forecast after export."""
    cfg = dataclasses.replace(tiny_experiment(steps=2), model=dataclasses.replace(
        TINY_MODEL, correction_deadzone_db=0.5, correction_db_per_step=0.5, envelope_db=10.0))
    source = SampleSource(load_events(["syn0"], cfg.model, cfg.data, events.__getitem__), cfg.data,
                          cfg.model, cfg.normalisation, seed=0)
    fixed = source.batch(3, step=0)
    torch.manual_seed(0)
    generator = Generator(TINY_MODEL)
    opt = torch.optim.Adam(generator.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = generator_loss(generator(fixed.past, fixed.valid, **fixed.conditioning()), fixed.future,
                                 fixed.future_mask, LossConfig(lambda_adv=0.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # slowly: a correction per parcel cannot move rain, only grow or decay it
    assert losses[-1] < 0.9 * losses[0]
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    export_run(tmp_path / "run", "tiny-lagrangian", models_dir=tmp_path / "models")
    forecaster = get_forecaster("tiny-lagrangian", models_dir=tmp_path / "models")
    past = events["syn2"].isel(time=slice(0, 6), y=slice(0, 37), x=slice(0, 29))  # padded to 40 x 32
    first = forecaster.forecast(past, 7)
    assert first.shape == (7, 37, 29) and np.nanmin(first.values) >= 0
    # no data where the last frame had none, and where the rain would come from there or from off the grid
    missing = np.isnan(past.values[-1])
    assert np.isnan(first.values[0])[missing].all() and np.isfinite(first.values[0])[~missing].mean() > 0.5
    again = get_forecaster("tiny-lagrangian@v1", models_dir=tmp_path / "models").forecast(past, 7)
    np.testing.assert_array_equal(first.values, again.values)


def test_soft_csi_loss_rewards_the_right_rain_area_and_ignores_no_data():
    from nowcast.gan.losses import soft_csi_loss

    target = torch.zeros(2, 3, 1, 16, 16)
    target[..., 4:10, 4:10] = 2.0  # one wet block, 36 pixels, every lead time
    mask = torch.ones_like(target)
    temperature = 0.01
    assert soft_csi_loss(target, target, mask, [1.0], temperature).item() == pytest.approx(0.0, abs=1e-4)
    dry = torch.zeros_like(target)
    assert soft_csi_loss(dry, target, mask, [1.0], temperature).item() == pytest.approx(1.0, abs=1e-4)
    shifted = torch.roll(target, 3, dims=-1)  # 18 of 36 pixels hit: CSI 18 / 54
    assert soft_csi_loss(shifted, target, mask, [1.0], temperature).item() == pytest.approx(1 - 1 / 3, abs=1e-3)
    masked = mask.clone()
    masked[..., 10:13] = 0.0  # the shifted block's false alarms fall on no-data
    assert soft_csi_loss(shifted, target, masked, [1.0], temperature).item() == pytest.approx(1 - 18 / 36, abs=1e-3)
    # a threshold nothing reaches has no CSI and adds nothing
    assert soft_csi_loss(shifted, target, mask, [1.0, 5.0], temperature).item() == pytest.approx(1 - 1 / 3, abs=1e-3)
    pred = shifted.clone().requires_grad_(True)
    soft_csi_loss(pred, target, mask, [1.0], 0.1).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_csi_term_enters_the_generator_loss_when_weighted(batch):
    torch.manual_seed(0)
    generator = Generator(TINY_MODEL)
    predictions = generator(batch.past, batch.valid, **batch.conditioning())
    plain, parts = generator_loss(predictions, batch.future, batch.future_mask, LossConfig(lambda_adv=0, lambda_csi=0))
    assert "g_csi" not in parts
    cfg = LossConfig(lambda_adv=0, lambda_csi=2.0)
    weighted, parts = generator_loss(predictions, batch.future, batch.future_mask, cfg)
    assert weighted.item() == pytest.approx(plain.item() + 2.0 * parts["g_csi"], rel=1e-5)
    with pytest.raises(ValueError, match="csi_temperature_db"):
        LossConfig(csi_temperature_db=0.0)


def test_coarse_motion_matches_the_extrapolation_baseline():
    """Sparse tracking at full resolution + coarse interpolation ≈ pysteps' dense Lucas–Kanade."""
    from nowcast.motion import lucas_kanade, lucas_kanade_coarse

    past = synthetic_sequence(SyntheticRain(ny=96, nx=128, frames=4, no_data_border=3), seed=4).values
    reference = lucas_kanade(past)
    assert np.abs(reference).mean() > 0.5  # the synthetic rain moves
    for stride in (1, 4):
        motion = lucas_kanade_coarse(past, stride)
        assert motion.shape == reference.shape and motion.dtype == np.float32
        tolerance = 1e-5 if stride == 1 else 0.05
        assert np.abs(motion - reference).mean() < tolerance
    assert not np.any(lucas_kanade_coarse(np.zeros((4, 32, 32), np.float32), 4))


def test_envelope_caps_the_forecast_near_the_advected_rain(batch):
    """With envelope_db, no pixel exceeds the local advected maximum + envelope_db, at any scale."""
    cfg = dataclasses.replace(TINY_MODEL, envelope_db=10.0, envelope_radius=2)
    torch.manual_seed(0)
    generator = Generator(cfg, scale_db=15.0)
    for scale in generator.scales:
        torch.nn.init.constant_(scale.head.bias, 5.0)  # a correction that wants +75 dB everywhere
    predictions = generator(batch.past, batch.valid, **batch.conditioning())
    finest = predictions[-1]
    pooled = torch.nn.functional.max_pool2d(batch.advected.flatten(0, 2)[:, None], 5, stride=1, padding=2)
    bound = pooled.reshape(finest.shape) + 10.0 / 15.0
    assert torch.all(finest <= bound + 1e-6)
    # the cap is what holds every parcel that has a correction (data at the last observation)
    from nowcast.gan.advection import warp

    corrected = warp(batch.valid.expand_as(batch.advected), batch.displacement) > 0.999
    assert torch.isclose(finest[corrected], bound[corrected]).float().mean() > 0.9
    unbounded = Generator(TINY_MODEL)
    unbounded.load_state_dict(generator.state_dict())
    assert unbounded(batch.past, batch.valid, **batch.conditioning())[-1].max() > finest.max() + 1.0
    with pytest.raises(ValueError, match="needs condition_on_advection"):
        ModelConfig(condition_on_advection=False, envelope_db=10.0)


def test_correction_limits_hold_at_every_scale_and_still_train(batch):
    """The dead zone zeroes small corrections, the per-step bound grows with lead, gradients pass."""
    from nowcast.gan.model import downsample

    torch.manual_seed(0)
    free = Generator(TINY_MODEL, scale_db=15.0)
    for scale in free.scales:
        torch.nn.init.normal_(scale.head.weight, std=0.05)
        torch.nn.init.normal_(scale.head.bias, std=0.5)
    raw = free(batch.past, batch.valid, **batch.conditioning())[-1] - batch.advected
    assert raw.abs().max() > 1.0  # corrections of more than 15 dB to limit

    def limited(**limits: float) -> Generator:
        generator = Generator(dataclasses.replace(TINY_MODEL, **limits), scale_db=15.0)
        generator.load_state_dict(free.state_dict())
        return generator

    dead_zone_only = limited(correction_deadzone_db=1000.0)(batch.past, batch.valid, **batch.conditioning())
    for prediction, factor in zip(dead_zone_only, free.factors(), strict=True):
        # nothing above the dead zone (the scales pool from each other: the same averages up to rounding)
        torch.testing.assert_close(prediction, downsample(batch.advected, factor), atol=1e-6, rtol=0)

    per_step = 0.5
    predictions = limited(correction_db_per_step=per_step)(batch.past, batch.valid, **batch.conditioning())
    for prediction, factor in zip(predictions, free.factors(), strict=True):
        correction = (prediction - downsample(batch.advected, factor)).abs().amax(dim=(0, 2, 3, 4))
        bound = per_step / 15.0 * torch.arange(1, TINY_MODEL.n_output + 1)
        assert torch.all(correction <= bound + 1e-6)
        # the bound is what holds the last lead (carried along the trajectories, a little smoothed)
        assert correction[-1] > 0.8 * bound[-1]

    dead = limited(correction_deadzone_db=3.0)
    corrected = dead(batch.past, batch.valid, **batch.conditioning())[-1] - batch.advected
    assert 0 < (corrected == 0).float().mean() < 1
    assert corrected.abs().max() <= raw.abs().max() - 3.0 / 15.0 + 1e-5

    # zero-initialised heads behind a dead zone still get gradients (straight-through)
    fresh = Generator(dataclasses.replace(TINY_MODEL, correction_deadzone_db=3.0, correction_db_per_step=0.5))
    (fresh(batch.past, batch.valid, **batch.conditioning())[-1] - batch.future).abs().mean().backward()
    assert all(scale.head.weight.grad.abs().sum() > 0 for scale in fresh.scales)
    with pytest.raises(ValueError, match="need condition_on_advection"):
        ModelConfig(condition_on_advection=False, envelope_db=0.0, correction_db_per_step=1.0)
    with pytest.raises(ValueError, match="must not be negative"):
        ModelConfig(correction_deadzone_db=-1.0)


def test_lead_basis_makes_each_scale_a_smooth_curve_in_the_lead(batch):
    """With lead_basis = 2 what a scale adds is a straight line over the leads, at every pixel."""
    from nowcast.gan.model import lead_projection

    projection = lead_projection(12, 3)
    torch.testing.assert_close(projection @ projection, projection, atol=1e-6, rtol=0)
    assert round(float(torch.trace(projection))) == 3
    quadratic = torch.linspace(-1, 1, 12) ** 2 - 0.3
    torch.testing.assert_close(projection @ quadratic, quadratic, atol=1e-6, rtol=0)

    plain = dataclasses.replace(TINY_MODEL, condition_on_advection=False)
    torch.manual_seed(0)
    free = Generator(plain)
    for scale in free.scales:
        torch.nn.init.normal_(scale.head.weight, std=0.05)
    smooth = Generator(dataclasses.replace(plain, lead_basis=2))
    smooth.load_state_dict(free.state_dict())  # the projection is not a weight: any model can start from another
    assert "lead_projection" not in smooth.state_dict()

    def curvature(generator: Generator) -> torch.Tensor:
        with torch.no_grad():
            # the paper's model adds to the last frame, the same at every lead: its change over the leads is the scales'
            return torch.diff(generator(batch.past, batch.valid)[-1], n=2, dim=1).abs().max()

    assert curvature(free) > 1e-2
    assert curvature(smooth) < 1e-5
    with pytest.raises(ValueError, match="lead_basis must be between 0"):
        ModelConfig(lead_basis=13)


def test_discriminator_warmup_trains_the_discriminators_alone_first(tmp_path, events):
    cfg = tiny_experiment(discriminator_warmup_steps=2, checkpoint_every=1, log_every=1)
    torch.manual_seed(cfg.train.seed)  # as the run builds them: G first, then D
    initial_g = Generator(cfg.model, scale_db=cfg.normalisation.scale_db).state_dict()
    initial_d = Discriminator(cfg.model, leads=cfg.loss.sharpness_leads).state_dict()
    train(cfg, tmp_path, loader=events.__getitem__, progress=False, stop_after=2)
    warm = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert all(torch.equal(warm["generator"][k], v) for k, v in initial_g.items())
    assert not all(torch.equal(warm["discriminator"][k], v) for k, v in initial_d.items())
    train(cfg, tmp_path, loader=events.__getitem__, progress=False, resume=True)
    done = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert not all(torch.equal(done["generator"][k], v) for k, v in initial_g.items())
    records = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert ["g_total" in r for r in records] == [False, False, True, True, True, True]
    assert all("d_loss" in r for r in records)


def test_continue_from_starts_a_run_from_another_runs_whole_game(tmp_path, events):
    first = tmp_path / "first"
    train(tiny_experiment(steps=4), first, loader=events.__getitem__, progress=False)
    before = torch.load(first / CHECKPOINT, weights_only=True)
    # zero learning rates: Adam's steps then move nothing, so what the run starts from is what it saves
    still = dict(steps=6, lr_generator=0.0, lr_discriminator=0.0, checkpoint_every=1)
    train(tiny_experiment(continue_from=str(first), **still), tmp_path / "continued", loader=events.__getitem__,
          progress=False, stop_after=2)
    continued = torch.load(tmp_path / "continued" / CHECKPOINT, weights_only=True)
    for part in ("generator", "discriminator"):
        assert all(torch.equal(continued[part][k], v) for k, v in before[part].items())
    # the optimisers' moments carried on: Adam counts the first run's steps and these two
    assert {float(s["step"]) for s in continued["opt_g"]["state"].values()} == {4.0 + 2.0}
    train(tiny_experiment(**still), tmp_path / "fresh", loader=events.__getitem__, progress=False, stop_after=2)
    fresh = torch.load(tmp_path / "fresh" / CHECKPOINT, weights_only=True)
    assert not all(torch.equal(fresh["discriminator"][k], v) for k, v in before["discriminator"].items())


def test_continue_from_refuses_what_it_cannot_continue(tmp_path, events):
    first = tmp_path / "first"
    train(tiny_experiment(steps=2), first, loader=events.__getitem__, progress=False)
    wider = dataclasses.replace(tiny_experiment(continue_from=str(first)),
                                model=dataclasses.replace(TINY_MODEL, discriminator_channels=(8, 8, 8)))
    with pytest.raises(config_io.ConfigError, match="its discriminator does not fit"):
        train(wider, tmp_path / "wider", loader=events.__getitem__, progress=False)
    with pytest.raises(config_io.ConfigError, match=r"no checkpoint\.pt there"):
        train(tiny_experiment(continue_from=str(tmp_path / "nothing")), tmp_path / "none",
              loader=events.__getitem__, progress=False)
    (tmp_path / "tensor").mkdir()
    torch.save(torch.zeros(3), tmp_path / "tensor" / CHECKPOINT)
    with pytest.raises(config_io.ConfigError, match="is not a training checkpoint"):
        train(tiny_experiment(continue_from=str(tmp_path / "tensor")), tmp_path / "from-tensor",
              loader=events.__getitem__, progress=False)
    with pytest.raises(ValueError, match="init_from and continue_from exclude each other"):
        TrainConfig(init_from="default-gan", continue_from=str(first))


def test_discriminator_warmup_delays_the_schedule_and_needs_a_discriminator():
    cfg = TrainConfig(steps=10, discriminator_warmup_steps=4, lr_schedule="cosine")
    assert [round(cfg.lr_factor(s), 6) for s in (0, 4, 7, 10)] == [1.0, 1.0, 0.5, 0.0]
    assert [cfg.trains_generator(s) for s in (3, 4)] == [False, True]
    with pytest.raises(ValueError, match="discriminator_warmup_steps must be in"):
        TrainConfig(steps=10, discriminator_warmup_steps=10)
    with pytest.raises(ValueError, match="needs an adversarial term"):
        ExperimentConfig(loss=LossConfig(lambda_adv=0.0), train=TrainConfig(discriminator_warmup_steps=1))


def test_cosine_schedule_decays_the_learning_rates_to_zero():
    cfg = TrainConfig(steps=10, lr_schedule="cosine")
    assert [round(cfg.lr_factor(s), 6) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    assert TrainConfig(steps=10, lr_schedule="constant").lr_factor(7) == 1.0
    with pytest.raises(ValueError, match="valid: constant, cosine"):
        TrainConfig(lr_schedule="step")


SHIPPED_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


@pytest.mark.parametrize("name,version", [(n, v) for n in artifacts.list_models(SHIPPED_MODELS)
                                          for v in artifacts.list_versions(n, SHIPPED_MODELS)])
def test_every_shipped_model_verifies_and_forecasts_sane_rain(name, version):
    """Each artifact under models/ passes its checksums and gives finite, non-negative, bounded rain."""
    forecaster = get_forecaster(name, version, models_dir=SHIPPED_MODELS, device="cpu")
    past = synthetic_sequence(SyntheticRain(ny=72, nx=88, frames=4, no_data_border=3), seed=11)
    forecast = forecaster.forecast(past, 12).values
    assert forecast.shape == (12, 72, 88)
    has_data = np.isfinite(past.values[-1])
    # no-data stays; where rain would come from no data (or from off the grid) the forecast has none either
    assert np.isnan(forecast[:, ~has_data]).all() and np.isfinite(forecast[:, has_data]).mean(axis=1).min() > 0.5
    finite = forecast[np.isfinite(forecast)]
    assert finite.min() >= 0.0
    # a 4-frame past peaking at this many mm/h cannot justify an order of magnitude more
    assert finite.max() < 30.0 * float(np.nanmax(past.values)), (name, version, finite.max())


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


# configs/retrain/ holds the retraining job's configs (tests/test_retrain.py loads them)
@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.toml") if p.parent.name != "retrain"),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path):
    cfg = config_io.load(ExperimentConfig, path)
    assert cfg.name == path.stem


@pytest.mark.parametrize(("model", "twin"), [("default-gan.toml", "lp-only.toml"),
                                             ("ablation/paper-gan.toml", "ablation/paper-lp.toml"),
                                             ("ablation/lagrangian-gan.toml", "ablation/lagrangian-lp.toml"),
                                             ("ablation/lagrangian-gan-adv05.toml", "ablation/lagrangian-lp.toml"),
                                             ("ablation/default-gan-csi2.toml", "ablation/lp-only-csi2.toml"),
                                             ("ensemble-gan.toml", "ensemble-crps.toml"),
                                             ("ablation/ensemble-gan-v2.toml", "ablation/ensemble-crps-v2.toml")])
def test_lp_only_twins_differ_only_in_the_adversarial_and_gdl_terms(model, twin):
    """The sharpness claim compares like with like: same generator, data and optimisation.

    Settings that only post-process drawn members (after the generator, never in training)
    may differ: a retuned version adds them to its model's weights.
    """
    gan, lp = (config_io.load(ExperimentConfig, CONFIGS / name) for name in (model, twin))
    assert gan.loss.lambda_adv > 0 and gan.loss.lambda_gdl > 0
    assert lp.loss.lambda_adv == 0 and lp.loss.lambda_gdl == 0
    same_loss = dataclasses.replace(lp.loss, lambda_adv=gan.loss.lambda_adv, lambda_gdl=gan.loss.lambda_gdl)
    same_members = dataclasses.replace(lp.model, **{k: getattr(gan.model, k)
                                                    for k in (*MEMBER_POSTPROCESSING, *MEAN_SETTINGS,
                                                              *PRODUCT_SETTINGS)})
    assert dataclasses.replace(lp, name=gan.name, loss=same_loss, model=same_members) == gan


def test_the_weight_average_ablation_differs_from_the_default_in_that_alone():
    default, ema = (config_io.load(ExperimentConfig, CONFIGS / name)
                    for name in ("default-gan.toml", "ablation/default-gan-ema.toml"))
    assert ema.train.ema_decay > 0 == default.train.ema_decay
    assert dataclasses.replace(ema, name=default.name, train=dataclasses.replace(ema.train, ema_decay=0.0)) == default


def test_correction_limits_left_out_of_training_act_in_eval_mode_only(tmp_path, events, batch):
    """Limits off in training: the same weights as a model without them, limited once exported."""
    limited_model = dataclasses.replace(TINY_MODEL, correction_deadzone_db=1000.0, correction_db_per_step=0.5)
    runs = {}
    for name, model, in_training in (("free", TINY_MODEL, True), ("after", limited_model, False)):
        cfg = dataclasses.replace(tiny_experiment(steps=3, correction_limits_in_training=in_training), model=model)
        train(cfg, tmp_path / name, loader=events.__getitem__, progress=False)
        runs[name] = torch.load(tmp_path / name / CHECKPOINT, weights_only=True)["generator"]
    for key, value in runs["free"].items():
        torch.testing.assert_close(runs["after"][key], value, rtol=0, atol=0)
    generator = Generator(limited_model)
    generator.load_state_dict(runs["after"])
    generator.limits_in_training = False
    assert not torch.equal(generator.train()(batch.past, batch.valid, **batch.conditioning())[-1], batch.advected)
    # a dead zone of 1000 dB leaves nothing but the advection in eval mode
    assert torch.equal(generator.eval()(batch.past, batch.valid, **batch.conditioning())[-1], batch.advected)


def test_the_defaults_build_the_shipped_model():
    """ExperimentConfig() is the recipe of default-gan: its config file and its artifact's model."""
    assert config_io.load(ExperimentConfig, CONFIGS / "default-gan.toml") == ExperimentConfig()
    shipped = json.loads((Path(SHIPPED_MODELS) / "default-gan" / "v6" / "config.json").read_text())
    from nowcast.gan.config import upgrade_model_config

    assert config_io.from_dict(ModelConfig, upgrade_model_config(shipped["model"], where="v6")) == ModelConfig()


def test_configs_of_removed_generators_are_refused_by_name():
    from nowcast.config import ConfigError
    from nowcast.gan.config import upgrade_model_config

    assert upgrade_model_config({"correction_frame": "lagrangian", "n_input": 4}, where="x") == {"n_input": 4}
    with pytest.raises(ConfigError, match="correction_frame = 'eulerian' was removed"):
        upgrade_model_config({"correction_frame": "eulerian"}, where="x")
    with pytest.raises(ConfigError, match="motion_estimation = 'downsampled_frames' was removed"):
        upgrade_model_config({"motion_estimation": "downsampled_frames"}, where="x")
    # a model without advection never used either
    assert upgrade_model_config({"condition_on_advection": False, "correction_frame": "eulerian"}, where="x") == {
        "condition_on_advection": False}


def test_fair_crps_is_the_ensemble_score_it_claims():
    from nowcast.gan.losses import fair_crps

    target = torch.tensor([[0.0, 1.0, 2.0]])
    mask = torch.ones_like(target)
    # members equal to the observation: no error, no spread
    assert fair_crps(target.expand(4, -1, -1), target, mask).item() == pytest.approx(0.0)
    # two members at y ± d: skill d, spread (2 pairs of |2d|) / (2·2·1) = d, fair CRPS 0 ... per pixel
    d = 0.5
    pair = torch.stack([target - d, target + d])
    assert fair_crps(pair, target, mask).item() == pytest.approx(d - 2 * (2 * d) / 4)
    # against numpy's direct formula on random members, with a mask
    rng = np.random.default_rng(0)
    members = rng.normal(size=(5, 2, 7)).astype(np.float32)
    observed = rng.normal(size=(2, 7)).astype(np.float32)
    valid = (rng.random((2, 7)) > 0.3).astype(np.float32)
    skill = np.abs(members - observed).mean(0)
    spread = np.abs(members[:, None] - members[None]).sum((0, 1)) / (2 * 5 * 4)
    expected = ((skill - spread) * valid).sum() / valid.sum()
    got = fair_crps(torch.from_numpy(members), torch.from_numpy(observed), torch.from_numpy(valid)).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_the_rate_crps_scores_the_finest_samples_in_mm_per_hour():
    """lambda_crps_rate adds the fair CRPS of the finest scale's samples decoded to mm/h, which
    weighs an error in a storm core far above the same error in dB in drizzle."""
    from nowcast.gan.losses import fair_crps, rate_crps
    from nowcast.transforms import Normalisation

    norm = Normalisation()
    gen = torch.Generator().manual_seed(3)
    target = torch.rand((2, 3, 1, 8, 8), generator=gen) * 2.0
    mask = (torch.rand((2, 3, 1, 8, 8), generator=gen) > 0.2).float()
    finest = (torch.rand((4 * 2, 3, 1, 8, 8), generator=gen) * 2.0).requires_grad_()
    coarse = torch.rand((4 * 2, 3, 1, 4, 4), generator=gen)
    expected = fair_crps(norm.decode(finest).reshape(4, 2, 3, 1, 8, 8), norm.decode(target), mask)
    assert rate_crps(finest, target, mask, norm, samples=4).item() == pytest.approx(expected.item(), rel=1e-6)
    storm, drizzle = torch.full((1, 1, 1, 2, 2), 1.5), torch.full((1, 1, 1, 2, 2), 0.5)
    twice = 10 * np.log10(2) / norm.scale_db  # each sample off by a factor of two
    ones = torch.ones_like(storm)
    assert (rate_crps(torch.cat([storm + twice] * 2), storm, ones, norm, 2)
            > 20 * rate_crps(torch.cat([drizzle + twice] * 2), drizzle, ones, norm, 2))

    plain = LossConfig(lambda_adv=0.0, lambda_lp=0.0, lambda_gdl=0.0, lambda_csi=0.0, samples=4, lambda_crps=1.0)
    with_rate = dataclasses.replace(plain, lambda_crps_rate=0.5)
    base, parts = generator_loss([coarse, finest], target, mask, plain, normalisation=norm, samples=4)
    both, parts_rate = generator_loss([coarse, finest], target, mask, with_rate, normalisation=norm, samples=4)
    assert "g_crps_rate" not in parts
    assert parts_rate["g_crps_rate"] == pytest.approx(expected.item(), rel=1e-6)
    assert both.item() == pytest.approx(base.item() + 0.5 * expected.item(), rel=1e-5)
    both.backward()
    assert torch.isfinite(finest.grad).all() and finest.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="lambda_crps_rate needs samples >= 2"):
        LossConfig(lambda_crps_rate=1.0)
    with pytest.raises(ValueError, match="lambda_crps_rate must not be negative"):
        LossConfig(samples=2, lambda_crps_rate=-1.0)


def test_the_sample_mean_term_scores_the_ensembles_mean_at_the_first_leads():
    """lambda_sample_mean adds the L1 error of the samples' mean over the first sample_mean_leads
    leads: two samples either side of the observation score 0 though each is wrong, and an error
    after those leads costs nothing; no-data pixels are left out."""
    from nowcast.gan.losses import sample_mean_error

    observed = torch.zeros((1, 3, 1, 4, 4))
    mask = torch.ones_like(observed)
    above, below = observed + 0.5, observed - 0.5
    assert sample_mean_error(torch.cat([above, below]), observed, mask, 2, 0).item() == pytest.approx(0.0)
    assert sample_mean_error(torch.cat([above, above]), observed, mask, 2, 0).item() == pytest.approx(0.5)
    late = observed.clone()
    late[:, 2] = 3.0  # wrong only at the third lead
    assert sample_mean_error(torch.cat([late, late]), observed, mask, 2, 2).item() == pytest.approx(0.0)
    assert sample_mean_error(torch.cat([late, late]), observed, mask, 2, 0).item() == pytest.approx(1.0)
    holes = mask.clone()
    holes[:, :, :, :2] = 0.0
    half_wrong = observed.clone()
    half_wrong[..., :2, :] = 2.0  # wrong only where there is no data
    assert sample_mean_error(torch.cat([half_wrong, half_wrong]), observed, holes, 2, 0).item() == pytest.approx(0.0)

    target = torch.rand((2, 3, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    finest = torch.rand((4 * 2, 3, 1, 8, 8), generator=torch.Generator().manual_seed(6)).requires_grad_()
    valid = torch.ones_like(target)
    plain = LossConfig(lambda_adv=0.0, lambda_lp=0.0, lambda_gdl=0.0, lambda_csi=0.0, samples=4, lambda_crps=1.0)
    with_mean = dataclasses.replace(plain, lambda_sample_mean=2.0, sample_mean_leads=2)
    base, parts = generator_loss([finest], target, valid, plain, samples=4)
    both, parts_mean = generator_loss([finest], target, valid, with_mean, samples=4)
    expected = (finest.reshape(4, 2, 3, 1, 8, 8).mean(0)[:, :2] - target[:, :2]).abs().mean()
    assert "g_sample_mean" not in parts
    assert parts_mean["g_sample_mean"] == pytest.approx(expected.item(), rel=1e-5)
    assert both.item() == pytest.approx(base.item() + 2.0 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="lambda_sample_mean needs samples >= 2"):
        LossConfig(lambda_sample_mean=1.0)
    with pytest.raises(ValueError, match="sample_mean_leads must be 0"):
        LossConfig(samples=2, lambda_sample_mean=1.0, sample_mean_leads=-1)


def test_the_wet_area_crps_scores_the_samples_wet_fraction_in_squares():
    """lambda_wet_area adds the fair CRPS of the samples' wet fraction in squares: samples whose
    rain covers the observed area score lower than samples twice as wet, though per pixel the
    swollen ones are barely worse; no-data pixels count in neither fraction."""
    from nowcast.gan.losses import wet_fraction_crps
    from nowcast.transforms import Normalisation

    norm = Normalisation()
    z = float(norm.encode(np.float64(1.0)))
    wet, dry = z + 1.0, z - 1.0
    observed = torch.full((1, 2, 1, 4, 4), dry)
    observed[..., :, :1] = wet  # a quarter of every square wet
    mask = torch.ones_like(observed)
    right = observed.clone()
    swollen = observed.clone()
    swollen[..., :, :2] = wet
    temperature = 0.01

    def score(*samples: torch.Tensor) -> float:
        return wet_fraction_crps(torch.cat(samples), observed, mask, [z], temperature, 2, len(samples)).item()

    assert score(right, right) == pytest.approx(0.0, abs=1e-6)
    # squares of the first two columns: observed 1/2 wet, swollen samples 1; the others 0 in all
    assert score(swollen, swollen) == pytest.approx(0.25)
    # by hand, fractions {1/2, 1, 1} against 1/2: mean error 1/3 less half the mean pair distance 1/6
    assert score(right, swollen, swollen) == pytest.approx((1 / 3 - 1 / 6) / 2)
    # no-data pixels leave both fractions (top-left square: 2 of 3 valid observed wet, the samples 3
    # of 3); a square with none leaves the mean: (1/3 + 1/2 + 0) / 3 squares
    holes = mask.clone()
    holes[..., 0, 1] = 0.0
    holes[..., 2:, 2:] = 0.0
    got = wet_fraction_crps(torch.cat([swollen, swollen]), observed, holes, [z], temperature, 2, 2)
    assert got.item() == pytest.approx((1 / 3 + 1 / 2) / 3, abs=1e-5)

    target = torch.rand((2, 3, 1, 8, 8), generator=torch.Generator().manual_seed(5)) * 2.0
    finest = (torch.rand((4 * 2, 3, 1, 8, 8), generator=torch.Generator().manual_seed(6)) * 2.0).requires_grad_()
    valid = torch.ones_like(target)
    plain = LossConfig(lambda_adv=0.0, lambda_lp=0.0, lambda_gdl=0.0, lambda_csi=0.0, samples=4, lambda_crps=1.0)
    with_area = dataclasses.replace(plain, lambda_wet_area=3.0, wet_area_window=4)
    base, parts = generator_loss([finest], target, valid, plain, normalisation=norm, samples=4)
    both, parts_area = generator_loss([finest], target, valid, with_area, normalisation=norm, samples=4)
    expected = wet_fraction_crps(finest, target, valid, [z], 1.0 / norm.scale_db, 4, 4)
    assert "g_wet_area" not in parts
    assert parts_area["g_wet_area"] == pytest.approx(expected.item(), rel=1e-6)
    assert both.item() == pytest.approx(base.item() + 3.0 * expected.item(), rel=1e-5)
    expected.backward()
    assert torch.isfinite(finest.grad).all() and finest.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="lambda_wet_area needs samples >= 2"):
        LossConfig(lambda_wet_area=1.0)
    with pytest.raises(ValueError, match="wet_area_window must be at least 1"):
        LossConfig(samples=2, lambda_wet_area=1.0, wet_area_window=0)
    with pytest.raises(ValueError, match="lambda_wet_area > 0 needs wet_area_thresholds_mmh"):
        LossConfig(samples=2, lambda_wet_area=1.0, wet_area_thresholds_mmh=())


def test_a_tiny_ensemble_trains_on_several_samples_per_input(tmp_path, events):
    model = dataclasses.replace(TINY_MODEL, noise_channels=2)
    cfg = dataclasses.replace(tiny_experiment(steps=2), model=model,
                              loss=LossConfig(lambda_lp=0.0, lambda_csi=0.0, samples=3, lambda_crps=1.0))
    last = train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    assert np.isfinite(last["g_crps"]) and last["g_crps"] > 0
    with pytest.raises(ValueError, match="lambda_crps needs samples >= 2"):
        LossConfig(lambda_crps=1.0)


def test_training_draws_each_advect_along_their_own_shifted_motion(events):
    """draws > 1: every patch again, sample-major, on the same frames and turns, each draw's
    advection traced through the motion shifted by its own vector, reproducibly."""
    from nowcast.gan.data import EventSamples

    model = dataclasses.replace(TINY_MODEL, noise_channels=2, member_motion_kmh=6.0)
    cfg = dataclasses.replace(tiny_experiment(), model=model)
    loaded = [EventSamples(n, events[n], model) for n in ("syn0", "syn1")]
    assert loaded[0].member_motion_pixels == pytest.approx(0.5)  # 6 km/h on a 1 km, 5-min grid
    source = SampleSource(loaded, cfg.data, model, cfg.normalisation, seed=0)
    once, drawn = source.batch(3, step=4), source.batch(3, step=4, draws=4)
    assert len(drawn) == 12
    for k in range(4):
        rows = slice(3 * k, 3 * k + 3)
        for name in ("past", "valid", "future", "future_mask"):
            assert torch.equal(getattr(drawn, name)[rows], getattr(once, name)), name
    advected = drawn.advected.reshape(4, 3, *drawn.advected.shape[1:])
    assert all(not torch.equal(advected[0], advected[k]) for k in range(1, 4))
    again = source.batch(3, step=4, draws=4)
    assert all(torch.equal(getattr(drawn, f), getattr(again, f)) for f in drawn.FIELDS)
    still = SampleSource([EventSamples("syn0", events["syn0"], TINY_MODEL)], cfg.data, TINY_MODEL,
                         cfg.normalisation, seed=0)
    unshifted = still.batch(2, step=1, draws=2)  # no member motion: the draws are copies
    assert torch.equal(unshifted.advected[:2], unshifted.advected[2:])


def test_a_tiny_ensemble_trains_with_member_motion_in_the_loop(tmp_path, events):
    model = dataclasses.replace(TINY_MODEL, noise_channels=2, member_motion_kmh=6.0)
    loss = LossConfig(lambda_lp=0.0, lambda_csi=0.0, samples=3, lambda_crps=1.0)
    base = tiny_experiment(steps=2)
    in_the_loop = dataclasses.replace(base.train, member_motion=True)
    cfg = dataclasses.replace(base, model=model, loss=loss, train=in_the_loop)
    last = train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    assert np.isfinite(last["g_crps"]) and last["g_crps"] > 0
    with pytest.raises(ValueError, match=r"needs loss\.samples >= 2"):
        dataclasses.replace(base, model=model, train=in_the_loop)
    with pytest.raises(ValueError, match=r"needs model\.member_motion_kmh"):
        dataclasses.replace(base, loss=loss, train=in_the_loop)


def test_fine_tuning_starts_from_a_trained_generator_with_noise_inputs_added(tmp_path, events):
    from nowcast.gan.train import initialise_from

    cfg = tiny_experiment(steps=2)
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    folder = export_run(tmp_path / "run", "tiny-gan", models_dir=tmp_path / "models")
    trained = torch.load(folder / "weights.pt", weights_only=True)
    noisy = Generator(dataclasses.replace(TINY_MODEL, noise_channels=2))
    torch.manual_seed(0)
    initialise_from(noisy, str(folder))
    state = noisy.state_dict()
    first = "scales.0.body.0.weight"
    old_channels = trained[first].shape[1]
    torch.testing.assert_close(state[first][:, :old_channels], trained[first])
    assert 0 < state[first][:, old_channels:].abs().max() < 0.1  # the noise inputs start small, not zero
    torch.testing.assert_close(state["scales.2.head.weight"], trained["scales.2.head.weight"])
    louder = Generator(dataclasses.replace(TINY_MODEL, noise_channels=2))
    torch.manual_seed(0)
    initialise_from(louder, str(folder), extra_std=0.1)
    torch.testing.assert_close(louder.state_dict()[first][:, old_channels:], state[first][:, old_channels:] * 10)
    with pytest.raises(ValueError, match="init_noise_std must not be negative"):
        TrainConfig(init_noise_std=-0.1)
    from nowcast.config import ConfigError

    with pytest.raises(ConfigError, match="has shape"):
        initialise_from(Generator(dataclasses.replace(TINY_MODEL, generator_channels=(4, 4, 4))), str(folder))


def test_members_share_one_motion_and_do_not_depend_on_batching_or_chunks(events):
    """The same seed gives the same members, alone or batched, in one generator call or in many."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    generator = Generator(dataclasses.replace(TINY_MODEL, noise_channels=2))
    for scale in generator.scales:
        torch.nn.init.normal_(scale.head.weight, std=0.05)
    forecaster = GANForecaster(generator, Normalisation(), device="cpu")
    first = events["syn0"].values[2:6][None]
    second = events["syn1"].values[2:6][None]
    alone = forecaster.predict(first, 7, members=3, seed=5)
    batched = forecaster.predict(np.concatenate([second, first]), 7, members=3, seed=5)
    forecaster.max_call_pixels = 64 * 64  # one member of one sequence per generator call
    chunked = forecaster.predict(first, 7, members=3, seed=5)
    assert alone.shape == (1, 3, 7, 64, 64)
    np.testing.assert_allclose(batched[1], alone[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked, alone, rtol=1e-5, atol=1e-5)
    assert np.nanmean(np.nanstd(alone[0], axis=0)) > 0  # the members differ
    np.testing.assert_array_equal(forecaster.predict(first, 7, members=3, seed=5), chunked)
    assert not np.allclose(forecaster.predict(first, 7, members=3, seed=6), alone, equal_nan=True)


def test_member_motion_shifts_are_the_members_own(events):
    """With member_motion_sigma each member moves its rain along its own shifted motion, reproducibly;
    member k is the same whether 2 or 4 members are asked for, and the one forecast is unshifted."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    config = dataclasses.replace(TINY_MODEL, noise_channels=2, member_motion_sigma=1.0)
    forecaster = GANForecaster(Generator(config), Normalisation(), device="cpu")
    past = events["syn0"].values[2:6][None]
    four = forecaster.predict(past, 7, members=4, seed=3)
    two = forecaster.predict(past, 7, members=2, seed=3)
    np.testing.assert_allclose(two[0], four[0, :2], rtol=1e-5, atol=1e-5)
    # zero-initialised heads: a member is its own advection, so the members differ only by where rain goes
    assert not np.allclose(four[0, 0], four[0, 1], equal_nan=True)
    still = GANForecaster(Generator(dataclasses.replace(config, member_motion_sigma=0.0)), Normalisation(),
                          device="cpu")
    unshifted = still.predict(past, 7, members=2, seed=3)
    np.testing.assert_allclose(unshifted[0, 0], unshifted[0, 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forecaster.predict(past, 7), still.predict(past, 7), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="member_motion_sigma needs condition_on_advection"):
        ModelConfig(condition_on_advection=False, envelope_db=0.0, correction_deadzone_db=0.0,
                    correction_db_per_step=0.0, member_motion_sigma=0.5)


def _centroid(frame: np.ndarray) -> np.ndarray:
    weights = np.nan_to_num(frame)
    ys, xs = np.mgrid[:frame.shape[0], :frame.shape[1]]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


@pytest.mark.parametrize("growth", [1.0, 0.5])
def test_members_drift_as_far_as_member_motion_growth_says_in_every_pass(growth):
    """A member's rain drifts by its shift times K·(n/K)^growth after n steps (K: steps in an hour),
    also after the first pass of ``n_output`` steps, where motion is estimated again from the
    member's own frames (which already hold its shift, so it is not added twice)."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    config = dataclasses.replace(TINY_MODEL, noise_channels=2, member_motion_sigma=1.0, member_motion_growth=growth)
    forecaster = GANForecaster(Generator(config), Normalisation(), device="cpu")  # zero heads: members advect
    ys, xs = np.mgrid[:128, :128]
    blob = (20 * np.exp(-((ys - 64) ** 2 + (xs - 64) ** 2) / (2 * 6.0 ** 2))).astype(np.float32)
    steps = 2 * config.n_output
    members = forecaster.predict(np.repeat(blob[None, None], 4, axis=1), steps, members=2, seed=1)[0]
    shifts = forecaster._motion_offsets(forecaster._noise_sources(1, 2, 1), 1.0).numpy()
    per_hour = 12.0  # the default spacing's 5-min steps
    expected = per_hour * (np.arange(1, steps + 1) / per_hour) ** growth
    for member, shift in zip(members, shifts, strict=True):
        drift = np.array([_centroid(frame) - 64.0 for frame in member])
        along_shift = drift @ shift / (shift @ shift)
        np.testing.assert_allclose(along_shift, expected, rtol=0.08)
    profile = config.member_motion_profile(5.0, 24)
    assert profile.sum() == pytest.approx(24 * (24 / 12) ** (growth - 1))
    np.testing.assert_allclose(np.concatenate([config.member_motion_profile(5.0, 12),
                                               config.member_motion_profile(5.0, 12, first_step=12)]), profile)
    with pytest.raises(ValueError, match="member_motion_growth"):
        dataclasses.replace(config, member_motion_growth=0.0)


def test_member_motion_in_kmh_spreads_members_as_far_on_every_grid(events):
    """member_motion_kmh is a distance per hour: the same members on a 1 km, 5-min grid as member_motion_sigma
    of 0.5 px per step, and 2.4 times that shift on a 500 m, 6-min grid."""
    from nowcast.forecasters.base import Spacing
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    in_kmh = dataclasses.replace(TINY_MODEL, noise_channels=2, member_motion_kmh=6.0)
    generator = Generator(in_kmh)
    forecaster = GANForecaster(generator, Normalisation(), device="cpu")
    in_pixels = GANForecaster(Generator(dataclasses.replace(in_kmh, member_motion_kmh=0.0, member_motion_sigma=0.5)),
                              Normalisation(), device="cpu")
    in_pixels.generator.load_state_dict(generator.state_dict())
    past = events["syn0"].values[2:6][None]
    reference = Spacing(pixel_km=1.0, step_minutes=5.0)
    np.testing.assert_allclose(forecaster.predict(past, 5, members=3, seed=1, spacing=reference),
                               in_pixels.predict(past, 5, members=3, seed=1, spacing=reference), rtol=1e-5, atol=1e-5)
    assert forecaster.member_motion_pixels(Spacing(pixel_km=0.5, step_minutes=6.0)) == pytest.approx(1.2)
    assert in_pixels.member_motion_pixels(Spacing(pixel_km=0.5, step_minutes=6.0)) == 0.5
    fine = forecaster.predict(past, 5, members=3, seed=1, spacing=Spacing(pixel_km=0.5, step_minutes=6.0))
    assert not np.allclose(fine, forecaster.predict(past, 5, members=3, seed=1, spacing=reference), equal_nan=True)
    with pytest.raises(ValueError, match="not both"):
        dataclasses.replace(in_kmh, member_motion_sigma=0.5)


def test_member_intensity_multiplies_each_member_by_its_own_lognormal_field(events):
    """member_intensity_db: each member's rates times exp(σ·ε - σ²/2), ε a smooth unit field that evolves with the
    lead; mean 1, the asked spread in dB, dry stays dry, no data stays no data, one forecast untouched, and a member
    the same whatever it is drawn or batched with."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    plain_config = dataclasses.replace(TINY_MODEL, noise_channels=2)
    plain = GANForecaster(Generator(plain_config), Normalisation(), device="cpu")  # zero heads: members advect
    perturbed = GANForecaster(Generator(dataclasses.replace(plain_config, member_intensity_db=2.0)), Normalisation(),
                              device="cpu")
    past = events["syn0"].values[2:6].copy()[None]
    past[0, -1, :5] = np.nan
    base = plain.predict(past, 7, members=4, seed=3)
    four = perturbed.predict(past, 7, members=4, seed=3)
    wet = base > 0.5
    db = 10 * np.log10(four[wet] / base[wet])
    assert db.std() == pytest.approx(2.0, rel=0.15)
    assert (four[wet] / base[wet]).mean() == pytest.approx(1.0, abs=0.08)
    np.testing.assert_array_equal(four[base == 0], 0.0)
    np.testing.assert_array_equal(np.isnan(four), np.isnan(base))
    ratio = np.where(wet, 10 * np.log10(np.where(wet, four, 1) / np.where(wet, base, 1)), np.nan)
    both = wet[0, :, :-1] & wet[0, :, 1:]  # consecutive leads of every member, where both are wet
    step_correlation = np.corrcoef(ratio[0, :, :-1][both], ratio[0, :, 1:][both])[0, 1]
    assert step_correlation == pytest.approx(np.exp(-5.0 / 45.0), abs=0.08)
    np.testing.assert_allclose(perturbed.predict(past, 7, members=2, seed=3)[0], four[0, :2], rtol=1e-5)
    batched = perturbed.predict(np.concatenate([events["syn1"].values[2:6][None], past]), 7, members=4, seed=3)
    np.testing.assert_allclose(batched[1], four[0], rtol=1e-5)
    np.testing.assert_array_equal(perturbed.predict(past, 7), plain.predict(past, 7))
    with pytest.raises(ValueError, match="member_intensity_db"):
        dataclasses.replace(plain_config, member_intensity_db=-1.0)
    with pytest.raises(ValueError, match="member_intensity_km"):
        dataclasses.replace(plain_config, member_intensity_km=0.0)


def test_the_intensity_fields_separable_filter_is_conv2ds_valid_correlation():
    """The members' intensity fields are filtered as shifted sums: the same numbers as conv2d along x then y, for
    kernels of any length, on any number of fields, and a field of ones stays ones under a normalised kernel."""
    import torch.nn.functional as F

    from nowcast.gan.forecaster import _gaussian_kernel, _separable_filter

    generator = torch.Generator().manual_seed(0)
    for sigma, shape in [(0.3, (1, 1, 9, 11)), (2.0, (12, 1, 40, 33)), (4.5, (3, 1, 64, 70))]:
        kernel = _gaussian_kernel(sigma, torch.device("cpu"))
        fields = torch.randn(shape, generator=generator)
        before = fields.clone()
        expected = F.conv2d(F.conv2d(fields, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
        filtered = _separable_filter(fields, kernel)
        assert filtered.shape == expected.shape == (shape[0], 1, shape[2] - len(kernel) + 1, shape[3] - len(kernel) + 1)
        torch.testing.assert_close(filtered, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(_separable_filter(torch.ones(shape), kernel), torch.ones(expected.shape))
        assert torch.equal(fields, before)  # the input is left as it was
    asymmetric = torch.tensor([0.2, 0.5, 0.3])
    fields = torch.randn((2, 1, 8, 9), generator=generator)
    torch.testing.assert_close(_separable_filter(fields, asymmetric),
                               F.conv2d(F.conv2d(fields, asymmetric.view(1, 1, 1, -1)), asymmetric.view(1, 1, -1, 1)))


def test_member_spread_gain_scales_wet_members_log_rates_about_their_mean(events):
    """member_spread_gain_start/_end: at each pixel and lead, wet members' log rates move about their mean by a gain
    linear in the lead (start at 0 min, end at 60 min, held after); dry stays dry, wet stays wet, no data stays no
    data, and one forecast is untouched. member_spread_gain_minutes/member_spread_gain: the gain read from a table
    instead; refused with the line, or with gains out of range; the card says which."""
    from nowcast.gan.export import _default_description
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    # zero heads: members advect; the log-normal field makes them differ
    varied_config = dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0)
    varied = GANForecaster(Generator(varied_config), Normalisation(), device="cpu")
    gained_config = dataclasses.replace(varied_config, member_spread_gain_start=1.5, member_spread_gain_end=0.5)
    gained = GANForecaster(Generator(gained_config), Normalisation(), device="cpu")
    past = events["syn0"].values[2:6].copy()[None]
    past[0, -1, :5] = np.nan
    base = varied.predict(past, 14, members=4, seed=3)[0]
    spread = gained.predict(past, 14, members=4, seed=3)[0]
    gains = [1.5 - min(5.0 * k / 60.0, 1.0) for k in range(1, 15)]
    assert gained_config.member_spread_gains(5.0, 14) == pytest.approx(gains)
    all_wet = np.all(base >= 0.1, axis=0)
    assert all_wet[0].sum() > 100 and all_wet[-1].sum() > 100
    for lead, gain in enumerate(gains):
        logs = np.log(base[:, lead][:, all_wet[lead]].astype(np.float64))
        centre = logs.mean(axis=0)
        expected = np.clip(np.exp(centre + gain * (logs - centre)), 0.1, None)
        np.testing.assert_allclose(spread[:, lead][:, all_wet[lead]], expected, rtol=1e-4)
    np.testing.assert_array_equal(spread[base == 0], 0.0)
    assert np.all(spread[base >= 0.1] >= 0.1)
    np.testing.assert_array_equal(np.isnan(spread), np.isnan(base))
    np.testing.assert_array_equal(gained.predict(past, 7), varied.predict(past, 7))
    for bad in (0.0, 3.5):
        with pytest.raises(ValueError, match="member_spread_gain_end"):
            dataclasses.replace(varied_config, member_spread_gain_end=bad)
    # a table by lead in place of the line: the same line drawn as a table draws the same members
    tabled = varied.with_member_settings(member_spread_gain_minutes=(5.0, 60.0),
                                         member_spread_gain=(1.5 - 5.0 / 60.0, 0.5))
    np.testing.assert_allclose(tabled.predict(past, 14, members=4, seed=3)[0], spread, rtol=1e-6)
    bent = dataclasses.replace(varied_config, member_spread_gain_minutes=(5.0, 10.0, 60.0),
                               member_spread_gain=(1.0, 1.2, 0.7))
    # linear between the table's leads (1.2 at +10 min to 0.7 at +60), held after
    expected = [1.0] + [1.3 - 0.05 * k for k in range(2, 13)] + [0.7] * 2
    assert bent.member_spread_gains(5.0, 14) == pytest.approx(expected)
    assert ("spread about their mean by 1 at 5 min, 1.2 at 10 min, 0.7 at 60 min"
            in _default_description(dataclasses.replace(tiny_experiment(), model=bent)))
    assert bent.spreads_members and not dataclasses.replace(bent, member_spread_gain=(1.0, 1.0, 1.0)).spreads_members
    for bad, words in (({"member_spread_gain": (1.0, 1.2)}, "one gain in member_spread_gain per lead"),
                       ({"member_spread_gain": (1.0, 0.0, 1.0)}, "member_spread_gain: each gain"),
                       ({"member_spread_gain_start": 1.25}, "set one of them")):
        with pytest.raises(ValueError, match=words):
            dataclasses.replace(bent, **bad)


def test_members_move_towards_sprog_by_the_weight_of_the_lead(events):
    """member_sprog_weight: each member's dBR moves by w times S-PROG's dBR less the members' mean dBR, w read
    from the table at the lead; at w = 1 the wet members' mean dBR is S-PROG's and the members keep their
    differences; at w = 0 nothing changes; no data stays no data; one forecast is untouched."""
    from nowcast.forecasters import get_forecaster
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    drawn_config = dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0)
    drawn = GANForecaster(Generator(drawn_config), Normalisation(), device="cpu")
    moved_config = dataclasses.replace(drawn_config, member_sprog_weight_minutes=(10.0, 15.0),
                                       member_sprog_weight=(1.0, 0.0))
    moved = drawn.with_member_settings(member_sprog_weight_minutes=(10.0, 15.0), member_sprog_weight=(1.0, 0.0))
    assert moved_config.member_sprog_weights(5.0, 4) == [1.0, 1.0, 0.0, 0.0]  # held before, linear between
    past = events["syn0"].values[2:6].copy()[None]
    past[0, -1, :5] = np.nan
    base = drawn.predict(past, 4, members=4, seed=3)[0]
    out = moved.predict(past, 4, members=4, seed=3)[0]
    sprog = get_forecaster("sprog").predict(past[:, 1:], 4)[0]

    def db(rates):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(rates >= 0.1, 10 * np.log10(rates), -15.0)

    for lead in (0, 1):
        wet = np.all(out[:, lead] >= 0.1, axis=0) & np.all(base[:, lead] >= 0.1, axis=0) & (sprog[lead] >= 0.1)
        assert wet.sum() > 100
        np.testing.assert_allclose(db(out[:, lead]).mean(axis=0)[wet], db(sprog[lead])[wet], atol=1e-3)
        np.testing.assert_allclose((db(out[:, lead]) - db(out[0, lead]))[:, wet],
                                   (db(base[:, lead]) - db(base[0, lead]))[:, wet], atol=1e-3)
        assert not np.allclose(out[:, lead], base[:, lead], equal_nan=True)
    np.testing.assert_array_equal(out[:, 2:], base[:, 2:])
    np.testing.assert_array_equal(np.isnan(out), np.isnan(base))
    np.testing.assert_array_equal(moved.predict(past, 4), drawn.predict(past, 4))
    for bad in ({"member_sprog_weight": (1.5, 0.0)}, {"member_sprog_weight": (1.0,)},
                {"member_sprog_weight_minutes": (15.0, 10.0)}, {"n_input": 2}):
        with pytest.raises(ValueError, match="member_sprog_weight"):
            dataclasses.replace(moved_config, **bad)


def test_fit_spread_gain_scores_each_candidate_as_the_model_forecasts_with_it(tmp_path, events, monkeypatch):
    """fit_spread_gain draws each start time's members once with no adjustment and applies every candidate
    offline: a candidate's CRPS is the CRPS of the same model forecasting with that gain (the model's other
    adjustments applied once, after the gain, as in a forecast); wider gains late give a higher spread/skill
    late; the best has the lowest CRPS; `nowcast fit-spread-gain --register` registers it; bad input is refused
    by name."""
    from typer.testing import CliRunner

    from nowcast import spread_gain
    from nowcast.cli import EXIT_USER_ERROR, app
    from nowcast.spread_gain import fit_spread_gain, gain_settings
    from nowcast.verification import crps_sums

    cfg = dataclasses.replace(tiny_experiment(steps=2), model=dataclasses.replace(TINY_MODEL, noise_channels=2))
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    models = tmp_path / "models"
    export_run(tmp_path / "run", "tiny-gan", models_dir=models)
    # the log-normal field makes the members differ; matching runs after the gain, as in predict, on the first
    # two leads only, so each lead scored on its own must know how far into the forecast it is; the rate map and
    # the extrapolation's area follow the gain too, once each
    retune_version("tiny-gan@v1", {"member_intensity_db": 3.0, "member_matching": "pooled",
                                   "member_matching_minutes": 10.0, "member_rate_map_mmh": (1.0,),
                                   "member_rate_map_minutes": (5.0,), "member_rate_map": ((0.5,),),
                                   "member_rate_map_last": True, "member_area_mmh": (2.0,),
                                   "member_spread_gain_minutes": (5.0,), "member_spread_gain": (2.0,)},
                   models_dir=models)
    names = ["syn0", "syn1"]
    fit = fit_spread_gain("tiny-gan@v2", names, starts=(1.0, 1.5), ends=(0.5, 1.0), members=4, steps=6, stride=4,
                          seed=7, loader=events.__getitem__, models_dir=models)
    assert fit.candidates == ((1.0, 0.5), (1.0, 1.0), (1.5, 0.5), (1.5, 1.0))
    assert fit.start_times == {"syn0": 2, "syn1": 2} and fit.crps.shape == (4, 2, 6)
    retune_version("tiny-gan@v2", gain_settings(1.5, 0.5), models_dir=models)  # the line replaces v2's table
    online = get_forecaster("tiny-gan@v3", models_dir=models)
    for e, name in enumerate(names):
        sums = np.zeros((6, 2))
        for k, index in enumerate((0, 4)):
            members = online.forecast(events[name].isel(time=slice(index, index + 4)), 6, members=4,
                                      seed=7 + k).values
            observed = events[name].values[index + 4:index + 10]
            for lead in range(6):
                valid = np.isfinite(observed[lead]) & np.all(np.isfinite(members[:, lead]), axis=0)
                sums[lead] += (crps_sums(members[:, lead][:, valid], observed[lead][valid]), valid.sum())
        np.testing.assert_allclose(fit.crps[2, e], sums[:, 0] / sums[:, 1], rtol=1e-5)
    assert np.all(fit.spread_skill[1, 3:] > fit.spread_skill[0, 3:])
    assert fit.best == fit.candidates[int(np.argmin(fit.score))]
    assert fit.to_dict()["best"] == list(fit.best)
    written = fit.to_dict()["candidates"][2]
    np.testing.assert_allclose(written["crps_per_event_per_lead"]["syn1"], fit.crps[2, 1])
    assert written["crps_per_event"]["syn1"] == pytest.approx(np.nanmean(fit.crps[2, 1]))
    monkeypatch.setattr(spread_gain, "fit_spread_gain", lambda model, event_ids, **kwargs: fit)
    out = tmp_path / "fit.json"
    result = CliRunner().invoke(app, ["-q", "fit-spread-gain", "tiny-gan@v2", "--events", "mch-20160711",
                                      "--register", "--out", str(out), "--models-dir", str(models)])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip().splitlines()[-1]) == models / "tiny-gan" / "v4"
    assert "syn0" in result.stdout and "s/s lead 6" in result.stdout  # the whole table, even in a pipe
    registered = get_forecaster("tiny-gan@v4", models_dir=models).model_config
    assert (registered.member_spread_gain_start, registered.member_spread_gain_end) == fit.best
    assert "fitted on syn0, syn1" in artifacts.card("tiny-gan", "v4", models)["description"]
    assert json.loads(out.read_text())["best"] == list(fit.best)
    refused = CliRunner().invoke(app, ["-q", "fit-spread-gain", "tiny-gan@v2", "--events", "mch-20160711",
                                       "--starts", "1,wide", "--models-dir", str(models)])
    assert refused.exit_code == EXIT_USER_ERROR and "--starts" in refused.output
    with pytest.raises(InputError, match="draws no ensemble members"):
        fit_spread_gain("persistence", names, members=4, steps=6, stride=4, loader=events.__getitem__)
    for bad in ({"starts": (0.0,)}, {"ends": (3.5,)}, {"ends": ()}, {"members": 1}):
        with pytest.raises(InputError):
            fit_spread_gain("tiny-gan@v2", names, **{"steps": 6, "stride": 4, "loader": events.__getitem__,
                                                     "models_dir": models, **bad})


def test_a_fitted_neighbourhood_registered_with_the_model_processes_its_probability_products(tmp_path, events,
                                                                                              monkeypatch):
    """`nowcast fit-neighbourhood --register` makes the best rate the model's next version: the same members, and
    probability products processed with it where a request names no neighbourhood (0 still gives the raw ones)."""
    from typer.testing import CliRunner

    from nowcast import cli, neighbourhood_fit
    from nowcast.cli import EXIT_USER_ERROR, app
    from nowcast.neighbourhood_fit import NeighbourhoodFit
    from nowcast.products import ProductRequest, ensemble_products

    cfg = dataclasses.replace(tiny_experiment(steps=2), model=dataclasses.replace(TINY_MODEL, noise_channels=2))
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    models = tmp_path / "models"
    export_run(tmp_path / "run", "tiny-gan", models_dir=models)
    # 1.5 km per minute lowers the Brier score most on both events
    brier = np.array([0.03, 0.02, 0.025])[:, None, None, None] * np.ones((3, 2, 5, 1))
    fit = NeighbourhoodFit("tiny-gan@v1", ("syn0", "syn1"), (0.0, 1.5, 3.0), (1.0,), brier, {"syn0": 2, "syn1": 2}, 4)
    monkeypatch.setattr(neighbourhood_fit, "fit_neighbourhood", lambda model, event_ids, **kwargs: fit)
    monkeypatch.setattr(cli, "_catalogue_events", lambda *args, **kwargs: (["syn0", "syn1"], events.__getitem__))
    result = CliRunner().invoke(app, ["-q", "fit-neighbourhood", "tiny-gan@v1", "--events", "syn0,syn1",
                                      "--register", "--models-dir", str(models)])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip().splitlines()[-1]) == models / "tiny-gan" / "v2"
    assert "fitted on syn0, syn1" in artifacts.card("tiny-gan", "v2", models)["description"]
    source, fitted = (get_forecaster(f"tiny-gan@{v}", models_dir=models) for v in ("v1", "v2"))
    assert fitted.probability_neighbourhood_km_per_minute == 1.5
    assert fitted.describe()["probability_neighbourhood_km_per_minute"] == 1.5
    past = events["syn0"].isel(time=slice(0, 4))
    members = {name: model.forecast(past, 5, members=4, seed=2) for name, model in (("v1", source), ("v2", fitted))}
    np.testing.assert_array_equal(members["v1"].values, members["v2"].values)
    assert "probability_neighbourhood_km_per_minute" not in fitted.forecast(past, 5).attrs
    for asked, expected in ((None, 1.5), (0.0, 0.0), (0.5, 0.5)):
        request = ProductRequest(("probabilities",), (1.0,), neighbourhood=asked)
        same = ensemble_products(members["v1"], ProductRequest(("probabilities",), (1.0,), neighbourhood=expected))
        np.testing.assert_array_equal(ensemble_products(members["v2"], request)["probabilities"].values,
                                      same["probabilities"].values)
    refused = CliRunner().invoke(app, ["-q", "fit-neighbourhood", "steps", "--events", "syn0", "--register"])
    assert refused.exit_code == EXIT_USER_ERROR and "no registered GAN ensemble" in refused.output
    with pytest.raises(ValueError, match="probability_neighbourhood_km_per_minute"):
        dataclasses.replace(TINY_MODEL, probability_neighbourhood_km_per_minute=-1.0)


def _fraction_at_least(values: np.ndarray, threshold: float) -> float:
    finite = values[np.isfinite(values)]
    return float(np.mean(finite >= threshold))


@pytest.mark.parametrize("mode", ["each", "pooled"])
def test_member_matching_gives_wet_pixels_the_last_frames_rates_of_the_same_exceedance(events, mode):
    """member_matching: the k-th wettest of n valid pixels (of each member, or of all members pooled) takes the rate
    the last observed frame exceeds on a fraction k/n of its pixels; order kept, wet area never grows, dry and no
    data untouched, one forecast untouched."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    varied_config = dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0)
    varied = GANForecaster(Generator(varied_config), Normalisation(), device="cpu")
    matched_config = dataclasses.replace(varied_config, member_matching=mode)
    matching = GANForecaster(Generator(matched_config), Normalisation(), device="cpu")
    past = events["syn0"].values[2:6].copy()[None]
    past[0, -1, :5] = np.nan
    base = varied.predict(past, 6, members=4, seed=3)[0]
    matched = matching.predict(past, 6, members=4, seed=3)[0]
    last = past[0, -1]
    np.testing.assert_array_equal(np.isnan(matched), np.isnan(base))
    dry = base < 0.1
    np.testing.assert_array_equal(matched[dry], base[dry])
    observed_values = set(last[np.isfinite(last)].tolist())
    for lead in range(6):
        groups = [matched[:, lead]] if mode == "pooled" else list(matched[:, lead:lead + 1])
        sources = [base[:, lead]] if mode == "pooled" else list(base[:, lead:lead + 1])
        for after, before in zip(groups, sources, strict=True):
            wet = before >= 0.1
            assert set(after[wet].tolist()) <= observed_values
            # wettest first, equal rates in the order of their pixels, as the matching ranks them
            in_order = after[wet][np.argsort(-before[wet], kind="stable")]
            assert np.all(np.diff(in_order) <= 0)
            rounding = 1.0 / np.isfinite(before).sum() + 1.0 / np.isfinite(last).sum()
            for threshold in (0.5, 2.0, 5.0):
                wanted = min(_fraction_at_least(last, threshold), _fraction_at_least(before, 0.1))
                assert abs(_fraction_at_least(after, threshold) - wanted) <= rounding
    wet_fractions = [_fraction_at_least(member[-1], 0.1) for member in matched]
    if mode == "pooled":  # members keep their differences; only their ensemble fits the observed rain
        assert len(set(wet_fractions)) > 1
    np.testing.assert_array_equal(matching.predict(past, 6), varied.predict(past, 6))
    with pytest.raises(ValueError, match="member_matching 'sideways': one of none, each, pooled"):
        dataclasses.replace(varied_config, member_matching="sideways")


def test_member_matching_minutes_matches_only_the_first_leads(events):
    """member_matching_minutes: the leads up to that many minutes are matched as with matching at every lead, the
    later ones left as drawn; a slice of leads that starts later in the forecast counts them from its start."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    base_config = dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0)
    generator = Generator(base_config)

    def drawn(**settings):
        forecaster = GANForecaster(generator, Normalisation(), device="cpu")
        return forecaster.with_member_settings(**settings).predict(past, 6, members=4, seed=3)[0]

    past = events["syn0"].values[2:6].copy()[None]
    unmatched = drawn()
    everywhere = drawn(member_matching="each")
    first_ten = drawn(member_matching="each", member_matching_minutes=10.0)  # 5-min steps: two leads
    np.testing.assert_array_equal(first_ten[:, :2], everywhere[:, :2])
    np.testing.assert_array_equal(first_ten[:, 2:], unmatched[:, 2:])
    assert not np.array_equal(everywhere[:, :2], unmatched[:, :2])
    config = dataclasses.replace(base_config, member_matching="each", member_matching_minutes=10.0)
    assert config.matched_leads(5.0, 12) == [0, 1] and config.matched_leads(6.0, 12) == [0]
    assert config.matched_leads(5.0, 4, first_step=1) == [0] and config.matched_leads(5.0, 4, first_step=2) == []
    assert dataclasses.replace(config, member_matching="none").matched_leads(5.0, 12) == []
    for minutes in (-5.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="member_matching_minutes must be a non-negative number"):
            dataclasses.replace(config, member_matching_minutes=minutes)


def test_a_models_mean_neighbourhood_places_the_probability_matched_mean_of_its_ensembles(events):
    """mean_neighbourhood_km_per_minute travels with an ensemble forecast (never with one forecast, never from
    the input) and places its probability-matched mean; the members are the same; bad values are refused."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.products import probability_matched_mean_of
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    forecaster = GANForecaster(Generator(dataclasses.replace(TINY_MODEL, noise_channels=2)), Normalisation(),
                               device="cpu")
    placed = forecaster.with_member_settings(mean_neighbourhood_km_per_minute=0.6)
    past = events["syn0"].isel(time=slice(2, 6)).assign_attrs(mean_neighbourhood_km_per_minute=9.0)
    plain_members, placed_members = (f.forecast(past, 5, members=4, seed=3) for f in (forecaster, placed))
    np.testing.assert_array_equal(plain_members.values, placed_members.values)
    assert placed_members.attrs["mean_neighbourhood_km_per_minute"] == 0.6
    assert "mean_neighbourhood_km_per_minute" not in plain_members.attrs
    assert "mean_neighbourhood_km_per_minute" not in placed.forecast(past, 5).attrs
    assert placed.describe()["mean_neighbourhood_km_per_minute"] == 0.6
    assert not np.array_equal(probability_matched_mean_of(placed_members), probability_matched_mean_of(plain_members),
                              equal_nan=True)
    for bad in (-0.1, 11.0):
        with pytest.raises(ValueError, match="mean_neighbourhood_km_per_minute must be in"):
            dataclasses.replace(TINY_MODEL, mean_neighbourhood_km_per_minute=bad)


def test_a_models_mean_sprog_weight_places_the_probability_matched_mean_by_members_moved_further(events):
    """mean_sprog_weight: an ensemble forecast carries, as its mean_placement coordinate, the mean of its
    members moved towards S-PROG by the table's weights (what member_sprog_weight would have drawn), and its
    probability-matched mean takes its ranks from it; the members are the same; one forecast carries none;
    bad tables are refused."""
    from nowcast.ensemble import ensemble_mean, probability_matched_mean
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.products import PLACEMENT_COORD, ProductRequest, ensemble_products, probability_matched_mean_of
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    forecaster = GANForecaster(Generator(dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0)),
                               Normalisation(), device="cpu")
    table = {"minutes": (10.0, 15.0), "weights": (1.0, 0.0)}
    placed = forecaster.with_member_settings(mean_sprog_weight_minutes=table["minutes"],
                                             mean_sprog_weight=table["weights"])
    moved = forecaster.with_member_settings(member_sprog_weight_minutes=table["minutes"],
                                            member_sprog_weight=table["weights"])
    past = events["syn0"].isel(time=slice(2, 6))
    plain_members, placed_members, moved_members = (f.forecast(past, 4, members=4, seed=3)
                                                    for f in (forecaster, placed, moved))
    np.testing.assert_array_equal(plain_members.values, placed_members.values)
    assert PLACEMENT_COORD not in plain_members.coords and PLACEMENT_COORD not in placed.forecast(past, 4).coords
    placement = placed_members[PLACEMENT_COORD]
    assert placement.dims == ("time", "y", "x")
    np.testing.assert_allclose(placement.values, ensemble_mean(moved_members.values), rtol=1e-6)
    assert not np.allclose(placement.values[:2], ensemble_mean(plain_members.values)[:2])
    np.testing.assert_array_equal(placement.values[2:], ensemble_mean(plain_members.values)[2:])
    matched = probability_matched_mean_of(placed_members)
    np.testing.assert_array_equal(matched, probability_matched_mean(placed_members.values,
                                                                    placement=placement.values))
    assert not np.array_equal(matched[:2], probability_matched_mean_of(plain_members)[:2], equal_nan=True)
    products = ensemble_products(placed_members, ProductRequest(products=("pm_mean", "members")))
    np.testing.assert_array_equal(products["pm_mean"].values, matched)
    assert PLACEMENT_COORD not in products.coords
    for bad in ({"mean_sprog_weight": (1.5, 0.0)}, {"mean_sprog_weight": (1.0,)},
                {"mean_sprog_weight_minutes": (15.0, 10.0)}):
        with pytest.raises(ValueError, match="mean_sprog_weight"):
            dataclasses.replace(placed.model_config, **bad)


def test_a_models_mean_outline_places_the_probability_matched_means_light_rain_and_no_member(events):
    """mean_outline_sprog_weight / mean_core_mmh: an ensemble forecast carries, as its probability_matched_mean
    coordinate, the mean placed as before above the core rate and, below it, by the members moved towards S-PROG
    by the outline's weights (the core rate in the mean's final rates, after any mean_rate_map); products take
    it; the members are the same; one forecast carries none; the two settings are refused one without the other;
    the card says so."""
    from nowcast.ensemble import core_and_outline, ensemble_mean, probability_matched_mean
    from nowcast.gan.export import _default_description
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.products import MEAN_COORD, ProductRequest, ensemble_products, probability_matched_mean_of
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    placed = GANForecaster(Generator(dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0,
                                                         mean_sprog_weight_minutes=(10.0,), mean_sprog_weight=(0.5,))),
                           Normalisation(), device="cpu")
    outlined = placed.with_member_settings(mean_outline_sprog_weight_minutes=(5.0,), mean_outline_sprog_weight=(1.0,),
                                           mean_core_mmh=2.0)
    moved = placed.with_member_settings(member_sprog_weight_minutes=(5.0,), member_sprog_weight=(1.0,),
                                        mean_sprog_weight_minutes=(), mean_sprog_weight=())
    past = events["syn0"].isel(time=slice(2, 6))
    before, after, moved_members = (f.forecast(past, 4, members=4, seed=3) for f in (placed, outlined, moved))
    np.testing.assert_array_equal(before.values, after.values)
    assert MEAN_COORD not in before.coords and MEAN_COORD not in outlined.forecast(past, 4).coords
    core = probability_matched_mean_of(before)
    outline = probability_matched_mean(before.values, placement=ensemble_mean(moved_members.values))
    mean = probability_matched_mean_of(after)
    np.testing.assert_array_equal(mean, core_and_outline(core, outline, 2.0))
    heavy = core > 2.0
    assert heavy.any() and not np.array_equal(mean[~heavy], core[~heavy], equal_nan=True)
    np.testing.assert_array_equal(mean[heavy], core[heavy])
    products = ensemble_products(after, ProductRequest(products=("pm_mean",)))
    np.testing.assert_array_equal(products["pm_mean"].values, mean)
    # under a rate map of the mean the core is taken in the mapped rates: all the mean has above the core rate
    rate_map = {"mean_rate_map_mmh": (2.0,), "mean_rate_map_minutes": (5.0,), "mean_rate_map": ((1.5,),)}
    mapped_core = probability_matched_mean_of(placed.with_member_settings(**rate_map).forecast(past, 4, members=4,
                                                                                              seed=3))
    mapped = probability_matched_mean_of(outlined.with_member_settings(**rate_map).forecast(past, 4, members=4,
                                                                                           seed=3))
    heavy = mapped_core > 2.0
    assert (heavy & (core <= 2.0)).any()  # the map lifts some of the core's rates over the core rate
    np.testing.assert_array_equal(mapped > 2.0, heavy)
    np.testing.assert_array_equal(mapped[heavy], mapped_core[heavy])
    for bad in ({"mean_core_mmh": 0.0}, {"mean_outline_sprog_weight_minutes": (), "mean_outline_sprog_weight": ()},
                {"mean_core_mmh": float("nan")}):
        with pytest.raises(ValueError, match="mean_core_mmh"):
            dataclasses.replace(outlined.model_config, **bad)
    with pytest.raises(ValueError, match="mean_outline_sprog_weight"):
        dataclasses.replace(outlined.model_config, mean_outline_sprog_weight=(1.5,))
    assert ("above 2 mm/h, and its lighter rain by the members' mean moved towards S-PROG (1 at 5 min)"
            in _default_description(dataclasses.replace(tiny_experiment(), model=outlined.model_config)))


def _fraction_above(members: np.ndarray, rate: float) -> np.ndarray:
    """The fraction of members (member, ...) with rain above ``rate``, NaN where none has data: computed here
    independently of nowcast.ensemble.exceedance_probability."""
    from nowcast.ensemble import ensemble_mean

    return ensemble_mean(np.where(np.isfinite(members), members > rate, np.nan))


def test_a_models_outline_order_blends_in_the_moved_members_probability_of_rain(events):
    """mean_outline_probability_*: the outline's order is the moved members' probability of rain above the rate
    blended by rank with their mean (weight 1: the probability's order, ties in the mean's); the core, the values
    and the members stay; a table of zeros changes nothing; refusals by name; the card says so."""
    from nowcast.ensemble import blended_order, core_and_outline, ensemble_mean
    from nowcast.gan.export import _default_description
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.products import probability_matched_mean_of
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    outlined = GANForecaster(Generator(dataclasses.replace(
        TINY_MODEL, noise_channels=2, member_intensity_db=3.0, mean_sprog_weight_minutes=(10.0,),
        mean_sprog_weight=(0.5,), mean_outline_sprog_weight_minutes=(5.0,), mean_outline_sprog_weight=(1.0,),
        mean_core_mmh=2.0)), Normalisation(), device="cpu")
    blend = {"mean_outline_probability_mmh": 0.5, "mean_outline_probability_weight_minutes": (5.0,)}
    blended = outlined.with_member_settings(**blend, mean_outline_probability_weight=(1.0,))
    moved = outlined.with_member_settings(member_sprog_weight_minutes=(5.0,), member_sprog_weight=(1.0,),
                                          mean_sprog_weight_minutes=(), mean_sprog_weight=(),
                                          mean_outline_sprog_weight_minutes=(), mean_outline_sprog_weight=(),
                                          mean_core_mmh=0.0)
    past = events["syn0"].isel(time=slice(2, 6))
    before, after, moved_members = (f.forecast(past, 4, members=4, seed=3) for f in (outlined, blended, moved))
    np.testing.assert_array_equal(before.values, after.values)
    core = probability_matched_mean_of(before.drop_vars("probability_matched_mean"))
    order = blended_order(_fraction_above(moved_members.values, 0.5), ensemble_mean(moved_members.values), 1.0)
    mean = probability_matched_mean_of(after)
    np.testing.assert_array_equal(mean, core_and_outline(core, order, 2.0))
    old = probability_matched_mean_of(before)
    heavy = core > 2.0
    np.testing.assert_array_equal(mean[heavy], old[heavy])
    assert not np.array_equal(mean[~heavy], old[~heavy], equal_nan=True)
    np.testing.assert_array_equal(np.sort(mean, axis=None), np.sort(old, axis=None))
    assert not np.array_equal(old, core_and_outline(core, order, 2.0), equal_nan=True)
    zeros = outlined.with_member_settings(**blend, mean_outline_probability_weight=(0.0,))
    np.testing.assert_array_equal(probability_matched_mean_of(zeros.forecast(past, 4, members=4, seed=3)), old)
    config = blended.model_config
    for bad, match in (({"mean_outline_probability_mmh": 0.0}, "go together"),
                       ({"mean_outline_probability_weight": (), "mean_outline_probability_weight_minutes": ()},
                        "go together"),
                       ({"mean_outline_probability_mmh": 2.0}, "below mean_core_mmh"),
                       ({"mean_outline_probability_weight": (1.5,)}, "in \\[0, 1\\]"),
                       ({"mean_outline_probability_weight_minutes": (5.0, 1.0),
                         "mean_outline_probability_weight": (1.0, 1.0)}, "increasing"),
                       ({"mean_outline_probability_mmh": float("nan")}, "non-negative")):
        with pytest.raises(ValueError, match=f"mean_outline_probability.*{match}"):
            dataclasses.replace(config, **bad)
    with pytest.raises(ValueError, match="orders the outline"):
        dataclasses.replace(outlined.model_config, mean_outline_sprog_weight_minutes=(), mean_outline_sprog_weight=(),
                            mean_core_mmh=0.0, **blend, mean_outline_probability_weight=(1.0,))
    assert ("in an order blended with their probability of rain above 0.5 mm/h (1 at 5 min)"
            in _default_description(dataclasses.replace(tiny_experiment(), model=config)))


def test_a_models_core_order_blends_in_the_placing_members_probability_of_heavy_rain(events):
    """mean_core_probability_*: which pixels make the probability-matched mean's core is decided by the placing
    (moved) members' probability of rain above mean_core_mmh blended by rank with their mean, the heaviest rain
    within it placed by their mean; its outline then orders its light rain as before; the values and the members
    stay; a table of zeros changes nothing; refusals by name; the card says so."""
    from nowcast.ensemble import blended_order, core_and_outline, core_in_order, ensemble_mean, placed_in_order
    from nowcast.gan.export import _default_description
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.products import probability_matched_mean_of
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    outlined = GANForecaster(Generator(dataclasses.replace(
        TINY_MODEL, noise_channels=2, member_intensity_db=3.0, mean_sprog_weight_minutes=(10.0,),
        mean_sprog_weight=(0.5,), mean_outline_sprog_weight_minutes=(5.0,), mean_outline_sprog_weight=(1.0,),
        mean_core_mmh=2.0, mean_outline_probability_mmh=0.5, mean_outline_probability_weight_minutes=(5.0,),
        mean_outline_probability_weight=(1.0,))), Normalisation(), device="cpu")
    cored = outlined.with_member_settings(mean_core_probability_weight_minutes=(5.0,),
                                          mean_core_probability_weight=(1.0,))
    unmoved = {"mean_sprog_weight_minutes": (), "mean_sprog_weight": (), "mean_outline_sprog_weight_minutes": (),
               "mean_outline_sprog_weight": (), "mean_core_mmh": 0.0, "mean_outline_probability_mmh": 0.0,
               "mean_outline_probability_weight_minutes": (), "mean_outline_probability_weight": ()}
    placing, outlining = (outlined.with_member_settings(**unmoved, member_sprog_weight_minutes=minutes,
                                                        member_sprog_weight=weight)
                          for minutes, weight in (((10.0,), (0.5,)), ((5.0,), (1.0,))))
    past = events["syn0"].isel(time=slice(2, 6))
    before, after, placed, outline = (f.forecast(past, 4, members=4, seed=3)
                                      for f in (outlined, cored, placing, outlining))
    np.testing.assert_array_equal(before.values, after.values)
    placed_mean = probability_matched_mean_of(before.drop_vars("probability_matched_mean"))
    outline_order = blended_order(_fraction_above(outline.values, 0.5), ensemble_mean(outline.values), 1.0)
    old = probability_matched_mean_of(before)
    np.testing.assert_array_equal(old, core_and_outline(placed_mean, outline_order, 2.0))
    placement = ensemble_mean(placed.values)
    core = core_in_order(placed_in_order(placed_mean, blended_order(_fraction_above(placed.values, 2.0), placement,
                                                                    1.0)), placement, 2.0)
    mean = probability_matched_mean_of(after)
    np.testing.assert_array_equal(mean, core_and_outline(core, outline_order, 2.0))
    assert not np.array_equal(mean, old, equal_nan=True)
    np.testing.assert_array_equal(np.sort(mean, axis=None), np.sort(old, axis=None))
    zeros = outlined.with_member_settings(mean_core_probability_weight_minutes=(5.0,),
                                          mean_core_probability_weight=(0.0,))
    np.testing.assert_array_equal(probability_matched_mean_of(zeros.forecast(past, 4, members=4, seed=3)), old)
    config = cored.model_config
    for bad, match in (({"mean_core_probability_weight": (1.5,)}, "in \\[0, 1\\]"),
                       ({"mean_core_probability_weight_minutes": (5.0, 1.0),
                         "mean_core_probability_weight": (1.0, 1.0)}, "increasing"),
                       ({"mean_core_probability_weight_minutes": ()}, "increasing"),
                       ({**unmoved}, "set the core's rate")):
        with pytest.raises(ValueError, match=f"mean_core_probability.*{match}"):
            dataclasses.replace(config, **bad)
    assert ("(which pixels lie above 2 mm/h blended by rank with their probability of rain above it: 1 at 5 min) "
            "above 2 mm/h, and its lighter rain"
            in _default_description(dataclasses.replace(tiny_experiment(), model=config)))


def test_a_models_mean_rate_map_maps_the_probability_matched_mean_and_no_member(events):
    """mean_rate_map: an ensemble forecast carries, as its probability_matched_mean coordinate, its members'
    probability-matched mean with its wet rates mapped per lead (dry and no-data pixels as they were); products and
    scores take it; the members are the same; one forecast carries none; bad tables are refused by name; the card
    says so."""
    from nowcast.ensemble import map_rates
    from nowcast.gan.export import _default_description
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.products import MEAN_COORD, ProductRequest, ensemble_products, probability_matched_mean_of
    from nowcast.sequence import MAX_RAIN_RATE_MMH
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    plain = GANForecaster(Generator(dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0,
                                                        mean_sprog_weight_minutes=(10.0,), mean_sprog_weight=(0.5,))),
                          Normalisation(), device="cpu")
    table = {"mean_rate_map_mmh": (1.0, 4.0), "mean_rate_map_minutes": (5.0, 15.0),
             "mean_rate_map": ((1.0, 4.0), (0.5, 2.0))}  # the identity at +5 min, doubled from +15 min
    mapped = plain.with_member_settings(**table)
    past = events["syn0"].copy()
    past.values[3, :4] = np.nan
    past = past.isel(time=slice(2, 6))
    before, after = (f.forecast(past, 4, members=4, seed=3) for f in (plain, mapped))
    np.testing.assert_array_equal(before.values, after.values)
    assert MEAN_COORD not in before.coords and MEAN_COORD not in mapped.forecast(past, 4).coords
    assert after[MEAN_COORD].dims == ("time", "y", "x")
    unmapped, mean = probability_matched_mean_of(before), probability_matched_mean_of(after)
    wet = unmapped >= plain.normalisation.threshold_mmh
    assert wet[0].any() and wet[3].any() and np.isnan(unmapped).any()
    np.testing.assert_array_equal(mean[~wet], unmapped[~wet])  # dry and no data stay so
    np.testing.assert_allclose(mean[0][wet[0]], unmapped[0][wet[0]], rtol=1e-6)
    doubled = np.clip(2 * unmapped[2:][wet[2:]], None, MAX_RAIN_RATE_MMH)
    np.testing.assert_allclose(mean[2:][wet[2:]], doubled, rtol=1e-5)
    expected = map_rates(unmapped[1][wet[1]], np.exp(np.log([[1.0, 4.0], [0.5, 2.0]]).mean(axis=0)), (1.0, 4.0))
    np.testing.assert_allclose(mean[1][wet[1]], expected, rtol=1e-5)  # +10 min: the rows halfway in log rate
    products = ensemble_products(after, ProductRequest(products=("pm_mean", "members")))
    np.testing.assert_array_equal(products["pm_mean"].values, mean)
    assert MEAN_COORD not in products.coords
    for bad in ({"mean_rate_map": ((1.0, 4.0),)}, {"mean_rate_map": ((4.0, 1.0), (1.0, 4.0))},
                {"mean_rate_map_mmh": (4.0, 1.0)}):
        with pytest.raises(ValueError, match="mean_rate_map"):
            dataclasses.replace(mapped.model_config, **bad)
    cfg = tiny_experiment()
    text = _default_description(dataclasses.replace(cfg, model=mapped.model_config))
    assert "the probability-matched mean's rates mapped per lead so that its area above 1/4 mm/h" in text


def test_members_moved_towards_sprog_can_keep_their_own_rates(events):
    """member_sprog_keeps_rates: each member keeps the rates it had before the move (the same values, sorted),
    placed in the order of the moved field; leads without a weight and no data are untouched."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    drawn = GANForecaster(Generator(dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0)),
                          Normalisation(), device="cpu")
    table = {"member_sprog_weight_minutes": (10.0, 15.0), "member_sprog_weight": (1.0, 0.0)}
    moved, kept = (drawn.with_member_settings(**table, member_sprog_keeps_rates=keep) for keep in (False, True))
    past = events["syn0"].values[2:6].copy()[None]
    past[0, -1, :5] = np.nan
    base, out_moved, out_kept = (f.predict(past, 4, members=4, seed=3)[0] for f in (drawn, moved, kept))
    for lead in (0, 1):
        for member in range(4):
            valid = np.isfinite(base[member, lead])
            np.testing.assert_array_equal(np.sort(out_kept[member, lead][valid]), np.sort(base[member, lead][valid]))
            order_moved = np.argsort(out_moved[member, lead][valid], kind="stable")
            wet_moved = out_moved[member, lead][valid] > 0
            # the kept rates rise where the moved ones do
            assert np.all(np.diff(out_kept[member, lead][valid][order_moved][wet_moved[order_moved]]) >= 0)
        assert not np.array_equal(out_kept[:, lead], base[:, lead], equal_nan=True)
        assert not np.allclose(out_kept[:, lead], out_moved[:, lead], equal_nan=True)
    np.testing.assert_array_equal(out_kept[:, 2:], base[:, 2:])
    np.testing.assert_array_equal(np.isnan(out_kept), np.isnan(base))


def test_members_are_the_same_on_one_thread_or_several(events):
    """The per-member steps that run on torch's threads (each member matched to the last frame, moved towards
    S-PROG keeping its rates or not, the map that sets their area, the spread gain a lead at a time) give the same
    members on one thread as on several, and so do the probability-matched mean's placement and the mean itself
    where its core's and outline's orders blend in the members' probability of rain."""
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.products import MEAN_COORD, PLACEMENT_COORD
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    generator = Generator(dataclasses.replace(
        TINY_MODEL, noise_channels=2, member_intensity_db=3.0, member_matching="each", member_matching_minutes=5.0,
        member_sprog_weight_minutes=(5.0, 15.0), member_sprog_weight=(0.5, 0.1), member_sprog_keeps_rates=True,
        member_area_mmh=(0.5, 1.0), member_spread_gain_minutes=(5.0, 20.0), member_spread_gain=(1.2, 0.8),
        mean_sprog_weight_minutes=(5.0, 20.0), mean_sprog_weight=(0.6, 0.2)))
    past = events["syn0"].isel(time=slice(2, 6)).copy()
    past.values[-1, :5] = np.nan
    threads = torch.get_num_threads()

    def on_one_thread_and_three(forecaster):
        try:
            torch.set_num_threads(1)
            alone = forecaster.forecast(past, 4, members=6, seed=3)
            torch.set_num_threads(3)
            return alone, forecaster.forecast(past, 4, members=6, seed=3)
        finally:
            torch.set_num_threads(threads)

    for keeps_rates in (True, False):
        alone, shared = on_one_thread_and_three(GANForecaster(generator, Normalisation(), device="cpu")
                                                .with_member_settings(member_sprog_keeps_rates=keeps_rates))
        np.testing.assert_array_equal(alone.values, shared.values)
        np.testing.assert_array_equal(alone[PLACEMENT_COORD].values, shared[PLACEMENT_COORD].values)
        assert np.isfinite(alone.values).any() and not np.array_equal(alone[0, 0], alone[1, 0], equal_nan=True)
    blended = GANForecaster(generator, Normalisation(), device="cpu").with_member_settings(
        mean_outline_sprog_weight_minutes=(5.0,), mean_outline_sprog_weight=(0.75,), mean_core_mmh=2.0,
        mean_core_probability_weight_minutes=(5.0, 20.0), mean_core_probability_weight=(0.5, 0.0),
        mean_outline_probability_mmh=0.5, mean_outline_probability_weight_minutes=(5.0,),
        mean_outline_probability_weight=(0.5,), mean_neighbourhood_km_per_minute=0.3)
    alone, shared = on_one_thread_and_three(blended)
    np.testing.assert_array_equal(alone[MEAN_COORD].values, shared[MEAN_COORD].values)
    assert np.isfinite(alone[MEAN_COORD].values).any()


def test_members_take_the_extrapolated_area_above_the_member_area_rates(events):
    """member_area_mmh: at the leads not matched to the last frame the members' pooled area above each rate is the
    extrapolation baseline's (to half a pixel of the pooled members), from one map of all members' rates: their
    order, dry pixels, no data and the rates from twice the highest up stay as drawn; matched leads are untouched;
    the extrapolation runs once per input; bad rates are refused by name; the card says so."""
    from nowcast.forecasters.extrapolation import Extrapolation
    from nowcast.gan.export import _default_description
    from nowcast.gan.forecaster import GANForecaster, RecentExtrapolation
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    drawn = GANForecaster(Generator(dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0,
                                                        member_matching="each", member_matching_minutes=5.0)),
                          Normalisation(), device="cpu")
    area = drawn.with_member_settings(member_area_mmh=(0.5, 1.0))
    past = events["syn0"].values[2:6].copy()[None]
    past[0, -1, :5] = np.nan
    base, out = (f.predict(past, 4, members=4, seed=3)[0] for f in (drawn, area))
    advected = Extrapolation().predict(past, 4)[0]
    wet_from = drawn.normalisation.threshold_mmh
    np.testing.assert_array_equal(out[:, 0], base[:, 0])  # matched to the last frame: its quantised rates kept
    for lead in (1, 2, 3):
        valid = np.isfinite(advected[lead]) & np.all(np.isfinite(out[:, lead]), axis=0)
        drawn_rates, rates = base[:, lead][:, valid].ravel(), out[:, lead][:, valid].ravel()
        for threshold in (0.5, 1.0):
            seen = (advected[lead][valid] > threshold).mean()
            assert 0 < seen < (drawn_rates >= wet_from).mean()  # an area the members can reach
            assert abs((rates > threshold).mean() - seen) <= 0.5 / rates.size
            assert abs((drawn_rates > threshold).mean() - seen) > 2 / rates.size  # the map moved it there
        order = np.argsort(drawn_rates, kind="stable")
        assert np.all(np.diff(rates[order]) >= 0)  # one monotonic map for all members
        wet = drawn_rates >= wet_from
        np.testing.assert_array_equal(rates[~wet], drawn_rates[~wet])
        assert rates[wet].min() >= wet_from
        heavy = drawn_rates >= 2.0
        np.testing.assert_allclose(rates[heavy], drawn_rates[heavy], rtol=1e-5)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(base))
    assert area._extrapolated is drawn._extrapolated and area._extrapolated.runs == 1  # shared; drawn ran none
    fewer = RecentExtrapolation().field(past[0], 2)  # a baseline's first leads whatever the lead count
    np.testing.assert_array_equal(fewer, advected[:2])
    for bad in ((1.0, 0.5), (0.0, 1.0), (float("nan"),)):
        with pytest.raises(ValueError, match="member_area_mmh"):
            dataclasses.replace(area.model_config, member_area_mmh=bad)
    text = _default_description(dataclasses.replace(tiny_experiment(), model=area.model_config))
    assert "the members' pooled area above 0.5/1 mm/h set to the extrapolated last frame's" in text


def test_member_area_ceiling_only_takes_back_area_the_members_have_past_the_extrapolation(events):
    """member_area_ceiling: a rate where the members have more area above it than the extrapolated last frame is
    capped there; one where they have less is left as drawn (here 1 mm/h is past the extrapolation's area at every
    unmatched lead and 0.5 mm/h short of it); a ceiling without rates is refused; the card says so."""
    from nowcast.forecasters.extrapolation import Extrapolation
    from nowcast.gan.export import _default_description
    from nowcast.gan.forecaster import GANForecaster
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    drawn = GANForecaster(Generator(dataclasses.replace(TINY_MODEL, noise_channels=2, member_intensity_db=3.0,
                                                        member_matching="each", member_matching_minutes=5.0)),
                          Normalisation(), device="cpu")
    capped = drawn.with_member_settings(member_area_mmh=(0.5, 1.0), member_area_ceiling=True)
    short_only = drawn.with_member_settings(member_area_mmh=(0.5,), member_area_ceiling=True)
    past = events["syn0"].values[2:6].copy()[None]
    past[0, -1, :5] = np.nan
    base, out, unchanged = (f.predict(past, 4, members=4, seed=3)[0] for f in (drawn, capped, short_only))
    advected = Extrapolation().predict(past, 4)[0]
    np.testing.assert_array_equal(unchanged, base)
    for lead in (1, 2, 3):
        valid = np.isfinite(advected[lead]) & np.all(np.isfinite(out[:, lead]), axis=0)
        drawn_rates, rates = base[:, lead][:, valid].ravel(), out[:, lead][:, valid].ravel()
        seen = advected[lead][valid]
        assert (drawn_rates > 1.0).mean() > (seen > 1.0).mean() + 2 / rates.size
        assert abs((rates > 1.0).mean() - (seen > 1.0).mean()) <= 0.5 / rates.size  # capped
        assert (drawn_rates > 0.5).mean() < (seen > 0.5).mean()
        assert (rates > 0.5).mean() < (seen > 0.5).mean() - 2 / rates.size  # never raised to it
        order = np.argsort(drawn_rates, kind="stable")
        assert np.all(np.diff(rates[order]) >= 0)
    with pytest.raises(ValueError, match="member_area_ceiling needs"):
        dataclasses.replace(drawn.model_config, member_area_ceiling=True)
    text = _default_description(dataclasses.replace(tiny_experiment(), model=capped.model_config))
    assert "the members' pooled area above 0.5/1 mm/h capped at the extrapolated last frame's" in text


def test_the_area_matching_map_leaves_out_what_a_map_of_wet_rates_cannot_reach():
    """area_matching_map: no point where the reference has no rain above a threshold or more wet area than the
    members (a map keeps dry pixels dry); pixels without a value anywhere are not counted; nothing to map: empty."""
    from nowcast.ensemble import area_matching_map, map_rates

    rng = np.random.default_rng(0)
    members = rng.lognormal(0.0, 1.0, (3, 20, 20)).astype(np.float32)
    members[:, :10] = 0.0  # half the pixels dry in every member
    reference = np.full((20, 20), 0.6, dtype=np.float32)
    reference[:, :4] = np.nan
    members[0, :, :4] = np.nan
    # 0.5 mm/h: all wet, past the members' wet area; 1 and 4 mm/h: no rain above them
    assert area_matching_map(members, reference, (0.5, 1.0, 4.0), 0.1) == ([], [])
    reference[:, 13:] = 3.0
    from_mmh, to_mmh = area_matching_map(members, reference, (0.5, 1.0, 4.0), 0.1)
    assert to_mmh == [1.0, 8.0]
    valid = np.isfinite(reference) & np.all(np.isfinite(members), axis=0)
    drawn = members[:, valid]
    mapped = np.where(drawn > 0, map_rates(np.where(drawn > 0, drawn, 1.0), from_mmh, to_mmh), drawn)
    assert abs((mapped > 1.0).mean() - (reference[valid] > 1.0).mean()) <= 0.5 / mapped.size
    assert area_matching_map(members, np.zeros((20, 20), np.float32), (1.0,), 0.1) == ([], [])
    assert area_matching_map(members, np.full((20, 20), np.nan, np.float32), (1.0,), 0.1) == ([], [])  # no pixel
    # as a ceiling: 1 mm/h, where the members have more area than the reference, is mapped; 0.5 mm/h, less, is not
    reference[:, 4:13], reference[:, 13:17], reference[:, 17:] = 0.0, 0.6, 3.0
    assert (members[:, valid] > 0.5).mean() < (reference[valid] > 0.5).mean()
    assert (members[:, valid] > 1.0).mean() > (reference[valid] > 1.0).mean()
    assert area_matching_map(members, reference, (0.5, 1.0), 0.1, ceiling=True)[1] == [1.0, 2.0]
    assert area_matching_map(members, reference, (0.5,), 0.1, ceiling=True) == ([], [])
    assert area_matching_map(members, reference, (0.5,), 0.1)[1] == [0.5, 1.0]


def test_sprog_runs_once_per_input_for_the_members_move_and_the_mean_placement(events):
    """The members' move towards S-PROG (predict) and the placement of their mean (finish) take one S-PROG run per
    input, shared by the forecaster's other member settings and by fewer leads of it (the same forecast as their
    own run, and a fit's leads one at a time after ``run_baselines``); other inputs or more leads run their own;
    the kept fields are read-only and bounded, the oldest dropped first; the forecast is the same either way."""
    from nowcast.gan.forecaster import GANForecaster, RecentSprog
    from nowcast.transforms import Normalisation

    torch.manual_seed(0)
    config = dataclasses.replace(TINY_MODEL, noise_channels=2, member_sprog_weight_minutes=(5.0, 15.0),
                                 member_sprog_weight=(0.5, 0.1), mean_sprog_weight_minutes=(10.0,),
                                 mean_sprog_weight=(0.5,))
    forecaster = GANForecaster(Generator(config), Normalisation(), device="cpu")
    past = events["syn0"].isel(time=slice(2, 6))
    first = forecaster.forecast(past, 4, members=3, seed=1)
    assert forecaster._sprog.runs == 1
    again = forecaster.with_member_settings(member_intensity_db=0.0).forecast(past, 4, members=3, seed=1)
    assert forecaster._sprog.runs == 1
    forecaster._sprog = RecentSprog()
    fresh = forecaster.forecast(past, 4, members=3, seed=1)
    assert forecaster._sprog.runs == 1
    np.testing.assert_array_equal(first.values, fresh.values)
    np.testing.assert_array_equal(first.mean_placement.values, fresh.mean_placement.values)
    np.testing.assert_array_equal(first.values, again.values)
    shorter = forecaster.forecast(past, 3, members=3, seed=1)  # the first leads of the field kept
    assert forecaster._sprog.runs == 1
    forecaster.forecast(past, 5, members=3, seed=1)
    forecaster.forecast(events["syn0"].isel(time=slice(3, 7)), 4, members=3, seed=1)
    assert forecaster._sprog.runs == 3
    forecaster._sprog = RecentSprog()
    np.testing.assert_array_equal(forecaster.forecast(past, 3, members=3, seed=1).values, shorter.values)
    kept = RecentSprog(max_bytes=1)
    frames = past.values
    field = kept.field(frames, 2)
    assert not field.flags.writeable and np.shares_memory(kept.field(frames, 2), field) and kept.runs == 1
    kept.field(frames[:3], 2)  # S-PROG takes the last 3 frames: these are other ones
    assert not np.shares_memory(kept.field(frames, 2), field) and kept.runs == 3
    from nowcast.forecasters.base import DEFAULT_SPACING

    fitting = forecaster._sprog = RecentSprog()  # a fit adjusts one lead at a time, on one run of the baselines
    inputs = past.values[None]
    forecaster.run_baselines(inputs, 5)
    for lead in range(5):
        forecaster.adjust_members(np.ones((1, 3, 1, 64, 64), np.float32), inputs, DEFAULT_SPACING, first_step=lead)
    assert fitting.runs == 1
    travelled = pickle.loads(pickle.dumps(forecaster))  # as to a Dask worker: the same forecasts, none kept
    assert travelled._sprog.runs == 0
    np.testing.assert_array_equal(travelled.forecast(past, 4, members=3, seed=1).values, first.values)


def test_retune_registers_the_same_weights_with_other_member_settings(tmp_path, events):
    """`nowcast retune NAME@VERSION --set KEY=VALUE`: a new version, byte-equal weights, the change on its card;
    settings that the weights were trained for are refused."""
    from typer.testing import CliRunner

    from nowcast.cli import EXIT_USER_ERROR, app

    cfg = dataclasses.replace(tiny_experiment(steps=2), model=dataclasses.replace(TINY_MODEL, noise_channels=2))
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    models = tmp_path / "models"
    export_run(tmp_path / "run", "tiny-gan", models_dir=models)
    result = CliRunner().invoke(app, ["-q", "retune", "tiny-gan@v1", "--set", "member_intensity_db=1.5",
                                      "--models-dir", str(models)])
    assert result.exit_code == 0, result.output
    folder = Path(result.stdout.strip())
    assert folder == models / "tiny-gan" / "v2"
    assert (folder / "weights.pt").read_bytes() == (models / "tiny-gan" / "v1" / "weights.pt").read_bytes()
    card = artifacts.card("tiny-gan", "v2", models)
    assert card["retuned_from"] == {"model": "tiny-gan@v1", "settings": {"member_intensity_db": [0.0, 1.5]}}
    assert card["training"] == artifacts.card("tiny-gan", "v1", models)["training"]
    retuned, source = (get_forecaster(f"tiny-gan@{v}", models_dir=models) for v in ("v2", "v1"))
    assert retuned.model_config.member_intensity_db == 1.5 and source.model_config.member_intensity_db == 0.0
    past = events["syn0"].values[2:6][None]
    np.testing.assert_array_equal(retuned.predict(past, 5), source.predict(past, 5))
    pooled = CliRunner().invoke(app, ["-q", "retune", "tiny-gan@v1", "--set", "member_matching=pooled",
                                      "--models-dir", str(models)])
    assert pooled.exit_code == 0, pooled.output
    assert get_forecaster("tiny-gan@v3", models_dir=models).model_config.member_matching == "pooled"
    last = CliRunner().invoke(app, ["-q", "retune", "tiny-gan@v1", "--set", "member_rate_map_last=true",
                                    "--models-dir", str(models)])
    assert last.exit_code == 0, last.output
    assert get_forecaster("tiny-gan@v4", models_dir=models).model_config.member_rate_map_last is True
    assert "member_rate_map_last false -> true" in artifacts.card("tiny-gan", "v4", models)["description"]
    for bad in (["--set", "noise_channels=3"], ["--set", "member_intensity_db=lots"],
                ["--set", "member_intensity_db=-1"], ["--set", "member_matching=sideways"],
                ["--set", "member_matching=1"], ["--set", "member_matching="], ["--set", "member_rate_map_last=maybe"]):
        refused = CliRunner().invoke(app, ["-q", "retune", "tiny-gan@v1", *bad, "--models-dir", str(models)])
        assert refused.exit_code == EXIT_USER_ERROR, refused.output
    assert artifacts.list_versions("tiny-gan", models) == ["v1", "v2", "v3", "v4"]


def test_a_rate_map_maps_rates_piecewise_in_log_rate_and_its_rows_by_the_lead():
    """map_rates is the identity for equal pairs, hits its knots, is linear in log rate between them and keeps
    the outer pairs' ratios beyond; ModelConfig interpolates its rows in log rate between their leads, holds them
    outside, and refuses a table that does not fit its thresholds and leads."""
    from nowcast.ensemble import map_rates

    rates = np.array([0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 40.0], dtype=np.float32)
    np.testing.assert_allclose(map_rates(rates, (1.0, 4.0), (1.0, 4.0)), rates, rtol=1e-6)
    mapped = map_rates(rates, (2.0, 8.0), (1.0, 16.0))
    np.testing.assert_allclose(mapped[[3, 4, 5]], [1.0, 4.0, 16.0], rtol=1e-5)  # knots, and halfway in log
    np.testing.assert_allclose(mapped[[0, 6]], [0.05, 80.0], rtol=1e-5)  # the outer pairs' ratios
    assert np.all(np.diff(mapped) > 0)
    cfg = ModelConfig(member_rate_map_mmh=(1.0, 4.0), member_rate_map_minutes=(10.0, 30.0),
                      member_rate_map=((1.0, 4.0), (4.0, 16.0)))
    maps = cfg.member_rate_maps(5.0, 8)
    np.testing.assert_allclose(maps[0], [1.0, 4.0])  # held before the first row's lead
    np.testing.assert_allclose(maps[3], [2.0, 8.0], rtol=1e-6)  # +20 min: halfway in log rate
    np.testing.assert_allclose(maps[7], [4.0, 16.0])  # held after the last
    np.testing.assert_allclose(cfg.member_rate_maps(5.0, 2, first_step=3)[0], maps[3])
    assert ModelConfig().member_rate_maps(5.0, 3) is None
    for bad in ({"member_rate_map": ((1.0, 4.0),)}, {"member_rate_map": ((4.0, 1.0), (1.0, 4.0))},
                {"member_rate_map_mmh": (4.0, 1.0)}, {"member_rate_map_minutes": ()},
                {"member_rate_map": ((1.0, 4.0), (1.0, float("nan")))}):
        with pytest.raises(ValueError, match="member_rate_map"):
            dataclasses.replace(cfg, **bad)


def test_fit_rate_map_gives_the_members_the_observed_area_above_each_threshold(tmp_path, events, monkeypatch):
    """fit_rate_map finds, at each lead, the members' rate whose pooled area is the observed area above each
    threshold: the model registered with it draws, on the fitting start times, members whose area above each
    threshold is the observed one, where the unmapped members' is not; wet members stay wet and dry ones dry;
    `nowcast fit-rate-map --register` registers it; bad input is refused by name."""
    from typer.testing import CliRunner

    from nowcast import rate_map
    from nowcast.cli import EXIT_USER_ERROR, app
    from nowcast.rate_map import fit_rate_map

    cfg = dataclasses.replace(tiny_experiment(steps=2), model=dataclasses.replace(TINY_MODEL, noise_channels=2))
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    models = tmp_path / "models"
    export_run(tmp_path / "run", "tiny-gan", models_dir=models)
    retune_version("tiny-gan@v1", {"member_intensity_db": 3.0}, models_dir=models)
    names, thresholds = ["syn0", "syn1"], (0.5, 1.0, 2.0)
    fit = fit_rate_map("tiny-gan@v2", names, thresholds_mmh=thresholds, members=4, steps=6, stride=4, seed=7,
                       loader=events.__getitem__, models_dir=models)
    assert fit.start_times == {"syn0": 2, "syn1": 2}
    assert fit.minutes == (5.0, 10.0, 15.0, 20.0, 25.0, 30.0) and fit.member_rates.shape == (6, 3)
    retune_version("tiny-gan@v2", fit.settings(), models_dir=models)
    plain, mapped = (get_forecaster(f"tiny-gan@{v}", models_dir=models) for v in ("v2", "v3"))
    observed_area, plain_area, mapped_area = _areas_on_fitting_start_times([plain, mapped], events, names,
                                                                           thresholds)
    np.testing.assert_allclose(fit.area_ratio, plain_area / observed_area, rtol=0.01)  # read off a grid of rates
    np.testing.assert_allclose(mapped_area, observed_area, rtol=0.03)
    assert np.abs(plain_area / observed_area - 1).max() > 0.1
    monkeypatch.setattr(rate_map, "fit_rate_map", lambda model, event_ids, **kwargs: fit)
    out = tmp_path / "fit.json"
    result = CliRunner().invoke(app, ["-q", "fit-rate-map", "tiny-gan@v2", "--events", "mch-20160711",
                                      "--register", "--out", str(out), "--models-dir", str(models)])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip().splitlines()[-1]) == models / "tiny-gan" / "v4"
    assert ">2 mm/h" in result.stdout and "30" in result.stdout  # the whole table, even in a pipe
    registered = get_forecaster("tiny-gan@v4", models_dir=models).model_config
    assert registered.member_rate_map_minutes == fit.minutes
    assert "rate map fitted on syn0, syn1" in artifacts.card("tiny-gan", "v4", models)["description"]
    assert json.loads(out.read_text())["member_rate_map_mmh"] == list(thresholds)
    settings = fit.settings()
    retuned = CliRunner().invoke(app, ["-q", "retune", "tiny-gan@v2", "--models-dir", str(models), *(
        part for key, value in settings.items() for part in ("--set", f"{key}={json.dumps(value)}"))])
    assert retuned.exit_code == 0, retuned.output
    assert get_forecaster("tiny-gan@v5", models_dir=models).model_config == registered
    not_last = CliRunner().invoke(app, ["-q", "fit-rate-map", "tiny-gan@v2", "--events", "mch-20160711",
                                        "--member-thresholds", "0.5", "--models-dir", str(models)])
    assert not_last.exit_code == EXIT_USER_ERROR and "does not come last" in not_last.output
    monkeypatch.setattr(rate_map, "fit_rate_map", lambda model, event_ids, **kwargs: dataclasses.replace(
        fit, map_last=True))
    split = CliRunner().invoke(app, ["-q", "fit-rate-map", "tiny-gan@v2", "--events", "mch-20160711", "--register",
                                     "--member-thresholds", "0.5,1", "--out", str(out), "--models-dir", str(models)])
    assert split.exit_code == 0, split.output
    assert json.loads(out.read_text())["mean_rate_map_mmh"] == list(thresholds)
    registered_split = get_forecaster("tiny-gan@v6", models_dir=models).model_config
    assert registered_split.member_rate_map_mmh == (0.5, 1.0) and registered_split.mean_rate_map_mmh == thresholds
    assert "the mean's at all" in artifacts.card("tiny-gan", "v6", models)["description"]
    broken = CliRunner().invoke(app, ["-q", "retune", "tiny-gan@v2", "--set", "member_rate_map=[[1, 2]",
                                      "--models-dir", str(models)])
    assert broken.exit_code == EXIT_USER_ERROR and "not a valid JSON list" in broken.output
    monkeypatch.undo()
    refused = CliRunner().invoke(app, ["-q", "fit-rate-map", "tiny-gan@v2", "--events", "mch-20160711",
                                       "--thresholds", "4,1", "--models-dir", str(models)])
    assert refused.exit_code == EXIT_USER_ERROR and "thresholds" in refused.output
    with pytest.raises(InputError, match="draws no ensemble members"):
        fit_rate_map("persistence", names, members=4, steps=6, stride=4, loader=events.__getitem__)
    retune_version("tiny-gan@v2", {"member_area_mmh": [1.0]}, version="v9", models_dir=models)
    with pytest.raises(InputError, match="member_area_mmh"):  # it maps the members again after the map
        fit_rate_map("tiny-gan@v9", names, members=4, steps=6, stride=4, loader=events.__getitem__, models_dir=models)


def _areas_on_fitting_start_times(forecasters, events, names, thresholds):
    """The observed area above each threshold and each forecaster's members' (4, seed 7 + k), (lead, threshold),
    averaged over the events; on the start times 0 and 4 of each event, 6 leads. The second forecaster maps the
    first's members: wet ones stay wet, dry ones dry."""
    wet_from = forecasters[0].normalisation.threshold_mmh
    fractions = np.zeros((1 + len(forecasters), len(names), 6, len(thresholds)))  # observed, each; event; lead; t
    for e, name in enumerate(names):
        pixels = np.zeros(6)
        for k, index in enumerate((0, 4)):
            past = events[name].isel(time=slice(index, index + 4))
            drawn = [f.forecast(past, 6, members=4, seed=7 + k).values for f in forecasters]
            np.testing.assert_array_equal(drawn[0] >= wet_from, drawn[1] >= wet_from)
            observed = events[name].values[index + 4:index + 10]
            for lead in range(6):
                valid = np.isfinite(observed[lead]) & np.all(np.isfinite(drawn[0][:, lead]), axis=0)
                pixels[lead] += valid.sum()
                for i, t in enumerate(thresholds):
                    fractions[0, e, lead, i] += (observed[lead][valid] > t).sum()
                    for f, members in enumerate(drawn):
                        fractions[1 + f, e, lead, i] += (members[:, lead][:, valid] > t).sum() / 4
        fractions[:, e] /= pixels[:, None]
    areas = fractions.mean(axis=1)
    assert np.all(areas[0] > 0)
    return areas


def test_a_rate_map_that_comes_last_is_fitted_on_the_members_moved_towards_sprog(tmp_path, events):
    """member_rate_map_last: the fit draws the members with matching and the move towards S-PROG on, and the map
    follows them, so that the final members' area above each threshold is the observed one; the same map before
    the move misses it; the card says where the map is."""
    from nowcast.gan.export import _default_description
    from nowcast.rate_map import fit_rate_map

    cfg = dataclasses.replace(tiny_experiment(steps=2), model=dataclasses.replace(TINY_MODEL, noise_channels=2))
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    models = tmp_path / "models"
    export_run(tmp_path / "run", "tiny-gan", models_dir=models)
    retune_version("tiny-gan@v1", {"member_intensity_db": 3.0, "member_sprog_weight_minutes": [5.0, 30.0],
                                   "member_sprog_weight": [1.0, 0.5], "member_rate_map_last": True},
                   models_dir=models)
    names, thresholds = ["syn0", "syn1"], (0.5, 1.0, 2.0)
    fit = fit_rate_map("tiny-gan@v2", names, thresholds_mmh=thresholds, members=4, steps=6, stride=4, seed=7,
                       loader=events.__getitem__, models_dir=models)
    retune_version("tiny-gan@v2", fit.settings(), models_dir=models)
    retune_version("tiny-gan@v3", {"member_rate_map_last": False}, models_dir=models)
    forecasters = [get_forecaster(f"tiny-gan@{v}", models_dir=models) for v in ("v2", "v3", "v4")]
    observed_area, moved_area, last_area, before_area = _areas_on_fitting_start_times(forecasters, events, names,
                                                                                      thresholds)
    np.testing.assert_allclose(fit.area_ratio, moved_area / observed_area, rtol=0.01)
    np.testing.assert_allclose(last_area, observed_area, rtol=0.03)
    assert np.abs(before_area / observed_area - 1).max() > 0.1
    last = forecasters[1].model_config
    text = _default_description(dataclasses.replace(cfg, model=last))
    assert text.index("moved towards S-PROG") < text.index("rates mapped per lead") and "after everything" in text
    text = _default_description(dataclasses.replace(cfg, model=dataclasses.replace(last, member_rate_map_last=False)))
    assert text.index("rates mapped per lead") < text.index("moved towards S-PROG")
    split = fit.settings(member_thresholds=(0.5, 1.0))  # the members' map at two thresholds, the mean's at all
    assert split["member_rate_map_mmh"] == [0.5, 1.0] and split["mean_rate_map_mmh"] == list(thresholds)
    np.testing.assert_allclose(np.array(split["mean_rate_map"])[:, :2], [[0.5, 1.0]] * len(fit.minutes), rtol=1e-3)
    retune_version("tiny-gan@v2", split, models_dir=models)
    observed_area, mean_area = _mean_areas_on_fitting_start_times(get_forecaster("tiny-gan@v5", models_dir=models),
                                                                  events, names, thresholds)
    np.testing.assert_allclose(mean_area, observed_area, rtol=0.05)
    retune_version("tiny-gan@v5", {"mean_rate_map_mmh": [], "mean_rate_map_minutes": [], "mean_rate_map": []},
                   models_dir=models)
    _, unmapped_area = _mean_areas_on_fitting_start_times(get_forecaster("tiny-gan@v6", models_dir=models), events,
                                                          names, thresholds)
    assert np.abs(unmapped_area[:, 2] / observed_area[:, 2] - 1).min() > 0.05  # 2 mm/h: only the mean's map
    for bad, message in (((0.5, 3.0), "member thresholds"), (thresholds, "member thresholds")):
        with pytest.raises(InputError, match=message):
            fit.settings(member_thresholds=bad)
    with pytest.raises(InputError, match="does not come last"):
        dataclasses.replace(fit, map_last=False).settings(member_thresholds=(0.5,))


def test_a_rate_map_is_the_identity_where_the_members_are_matched_to_the_last_frame(tmp_path, events):
    """Members matched to the last observed frame carry the radar's quantised rates, some of them on a threshold:
    the fit leaves their leads unmapped (the members' and the mean's rows the thresholds themselves) and reports
    the area it measured there all the same."""
    from nowcast.rate_map import fit_rate_map

    cfg = dataclasses.replace(tiny_experiment(steps=2), model=dataclasses.replace(TINY_MODEL, noise_channels=2))
    train(cfg, tmp_path / "run", loader=events.__getitem__, progress=False)
    models = tmp_path / "models"
    export_run(tmp_path / "run", "tiny-gan", models_dir=models)
    retune_version("tiny-gan@v1", {"member_intensity_db": 3.0, "member_matching": "each",
                                   "member_matching_minutes": 10.0, "member_rate_map_last": True}, models_dir=models)
    thresholds = (0.5, 1.0, 2.0)
    fit = fit_rate_map("tiny-gan@v2", ["syn0", "syn1"], thresholds_mmh=thresholds, members=4, steps=6, stride=4,
                       seed=7, loader=events.__getitem__, models_dir=models)
    np.testing.assert_array_equal(fit.member_rates[:2], [thresholds, thresholds])
    assert not np.allclose(fit.member_rates[2:], thresholds, rtol=1e-3)
    assert not np.allclose(fit.area_ratio[:2], 1.0, rtol=1e-3)
    split = fit.settings(member_thresholds=(0.5, 1.0))
    np.testing.assert_array_equal(split["mean_rate_map"][:2], [thresholds, thresholds])


def _mean_areas_on_fitting_start_times(forecaster, events, names, thresholds):
    """The observed area above each threshold and the forecaster's probability-matched mean's (4 members, seed
    7 + k), (lead, threshold), averaged over the events, on the start times of _areas_on_fitting_start_times."""
    from nowcast.products import probability_matched_mean_of

    fractions = np.zeros((2, len(names), 6, len(thresholds)))
    for e, name in enumerate(names):
        pixels = np.zeros(6)
        for k, index in enumerate((0, 4)):
            mean = probability_matched_mean_of(forecaster.forecast(events[name].isel(time=slice(index, index + 4)),
                                                                   6, members=4, seed=7 + k))
            observed = events[name].values[index + 4:index + 10]
            for lead in range(6):
                valid = np.isfinite(observed[lead]) & np.isfinite(mean[lead])
                pixels[lead] += valid.sum()
                for i, t in enumerate(thresholds):
                    fractions[:, e, lead, i] += [(observed[lead][valid] > t).sum(), (mean[lead][valid] > t).sum()]
        fractions[:, e] /= pixels[:, None]
    return fractions.mean(axis=1)


def test_a_rate_map_fit_brings_every_event_onto_every_lead_before_averaging():
    """An event with 10-min steps has no +5 or +15 min: its fractions there are its own neighbours' (linear in
    the lead, held before its first), so that every row of the map averages the same events."""
    from nowcast.rate_map import _on_leads

    ten_minutes = {10.0: (np.array([0.2]), np.array([0.4, 0.1])), 20.0: (np.array([0.4]), np.array([0.8, 0.3]))}
    rows = _on_leads(ten_minutes, [5.0, 10.0, 15.0, 20.0, 25.0])
    np.testing.assert_allclose([observed[0] for observed, _ in rows], [0.2, 0.2, 0.3, 0.4, 0.4])
    np.testing.assert_allclose(rows[2][1], [0.6, 0.2])
