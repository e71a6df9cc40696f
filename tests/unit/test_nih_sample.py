"""The embedded NIH ChestX-ray14 sample: every file matches its recorded sha256, and it holds real patients
with repeat studies, split by patient by `prepare --source nih-sample`."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest

from meddenoise.data.sources.nih_sample import (
    PROVENANCE,
    SAMPLE_CSV,
    checksum_mismatches,
    sample_folder,
)


def test_every_shipped_file_matches_its_recorded_sha256():
    assert checksum_mismatches() == []


def test_a_changed_file_is_caught(tmp_path):
    import shutil

    copy = tmp_path / "sample"
    shutil.copytree(sample_folder(), copy)
    image = next((copy / "images").glob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")
    (copy / "images" / "extra.png").write_bytes(b"x")
    problems = checksum_mismatches(copy)
    assert f"images/{image.name}: sha256 differs" in problems
    assert "images/extra.png: not in PROVENANCE.json" in problems


def test_the_provenance_names_its_sources_and_the_attribution():
    record = json.loads((sample_folder() / PROVENANCE).read_text())
    assert {s["repo"] for s in record["sources"]} == {"dinbe0527/kcr2019d1", "qqto2008/capstone"}
    assert all(len(s["commit"]) == 40 for s in record["sources"])
    assert "nihcc.app.box.com" in record["licence"] and "CVPR 2017" in record["licence"]
    readme = (sample_folder() / "README.md").read_text()
    assert "NIH Clinical Center" in readme and "https://nihcc.app.box.com/v/ChestXray-NIHCC" in readme


def test_the_metadata_has_real_patients_with_repeat_studies():
    with open(sample_folder() / SAMPLE_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_patient = Counter(row["Patient ID"] for row in rows)
    assert len(rows) == len(list((sample_folder() / "images").glob("*.png")))
    assert len(per_patient) >= 200
    assert sum(1 for n in per_patient.values() if n >= 2) >= 50
    for row in rows:  # the file name carries the patient id: 00000013_005.png -> patient 13
        assert int(row["Image Index"].split("_")[0]) == int(row["Patient ID"])


@pytest.mark.slow
def test_prepare_splits_the_sample_by_patient(tmp_path):
    from meddenoise.cli import main
    from meddenoise.data.cache import load_prepared

    out = tmp_path / "nih"
    assert main(["prepare", "--source", "nih-sample", "--size", "64", "--out", str(out), "--quiet"]) == 0
    data = load_prepared(out)
    assert data.images.shape[1:] == (64, 64)
    patients = [row["patient_id"] for row in data.records]
    splits = np.asarray(data.splits)
    by_patient: dict[str, set] = {}
    for patient, split in zip(patients, splits):
        by_patient.setdefault(patient, set()).add(str(split))
    assert len(by_patient) >= 200
    assert sum(1 for n in Counter(patients).values() if n >= 2) >= 50
    assert all(len(s) == 1 for s in by_patient.values()), "a patient in two splits"
    assert data.info["params"]["source"] == "nih-sample"


def test_root_is_refused_for_the_embedded_sample(tmp_path):
    from meddenoise.cli import main

    code = main(["prepare", "--source", "nih-sample", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
