"""Ensemble products over HTTP: probabilities, quantiles and means in JSON and CF-netCDF answers, within the limits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_service import NETCDF, _open_bytes, base64_frames, decode_frames, json_body, running, sequence

from nowcast import forecasters
from nowcast.forecasters import Forecaster, get_forecaster
from nowcast.io.netcdf import to_netcdf_bytes
from nowcast.products import PRODUCTS, ProductRequest, ensemble_products
from service import codec
from service.schemas import NowcastResponse

pytestmark = pytest.mark.service


class FakeMembers(Forecaster):
    """Members that are the last frame scaled by 0.5, 1.5, 2.5, ...: known products, no pysteps."""

    name = "test-members"
    n_input_frames = 1
    supports_members = True

    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None, seed: int | None = None,
                spacing: Any = None) -> np.ndarray:
        scale = (0.5 + np.arange(members or 1, dtype=np.float32))[None, :, None, None, None]
        out = np.repeat(past[:, None, -1:], steps, axis=2) * scale
        return out if members is not None else out[:, 0]


@pytest.fixture()
def fake_members(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(forecasters.METHODS, "test-members", FakeMembers)


def product_frames(product: dict[str, Any]) -> np.ndarray:
    return decode_frames(product)


@pytest.mark.parametrize("encoding", ["nested", "base64"])
def test_steps_products_in_json_are_the_librarys(encoding: str) -> None:
    seq = sequence(ny=32, nx=36, frames=4, border=2)
    body = json_body(seq, steps=2, members=3, seed=2, products=list(PRODUCTS), thresholds=[0.5, 2.0],
                     quantile_levels=[0.5, 0.9], accumulation_thresholds=[0.2, 1.0])
    if encoding == "base64":
        body["frames"] = base64_frames(seq.values)
    with running(model="steps") as client:
        answer = client.post("/v1/nowcasts", json=body)
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    expected = ensemble_products(get_forecaster("steps").forecast(seq, 2, members=3, seed=2),
                                 ProductRequest(PRODUCTS, (0.5, 2.0), (0.5, 0.9), accumulation_thresholds=(0.2, 1.0)))
    assert "frames" not in payload and payload["shape"] == [3, 2, 32, 36] and payload["members"] == 3
    products = payload["products"]
    assert list(products) == list(PRODUCTS)
    for name in PRODUCTS:
        np.testing.assert_array_equal(product_frames(products[name]), expected[name].values, err_msg=name)
        assert products[name]["shape"] == list(expected[name].shape)
    assert products["probabilities"]["thresholds"] == [0.5, 2.0] and products["probabilities"]["units"] == "1"
    assert products["quantiles"]["levels"] == [0.5, 0.9] and products["mean"]["units"] == "mm/h"
    assert [products[name].get("minimum_members_with_data") for name in PRODUCTS] == [None, 2, 2, None, 2, 2, 2, 2]
    assert products["max_probabilities"]["thresholds"] == [0.5, 2.0] and products["max_probabilities"]["units"] == "1"
    assert products["max_probabilities"]["shape"] == [2, 32, 36]
    accumulation = products["accumulation_probabilities"]
    assert accumulation["thresholds"] == [0.2, 1.0] and accumulation["units"] == "1"
    assert accumulation["shape"] == [2, 32, 36]
    amount = products["accumulation_quantiles"]
    assert amount["levels"] == [0.5, 0.9] and amount["units"] == "mm" and amount["shape"] == [2, 32, 36]
    assert np.nanmax(product_frames(accumulation)) > 0  # the members bring rain somewhere
    NowcastResponse.model_validate(payload)  # the answer is what the schema says
    assert isinstance(products["mean"]["frames"], dict if encoding == "base64" else list)


def test_netcdf_answers_carry_the_products(fake_members: None) -> None:
    seq = sequence()
    asked = ProductRequest(("probabilities", "quantiles"), (1.0,), (0.5,))
    expected = ensemble_products(FakeMembers().forecast(seq, 2, members=4), asked)
    body = json_body(seq, steps=2, members=4, products=["probabilities", "quantiles"], thresholds=[1.0],
                     quantile_levels=[0.5])
    with running(model="test-members") as client:
        from_json = client.post("/v1/nowcasts", json=body, headers={"Accept": NETCDF})
        from_netcdf = client.post(
            "/v1/nowcasts", content=to_netcdf_bytes(seq),
            params={"steps": 2, "members": 4, "products": "probabilities,quantiles", "thresholds": "1",
                    "quantile_levels": "0.5"},
            headers={"Content-Type": NETCDF, "Accept": NETCDF},
        )
    for answer in (from_json, from_netcdf):
        assert answer.status_code == 200, answer.text
        with _open_bytes(answer.content) as ds:
            probability = ds["probability_of_lwe_precipitation_rate_above_threshold"]
            np.testing.assert_array_equal(probability.values, expected["probabilities"].values)
            np.testing.assert_array_equal(ds["precipitation_rate_percentile"].values, expected["quantiles"].values)
            assert "precipitation_rate" not in ds.variables


def test_neighbourhood_probabilities_over_http_are_the_librarys(fake_members: None) -> None:
    seq = sequence(ny=30, nx=32, frames=3, border=2)
    asked = ProductRequest(("probabilities",), (1.0,), neighbourhood=0.8)
    expected = ensemble_products(FakeMembers().forecast(seq, 2, members=4), asked)["probabilities"].values
    body = json_body(seq, steps=2, members=4, products=["probabilities"], thresholds=[1.0], neighbourhood=0.8)
    with running(model="test-members") as client:
        as_json = client.post("/v1/nowcasts", json=body)
        as_netcdf = client.post(
            "/v1/nowcasts", content=to_netcdf_bytes(seq),
            params={"steps": 2, "members": 4, "products": "probabilities", "thresholds": "1", "neighbourhood": 0.8},
            headers={"Content-Type": NETCDF, "Accept": NETCDF},
        )
    assert as_json.status_code == 200, as_json.text
    probabilities = as_json.json()["products"]["probabilities"]
    np.testing.assert_array_equal(product_frames(probabilities), expected)
    assert probabilities["neighbourhood_km_per_minute"] == 0.8
    assert as_netcdf.status_code == 200, as_netcdf.text
    with _open_bytes(as_netcdf.content) as ds:
        probability = ds["probability_of_lwe_precipitation_rate_above_threshold"]
        np.testing.assert_array_equal(probability.values, expected)
        assert probability.attrs["neighbourhood_km_per_minute"] == 0.8


def test_a_forecast_carries_its_forecasters_neighbourhood_never_its_inputs() -> None:
    seq = sequence(ny=30, nx=32, frames=3, border=2)
    seq.attrs["probability_neighbourhood_km_per_minute"] = 9.0
    forecast = FakeMembers().forecast(seq, 2, members=4)
    assert "probability_neighbourhood_km_per_minute" not in forecast.attrs


def test_without_a_neighbourhood_the_models_fitted_one_applies(fake_members: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeMembers, "probability_neighbourhood_km_per_minute", 1.5)
    seq = sequence(ny=30, nx=32, frames=3, border=2)
    fitted = ensemble_products(FakeMembers().forecast(seq, 2, members=4),
                               ProductRequest(("probabilities",), (1.0,), neighbourhood=1.5))["probabilities"]
    raw = ensemble_products(FakeMembers().forecast(seq, 2, members=4),
                            ProductRequest(("probabilities",), (1.0,), neighbourhood=0.0))["probabilities"]
    assert not np.array_equal(fitted.values, raw.values, equal_nan=True)
    with running(model="test-members") as client:
        unsaid = client.post("/v1/nowcasts", json=json_body(seq, steps=2, members=4, products=["probabilities"],
                                                            thresholds=[1.0]))
        none = client.post("/v1/nowcasts", json=json_body(seq, steps=2, members=4, products=["probabilities"],
                                                          thresholds=[1.0], neighbourhood=0))
    for answer, expected, neighbourhood in ((unsaid, fitted, 1.5), (none, raw, 0.0)):
        assert answer.status_code == 200, answer.text
        probabilities = answer.json()["products"]["probabilities"]
        np.testing.assert_array_equal(product_frames(probabilities), expected.values)
        assert probabilities["neighbourhood_km_per_minute"] == neighbourhood


@pytest.mark.parametrize("encoding", ["nested", "base64"])
def test_the_rain_over_the_period_over_http_is_the_librarys(fake_members: None, encoding: str) -> None:
    """Members 0.5, 1.5, 2.5 and 3.5 times the last frame at each of 3 five-minute leads: each brings that rate
    times a quarter of an hour; the JSON and netCDF answers hold what ensemble_products gives."""
    seq = sequence(ny=16, nx=18, frames=3, border=2)
    asked = ProductRequest(("accumulation_probabilities", "accumulation_quantiles"), quantile_levels=(0.5,),
                           accumulation_thresholds=(0.1, 1.0))
    expected = ensemble_products(FakeMembers().forecast(seq, 3, members=4, seed=3), asked)
    np.testing.assert_allclose(expected["accumulation_quantiles"].values[0], seq.values[-1] * 2.0 * 0.25, rtol=1e-5)
    body = json_body(seq, steps=3, members=4, seed=3, products=["accumulation_probabilities", "accumulation_quantiles"],
                     accumulation_thresholds=[0.1, 1.0], quantile_levels=[0.5])
    if encoding == "base64":
        body["frames"] = base64_frames(seq.values)
    with running(model="test-members") as client:
        as_json = client.post("/v1/nowcasts", json=body)
        as_netcdf = client.post(
            "/v1/nowcasts", content=to_netcdf_bytes(seq),
            params={"steps": 3, "members": 4, "seed": 3,
                    "products": "accumulation_probabilities,accumulation_quantiles",
                    "accumulation_thresholds": "0.1,1", "quantile_levels": "0.5"},
            headers={"Content-Type": NETCDF, "Accept": NETCDF},
        )
        refused = client.post(
            "/v1/nowcasts", content=to_netcdf_bytes(seq),
            params={"steps": 3, "members": 4, "products": "accumulation_probabilities",
                    "accumulation_thresholds": "5,x"},
            headers={"Content-Type": NETCDF},
        )
    assert refused.status_code == 422 and refused.json()["field"] == "accumulation_thresholds", refused.text
    assert as_json.status_code == 200, as_json.text
    products = as_json.json()["products"]
    assert list(products) == ["accumulation_probabilities", "accumulation_quantiles"]
    probabilities, amounts = products["accumulation_probabilities"], products["accumulation_quantiles"]
    assert isinstance(probabilities["frames"], dict if encoding == "base64" else list)
    np.testing.assert_array_equal(product_frames(probabilities), expected["accumulation_probabilities"].values)
    np.testing.assert_array_equal(product_frames(amounts), expected["accumulation_quantiles"].values)
    assert probabilities["thresholds"] == [0.1, 1.0] and probabilities["units"] == "1"
    assert amounts["levels"] == [0.5] and amounts["units"] == "mm"
    assert probabilities["shape"] == [2, 16, 18] and amounts["shape"] == [1, 16, 18]
    assert probabilities["minimum_members_with_data"] == amounts["minimum_members_with_data"] == 2
    NowcastResponse.model_validate(as_json.json())
    assert as_netcdf.status_code == 200, as_netcdf.text
    with _open_bytes(as_netcdf.content) as ds:
        probability = ds["probability_of_lwe_thickness_of_precipitation_amount_above_threshold"]
        np.testing.assert_array_equal(probability.values, expected["accumulation_probabilities"].values)
        np.testing.assert_allclose(ds["accumulation_threshold"].values, [0.1, 1.0], rtol=1e-6)
        assert ds["accumulation_threshold"].attrs["units"] == "mm"
        np.testing.assert_array_equal(ds["lwe_thickness_of_precipitation_amount_percentile"].values,
                                      expected["accumulation_quantiles"].values)


@pytest.mark.parametrize(
    ("extra", "params", "field", "words"),
    [
        ({"products": ["probabilities"]}, None, "products", "give members too"),
        ({"members": 2, "thresholds": [1.0]}, None, "thresholds", "given without products"),
        ({"members": 2, "products": ["mean"], "thresholds": [1.0]}, None, "thresholds", "not among the products"),
        ({"members": 2, "products": ["probabilities"], "thresholds": [4.0, 1.0]}, None, "thresholds", "increasing"),
        ({"members": 2, "products": ["maxima"]}, None, "products.0", "probabilities"),
        ({"members": 2}, {"products": "mean"}, "steps", "in the body"),
        ({"members": 2, "products": ["mean"], "neighbourhood": 0.8}, None, "neighbourhood",
         "not among the products"),
        ({"members": 2, "neighbourhood": 0.8}, None, "neighbourhood", "given without products"),
        ({"members": 2, "products": ["probabilities"], "neighbourhood": 11}, None, "neighbourhood",
         "less than or equal"),
        ({"members": 2, "products": ["accumulation_probabilities"], "accumulation_thresholds": [5.0, 1.0]}, None,
         "accumulation_thresholds", "increasing"),
        ({"members": 2, "products": ["accumulation_probabilities"], "accumulation_thresholds": [-1.0]}, None,
         "accumulation_thresholds.0", "greater than or equal"),
        ({"members": 2, "products": ["accumulation_probabilities"], "accumulation_thresholds": ["5"]}, None,
         "accumulation_thresholds.0", "number"),
        ({"members": 2, "products": ["accumulation_quantiles"], "accumulation_thresholds": [5.0]}, None,
         "accumulation_thresholds", "not among the products"),
        ({"members": 2, "accumulation_thresholds": [5.0]}, None, "accumulation_thresholds", "given without products"),
        ({"members": 2, "products": ["probabilities"], "accumulation_thresholds": [5.0]}, None,
         "accumulation_thresholds", "not among the products"),
    ],
)
def test_bad_product_requests_name_the_field(fake_members: None, extra: dict, params: dict | None, field: str,
                                             words: str) -> None:
    with running(model="test-members") as client:
        answer = client.post("/v1/nowcasts", json=json_body(sequence(), steps=2, **extra), params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and words in answer.json()["detail"]


def test_the_output_limit_counts_every_value_of_every_product(fake_members: None) -> None:
    seq = sequence()  # 12 x 14 pixels: one field of 2 steps holds 336 values
    with running(model="test-members", max_output_values=1100) as client:
        probabilities = client.post("/v1/nowcasts", json=json_body(seq, steps=2, members=4,
                                                                    products=["probabilities"]))
        members = client.post("/v1/nowcasts", json=json_body(seq, steps=2, members=4))
        both = client.post("/v1/nowcasts", json=json_body(seq, steps=2, members=4,
                                                           products=["members", "probabilities"]))
    assert probabilities.status_code == 200, probabilities.text  # 3 x 336 = 1008 values
    assert members.status_code == 413 and members.json()["field"] == "steps"  # 4 x 336 = 1344
    assert both.status_code == 413 and both.json()["field"] == "products"  # 7 x 336 = 2352
    assert "2352 values" in both.json()["detail"] and "probabilities or quantiles instead of members" in (
        both.json()["detail"])
    with running(model="test-members", max_output_values=3 * 336 + 3 * 168) as client:
        period = client.post("/v1/nowcasts", json=json_body(seq, steps=2, members=4,
                                                             products=["probabilities", "max_probabilities"]))
        over = client.post("/v1/nowcasts", json=json_body(seq, steps=2, members=4, thresholds=[1, 2, 4, 8],
                                                           products=["probabilities", "max_probabilities"]))
    assert period.status_code == 200, period.text  # 3 x 336 + 3 x 168 (one field a threshold) = 1512
    assert over.status_code == 413 and "2016 values" in over.json()["detail"]  # 4 x 336 + 4 x 168
    accumulations = {"products": ["accumulation_probabilities", "accumulation_quantiles"],
                     "quantile_levels": [0.5, 0.9]}
    with running(model="test-members", max_output_values=5 * 168) as client:
        fits = client.post("/v1/nowcasts", json=json_body(seq, steps=2, members=4, **accumulations,
                                                           accumulation_thresholds=[1, 2, 4]))
        too_many = client.post("/v1/nowcasts", json=json_body(seq, steps=2, members=4, **accumulations,
                                                               accumulation_thresholds=[1, 2, 4, 8]))
    assert fits.status_code == 200, fits.text  # (3 thresholds + 2 levels) x 168 = 840, whatever the steps
    assert too_many.status_code == 413 and too_many.json()["field"] == "products"
    assert "6 fields" in too_many.json()["detail"] and "1008 values" in too_many.json()["detail"]


def test_the_memory_estimate_counts_the_products_and_their_members() -> None:
    seq = sequence()
    pixels = 12 * 14

    def estimate(products: ProductRequest | None, netcdf: bool = False) -> int:
        query = codec.ForecastQuery(seq, steps=2, members=4, seed=None, output_encoding="nested", products=products)
        return codec.answer_estimate(query, netcdf_answer=netcdf)

    plain = estimate(None)
    with_products = estimate(ProductRequest(PRODUCTS, (1.0, 4.0), (0.5,)))
    per_value = codec.ANSWER_BYTES_PER_VALUE
    # members 4 + probabilities 2 + mean + pm mean + one quantile = 9 fields a step, 2 of the period's maximum,
    # 3 + 1 of its accumulations (default thresholds, one level), and the 4 members they come from
    assert with_products - plain == (per_value * ((9 - 4) * 2 + 2 + 3 + 1) * pixels
                                     + codec.ENSEMBLE_BYTES_PER_VALUE * 4 * 2 * pixels)
    netcdf_extra = estimate(ProductRequest(("mean",)), netcdf=True) - estimate(ProductRequest(("mean",)))
    assert netcdf_extra == codec.NETCDF_ANSWER_BYTES_PER_VALUE * 2 * pixels


def test_openapi_describes_the_products() -> None:
    with running() as client:
        spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    request = schemas["NowcastRequest"]["properties"]
    assert {"products", "thresholds", "quantile_levels", "accumulation_thresholds"} <= set(request)
    assert "mm" in request["accumulation_thresholds"]["description"]
    assert "products" in schemas["NowcastResponse"]["properties"]
    assert {"members", "probabilities", "mean", "pm_mean", "quantiles", "max_probabilities",
            "accumulation_probabilities", "accumulation_quantiles"} <= set(schemas["NowcastProducts"]["properties"])
    assert "in mm (not mm/h)" in schemas["AccumulationProbabilityFrames"]["properties"]["thresholds"]["description"]
    parameters = {p["name"] for p in spec["paths"]["/v1/nowcasts"]["post"]["parameters"]}
    assert {"products", "thresholds", "quantile_levels", "accumulation_thresholds"} <= parameters
