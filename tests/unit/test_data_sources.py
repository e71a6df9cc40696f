"""The NIH and folder sources: layouts, metadata, patient ids, selection, and what they tell the user."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from meddenoise.data.prepare_config import PrepareConfig
from meddenoise.data.sources import build_source, parse_render_options
from meddenoise.data.sources.folder import FolderSource, nih_patient_from_name
from meddenoise.data.sources.nih import NihSource
from meddenoise.errors import ConfigError, DataError

NIH_NAMES = [
    "00000001_000.png",
    "00000001_001.png",
    "00000002_000.png",
    "00000013_005.png",
    "00000013_006.png",
]


def tiny_png(image_files, path: Path, value: int = 100) -> Path:
    return image_files.png(path, np.full((20, 20), value, np.uint8))


def write_csv(path: Path, rows: list[tuple[str, int, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"])
        for name, patient, view in rows:
            writer.writerow([name, "No Finding", 0, patient, view])


@pytest.fixture
def kaggle_root(tmp_path, image_files):
    """images_001 holds the first three names, images_002 the rest, like the Kaggle download."""
    for index, name in enumerate(NIH_NAMES):
        folder = "images_001" if index < 3 else "images_002"
        tiny_png(image_files, tmp_path / folder / "images" / name)
    return tmp_path


def test_nih_kaggle_layout_with_csv(kaggle_root):
    rows = [(n, int(n[:8]), "PA" if i % 2 == 0 else "AP") for i, n in enumerate(NIH_NAMES)]
    write_csv(kaggle_root / "Data_Entry_2017_v2020.csv", rows)
    source = NihSource(str(kaggle_root))
    records = source.records()
    assert [r.image_id for r in records] == NIH_NAMES
    assert [r.patient_id for r in records] == ["1", "1", "2", "13", "13"]
    assert all(r.group == r.patient_id and Path(r.path).is_file() for r in records)
    assert any("Data_Entry_2017_v2020.csv" in note for note in source.notes)
    decoded = source.decode(records[0])
    assert decoded.pixels.shape == (20, 20) and decoded.bit_depth == 8

    pa_only = NihSource(str(kaggle_root), view_position="PA").records()
    assert [r.image_id for r in pa_only] == NIH_NAMES[0::2]
    first_folder = NihSource(str(kaggle_root), nih_folders=1)
    assert [r.image_id for r in first_folder.records()] == NIH_NAMES[:3]
    assert any(
        "2 CSV row(s) name files not found" in note and "expected" in note for note in first_folder.notes
    )


def test_nih_without_csv_derives_patients_from_names_and_says_so(kaggle_root):
    source = NihSource(str(kaggle_root))
    assert [r.patient_id for r in source.records()] == ["1", "1", "2", "13", "13"]
    assert any("derived from file names" in note for note in source.notes)
    with pytest.raises(ConfigError, match="view_position needs the metadata CSV") as refused:
        NihSource(str(kaggle_root), view_position="PA").records()
    assert refused.value.parameter == "view_position"


def test_nih_flat_images_folder(tmp_path, image_files):
    for name in NIH_NAMES:
        tiny_png(image_files, tmp_path / "images" / name)
    write_csv(tmp_path / "Data_Entry_2017.csv", [(n, int(n[:8]), "PA") for n in NIH_NAMES])
    assert len(NihSource(str(tmp_path)).records()) == len(NIH_NAMES)
    with pytest.raises(ConfigError, match="nih_folders needs the Kaggle layout") as refused:
        NihSource(str(tmp_path), nih_folders=2).records()
    assert refused.value.parameter == "nih_folders"


def test_nih_csv_mismatch_is_reported_with_names(kaggle_root):
    rows = [(n, int(n[:8]), "PA") for n in NIH_NAMES[1:]] + [("99999999_000.png", 99999999, "PA")]
    write_csv(kaggle_root / "Data_Entry_2017.csv", rows)
    source = NihSource(str(kaggle_root))
    assert [r.image_id for r in source.records()] == NIH_NAMES[1:]
    notes = " | ".join(source.notes)
    assert "1 PNG file(s) are not in the CSV and are left out: 00000001_000.png" in notes
    assert "1 CSV row(s) name files not found" in notes and "99999999_000.png" in notes


def test_nih_count_selection_is_seeded(kaggle_root):
    picked = [r.image_id for r in NihSource(str(kaggle_root), count=3, seed=1).records()]
    assert picked == [r.image_id for r in NihSource(str(kaggle_root), count=3, seed=1).records()]
    assert len(picked) == 3 and picked == sorted(picked)
    seeds = {
        tuple(r.image_id for r in NihSource(str(kaggle_root), count=3, seed=s).records()) for s in range(8)
    }
    assert len(seeds) > 1


def test_nih_bad_csv_and_empty_root(tmp_path, kaggle_root):
    (kaggle_root / "Data_Entry_2017.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="lacks column"):
        NihSource(str(kaggle_root)).records()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG images"):
        NihSource(str(tmp_path / "empty")).records()


def test_nih_patient_from_name():
    assert nih_patient_from_name("00000013_005.png") == "13"
    assert nih_patient_from_name("scan.png") is None


def test_folder_finds_images_recursively_and_ignores_other_files(tmp_path, image_files):
    tiny_png(image_files, tmp_path / "a" / "x.png")
    tiny_png(image_files, tmp_path / "a" / "deeper" / "y.tiff")
    image_files.dicom(tmp_path / "b" / "scan", np.zeros((20, 20), np.uint16), PatientID="P7")  # no extension
    (tmp_path / "readme.txt").write_text("notes")
    tiny_png(image_files, tmp_path / ".hidden" / "z.png")
    tiny_png(image_files, tmp_path / "out" / "contact_sheet.png")
    source = FolderSource(str(tmp_path), exclude=[str(tmp_path / "out")])
    records = source.records()
    assert [r.image_id for r in records] == ["a/deeper/y.tiff", "a/x.png", "b/scan"]
    assert records[2].patient_id == "P7"
    assert any("ignored 1 file(s)" in note and "readme.txt" in note for note in source.notes)
    assert any("own patient" in note for note in source.notes)
    assert source.decode(records[2]).pixels.shape == (20, 20)


def test_folder_patient_rules(tmp_path, image_files):
    tiny_png(image_files, tmp_path / "anna" / "1.png")
    tiny_png(image_files, tmp_path / "anna" / "sub" / "2.png")
    tiny_png(image_files, tmp_path / "bob" / "00000042_000.png")
    tiny_png(image_files, tmp_path / "loose.png")
    by_rule = {
        rule: [r.patient_id for r in FolderSource(str(tmp_path), patient_from=rule).records()]
        for rule in ("auto", "folder", "file")
    }
    assert by_rule["auto"] == ["anna/1.png", "anna/sub/2.png", "42", "loose.png"]
    assert by_rule["folder"] == ["anna", "anna", "bob", "loose.png"]
    assert by_rule["file"] == ["anna/1.png", "anna/sub/2.png", "bob/00000042_000.png", "loose.png"]


def test_folder_errors_for_missing_empty_and_file_roots(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FolderSource(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        FolderSource(str(tmp_path / "empty")).records()
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        FolderSource(str(tmp_path / "file.png"))
    with pytest.raises(ConfigError, match="root is required") as refused:
        FolderSource("")
    assert refused.value.parameter == "root"


def test_build_source_and_option_checks(tmp_path):
    config = PrepareConfig(source="folder", root=str(tmp_path), out=str(tmp_path / "out"))
    assert isinstance(build_source(config), FolderSource)
    for bad in (
        dict(source="folder", view_position="PA"),
        dict(source="nih", root="", out="x"),
        dict(source="nih", root="r", patient_from="folder"),
        dict(size=8),
        dict(fractions=[0.5, 0.5, 0.5]),
    ):
        values = {"out": "x", **bad}
        with pytest.raises(ConfigError):
            PrepareConfig(**values).check()


def test_render_options_are_converted_by_the_constructor_defaults():
    class Renderer:
        def __init__(
            self, count: int, seed: int = 0, max_rotation: float = 5.0, bones: bool = True, name="a"
        ):
            pass

    options = parse_render_options(["max_rotation=7.5", "bones=false", "name=b"], Renderer)
    assert options == {"max_rotation": 7.5, "bones": False, "name": "b"}
    with pytest.raises(ConfigError, match="max_rotation"):
        parse_render_options(["unknown=1"], Renderer)
    with pytest.raises(ConfigError, match="expected a value like"):
        parse_render_options(["max_rotation=lots"], Renderer)


def test_default_source_gets_its_options_or_a_clear_error(tmp_path, monkeypatch):
    config = PrepareConfig(source="default", out=str(tmp_path), count=3, render_option=["pose_groups=2"])
    config.check()
    source = build_source(config)
    assert source.name == "default" and source.pose_groups == 2 and len(source.records()) == 3
    monkeypatch.setitem(sys.modules, "meddenoise.data.sources.rendered", None)  # as if the module were absent
    with pytest.raises(ConfigError, match="the default source is not available") as refused:
        build_source(config)
    assert refused.value.parameter == "source"
