"""Atomic writes: a failed or interrupted write leaves the old file (or nothing), never a partial one."""

from __future__ import annotations

import pytest

from meddenoise.errors import MeddenoiseError
from meddenoise.fileio import (
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    read_json,
)


def test_write_replaces_the_file_and_creates_parent_folders(tmp_path):
    target = tmp_path / "new" / "deeper" / "a.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert read_json(target) == {"a": [1, 2], "b": 1}
    atomic_write_text(target, "replaced\n")
    assert target.read_text() == "replaced\n"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temporary file left behind


@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_write_keeps_the_old_content_and_leaves_no_temporary_file(tmp_path, interruption):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(interruption)), atomic_open(target, "wb") as handle:
        handle.write(b"half of the new")
        raise interruption
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_only_write_modes_are_allowed(tmp_path):
    with pytest.raises(ValueError, match="'wb' and 'w'"), atomic_open(tmp_path / "x", "ab"):
        pass


def test_read_json_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(MeddenoiseError, match="run config not found: .*missing.json"):
        read_json(tmp_path / "missing.json", what="run config")
    (tmp_path / "bad.json").write_text('{"half": ')
    with pytest.raises(MeddenoiseError, match="bad.json is not valid JSON.*corrupt"):
        read_json(tmp_path / "bad.json")


def test_ensure_writable_dir_creates_folders_and_names_the_option_when_it_cannot(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MeddenoiseError, match=r"cannot create export folder \(--out\) .*a_file/sub"):
        ensure_writable_dir(tmp_path / "a_file" / "sub", what="export folder (--out)")


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    mode = (tmp_path / "shared.txt").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644
