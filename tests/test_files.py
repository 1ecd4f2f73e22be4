"""Files written whole or not at all (nowcast.files)."""

from __future__ import annotations

import stat

import pytest

from nowcast.files import replaced_atomically, write_text_atomically


def test_a_written_file_replaces_the_old_one_whole_and_is_readable_by_all(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    write_text_atomically(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "forecast.nc"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), replaced_atomically(target) as tmp:
        tmp.write_text("half of it")
        assert target.read_text() == "old"
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["forecast.nc"]


def test_the_temporary_file_is_hidden_beside_its_place_in_a_folder_made_for_it(tmp_path):
    target = tmp_path / "new" / "folder" / "latest.png"
    with replaced_atomically(target, suffix=".part") as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".latest.png.") and tmp.name.endswith(".part")
        tmp.write_bytes(b"\x89PNG")
    assert target.read_bytes() == b"\x89PNG"
    assert not tmp.exists()
