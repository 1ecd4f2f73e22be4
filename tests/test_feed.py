"""The product folder's manifest: round trip, atomic replacement, hostile entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nowcast.errors import InputError, UnreadableFileError
from nowcast.feed import MANIFEST, ProductEntry, latest_product, product_file_name, read_manifest, write_manifest


def entry(minute: int, **overrides: object) -> ProductEntry:
    reference = datetime(2017, 5, 9, 12, minute, tzinfo=UTC)
    fields: dict[str, object] = {
        "file": product_file_name(reference),
        "reference_time": reference,
        "valid_times": tuple(reference + timedelta(minutes=5 * k) for k in range(1, 4)),
        "model": "default-gan@v6",
    }
    return ProductEntry(**{**fields, **overrides})  # type: ignore[arg-type]


def test_the_manifest_round_trips_and_lists_products_oldest_first(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) == [] and latest_product(tmp_path) is None
    products = [entry(10, fallback=True, fallback_reason="model failed"), entry(5, members=20, thresholds=(1.0, 4.0))]
    write_manifest(tmp_path, products, source="fmi")
    assert read_manifest(tmp_path) == sorted(products, key=lambda e: e.reference_time)
    assert latest_product(tmp_path) == products[0]
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temporary file left


def test_file_names_are_plain_product_names() -> None:
    assert product_file_name(datetime(2017, 5, 9, 12, 5)) == "nowcast_20170509T1205Z.nc"
    for name in ("../etc/passwd", "nowcast_20170509T1205Z.nc/..", "/tmp/nowcast_20170509T1205Z.nc"):
        with pytest.raises(InputError, match="is not of the form"):
            entry(0, file=name)


def test_a_damaged_manifest_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(UnreadableFileError, match=MANIFEST):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text('{"schema": 1, "products": [{"file": "nowcast_20170509T1205Z.nc"}]}')
    with pytest.raises(UnreadableFileError, match="manifest entry"):
        read_manifest(tmp_path)
