"""`python -m meddenoise prepare` and `data info` end to end, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from time_limits import RUN


def meddenoise(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "meddenoise", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN)


@pytest.fixture
def tiny_folder(tmp_path, image_files) -> Path:
    root = tmp_path / "xrays"
    for index, image in enumerate(image_files.smooth(6, 48, seed=2)):
        image_files.png(root / f"patient{index % 3}" / f"view{index}.png", (image * 255).astype(np.uint8))
    (root / "broken.png").write_bytes(b"\x89PNG broken")
    return root


def test_prepare_then_info(tmp_path, tiny_folder, capsys):
    out = tmp_path / "cache"
    done = meddenoise(
        "prepare", "--source", "folder", "--root", str(tiny_folder), "--out", str(out),
        "--size", "32", "--patient-from", "folder", "--workers", "2", "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "images: 6 of 32x32 uint8" in done.stdout
        and "skipped: 1" in done.stdout
        and "broken.png" in done.stdout
    )
    assert (out / "skipped.csv").is_file() and (out / "config.json").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved["kind"] == "PrepareConfig" and saved["config"]["size"] == 32
    again = meddenoise("prepare", "--source", "folder", "--root", str(tiny_folder), "--out", str(out),
                       "--size", "32", "--patient-from", "folder", "--quiet", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0 and "reused" in again.stdout

    from meddenoise.cli import main  # in this process: `data info` imports torch, a slow start in a new one

    assert main(["data", "info", str(out), "--split", "all"]) == 0
    printed = capsys.readouterr().out
    assert "6 images of 32x32 uint8" in printed and "patients: 3" in printed
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.mode == "L" and sheet.width > 4 * 32  # clean + three noise levels


def test_config_file_and_cli_override(tmp_path, tiny_folder):
    (tmp_path / "prep.toml").write_text(
        f'source = "folder"\nroot = "{tiny_folder}"\nsize = 64\nquiet = true\nallow_empty_split = true\n'
    )
    done = meddenoise("prepare", "--config", "prep.toml", "--size", "16", "--out", "c", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "images: 6 of 16x16" in done.stdout
    # the effective config (file values, command-line winners) is saved next to the outputs
    saved = json.loads((tmp_path / "c" / "config.json").read_text())["config"]
    assert (saved["source"], saved["root"], saved["size"], saved["out"]) == (
        "folder",
        str(tiny_folder),
        16,
        "c",
    )
    assert saved["quiet"] is True and saved["split_by"] == "patient"  # from the file, and a default
    assert json.loads((tmp_path / "c" / "prepare.json").read_text())["params"]["size"] == 16


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "folder", "--root", "does/not/exist"], "image folder does/not/exist does not exist"),
        (["--source", "nih"], "root is required for the nih source"),
        (["--source", "folder", "--root", "EMPTY"], "no image files"),
        (["--source", "folder", "--root", "ROOT", "--view-position", "PA"], "applies to the nih source only"),
    ],
)
def test_bad_input_gives_a_message_not_a_traceback(tmp_path, tiny_folder, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")).replace("ROOT", str(tiny_folder)) for a in args]
    done = meddenoise("prepare", *args, "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("meddenoise prepare: error:") and message in done.stderr
    assert "Traceback" not in done.stderr
    # the library names the parameter; the CLI adds the flag to change
    assert done.stderr.rstrip().endswith("(--view-position)" if "PA" in args else "(--root)")


def test_unwritable_out_and_not_prepared_folder(tmp_path, tiny_folder):
    (tmp_path / "file").write_text("x")
    done = meddenoise("prepare", "--source", "folder", "--root", str(tiny_folder), "--out", "file/sub",
                      "--quiet", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "cannot create output folder" in done.stderr
    info = meddenoise("data", "info", str(tiny_folder), cwd=tmp_path)
    assert info.returncode == 2 and "holds image files, not a prepared folder" in info.stderr
    assert f"meddenoise prepare --source folder --root {tiny_folder} --out NEW_FOLDER" in info.stderr


def test_help_explains_every_option(tmp_path):
    done = meddenoise("prepare", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for flag in (
        "--source",
        "--root",
        "--count",
        "--size",
        "--split-by",
        "--seed",
        "--strict",
        "--workers",
        "--out",
    ):
        assert flag in done.stdout


def test_more_bad_inputs_in_process(tmp_path, tiny_folder, capsys):
    import torch

    from meddenoise.cli import main

    (tmp_path / "typo.toml").write_text('source = "folder"\nsizee = 32\n')
    common = ["prepare", "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"]
    cases = [
        (
            ["--config", str(tmp_path / "typo.toml")],
            "unknown key(s) in " + str(tmp_path / "typo.toml") + ": sizee",
        ),
        (
            ["--source", "folder", "--root", str(tiny_folder), "--size", "8"],
            "size must be between 16 and 8192 pixels; got 8 (--size)",
        ),
        (
            ["--source", "folder", "--root", str(tiny_folder), "--strict"],
            "strict: 1 of 7 image(s) could not",
        ),
        (
            ["--source", "folder", "--root", str(tiny_folder / "patient0" / "view0.png")],
            "is a file, not a folder",
        ),
    ]
    if not torch.cuda.is_available():
        cases.append((["--source", "default", "--device", "cuda"], "CUDA is not available here"))
    for args, message in cases:
        assert main([*common, *args]) == 2, args
        error = capsys.readouterr().err
        assert error.startswith("meddenoise prepare: error:") and message in error, error
    assert "broken.png" in (tmp_path / "out" / "skipped.csv").read_text()  # --strict still lists the file


def test_nih_csv_that_misses_files_and_names_absent_ones_is_reported(tmp_path, image_files, capsys):
    from meddenoise.cli import main

    root = tmp_path / "nih"
    names = ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    for index, name in enumerate(names):
        image_files.png(root / "images" / name, np.full((24, 24), 40 * index, np.uint8))
    rows = ["Image Index,Patient ID,View Position", "00000001_000.png,1,PA", "00000002_000.png,2,PA"]
    (root / "Data_Entry_2017.csv").write_text("\n".join([*rows, "00000099_000.png,99,PA"]) + "\n")
    out = tmp_path / "prepared"
    argv = ["prepare", "--source", "nih", "--root", str(root), "--out", str(out), "--size", "16"]
    assert main([*argv, "--allow-empty-split"]) == 0
    printed = capsys.readouterr().out
    assert "images: 2 of 16x16" in printed
    assert "note: 1 PNG file(s) are not in the CSV and are left out: 00000001_001.png" in printed
    assert "note: 1 CSV row(s) name files not found" in printed and "00000099_000.png" in printed


def test_prepare_without_patient_ids_never_says_split_by_patient(tmp_path, image_files, capsys):
    root = tmp_path / "flat"
    for index, image in enumerate(image_files.smooth(8, 40, seed=4)):
        image_files.png(root / f"scan{index}.png", (image * 255).astype(np.uint8))
    from meddenoise.cli import main

    argv = ["prepare", "--source", "folder", "--root", str(root), "--out", str(tmp_path / "cache")]
    assert main([*argv, "--size", "32", "--workers", "1", "--quiet", "--allow-empty-split"]) == 0
    printed = capsys.readouterr().out
    assert "split by: image: patient ids unknown" in printed and "split by: patient" not in printed
