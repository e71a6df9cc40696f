"""Split claims follow where the patient ids came from: a folder without ids is split by image, and every
place that describes the split says so (prepare.json, `data info`, the report, the privacy audit)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from meddenoise.cli import main
from meddenoise.data import split_claims


def _prepare(root, out, *extra):
    argv = ["prepare", "--source", "folder", "--root", str(root), "--out", str(out), "--size", "32"]
    assert main([*argv, "--workers", "1", "--quiet", *extra]) == 0
    return json.loads((out / "prepare.json").read_text())["params"]


@pytest.fixture
def folders(tmp_path, image_files):
    images = image_files.smooth(12, 40, seed=4)
    anonymous, nih = tmp_path / "anonymous", tmp_path / "nih"
    for index, image in enumerate(images):
        pixels = (image * 255).astype(np.uint8)
        image_files.png(anonymous / f"scan_{index:03d}.png", pixels)
        image_files.png(nih / f"{index // 3 + 1:08d}_{index % 3:03d}.png", pixels)  # 4 patients, 3 studies
    return anonymous, nih


def test_a_folder_without_ids_is_split_by_image_and_says_so(folders, tmp_path, capsys):
    anonymous, _ = folders
    params = _prepare(anonymous, tmp_path / "a")
    assert params["patient_id_origin"] == {"none": 12}
    assert params["split_unit"] == "image: patient ids unknown"
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "a"), "--no-sheet"]) == 0
    printed = capsys.readouterr().out
    assert "split by image: patient ids unknown" in printed
    assert "patients: unknown (12 images, each counted as its own patient)" in printed
    assert "test scores may be optimistic" in printed

    from meddenoise.data.cache import load_prepared
    from meddenoise.evaluation.runs import describe_data
    from meddenoise.report.build import _split_policy_sentence

    sentence = _split_policy_sentence(describe_data(load_prepared(tmp_path / "a")))
    assert "Split by image: patient ids unknown" in sentence and "may be optimistic" in sentence
    assert "no patient has images in two splits" not in sentence

    import types

    from meddenoise.report.build import setup_section
    from meddenoise.report.document import render_markdown

    data = describe_data(load_prepared(tmp_path / "a"))
    setup = render_markdown(setup_section(types.SimpleNamespace(plan={"data": data}, evaluations=[])))
    counts = setup.split("Split policy")[0]
    assert "split by **image: patient ids unknown**" in counts and " patients" not in counts


def test_nih_names_give_patients_and_a_patient_split(folders, tmp_path, capsys):
    _, nih = folders
    params = _prepare(nih, tmp_path / "n")
    assert params["patient_id_origin"] == {"NIH file name": 12}
    assert params["split_unit"] == "patient"
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "n"), "--no-sheet"]) == 0
    printed = capsys.readouterr().out
    assert "split by patient" in printed and "patients: 4" in printed and "optimistic" not in printed


def test_the_effective_unit_covers_every_case():
    unit = split_claims.effective_split_unit
    assert unit("patient", {"none": 3, "DICOM PatientID": 2}) == split_claims.UNIT_MIXED
    assert unit("image", {"NIH CSV": 5}) == "image"
    assert unit("patient", {"rendered (one CT)": 5}, "default") == "pose group"
    assert unit("patient", None) == ""  # not recorded: no claim either way
    assert "may be optimistic" in split_claims.split_sentence({"split_unit": split_claims.UNIT_MIXED})
    assert "not recorded" in split_claims.split_sentence({"split_by": "patient"})


def test_the_privacy_audit_does_not_say_patients_do_not_repeat_when_ids_are_unknown(folders, tmp_path):
    from meddenoise.privacy.audit import run_audit
    from meddenoise.privacy.verdict import markdown_section

    anonymous, _ = folders
    _prepare(anonymous, tmp_path / "a")
    result = run_audit(tmp_path / "a", levels=[0.2], split="all", device="cpu")
    reason = result["levels"][0]["reidentification"]["skipped"]
    assert "patient ids are unknown" in reason and "do not repeat" not in reason
    assert "patient ids unknown: each image counted as its own patient" in markdown_section(result)
