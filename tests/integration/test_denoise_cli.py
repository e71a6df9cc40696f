"""`meddenoise denoise` on PNG 8-bit, PNG 16-bit and DICOM inputs: bit depth kept, tiles for any size,
bad files
skipped with a summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meddenoise.cli import main
from meddenoise.engine.checkpoint import save_weights
from meddenoise.models import build_model

pydicom = pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random (untrained) tiny U-Net saved the way the engine saves weights."""
    torch.manual_seed(0)
    options = {"base_channels": 4, "depth": 3}
    model = build_model("unet", **options).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_weights(
        path, model, {"model": "unet", "model_options": options, "noise": {"kind": "gaussian", "std": 0.2}}
    )
    return path


def _write_png(path, array):
    Image.fromarray(array).save(path)


def _write_dicom(path, stored: np.ndarray, photometric: str = "MONOCHROME2"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientID = "P-123"
    dataset.Modality = "CR"
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    dataset.WindowCenter, dataset.WindowWidth = 1000, 3000
    dataset.PixelData = stored.astype(np.uint16).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    _write_png(folder / "eight.png", rng.integers(0, 256, (40, 52), dtype=np.uint8))
    _write_png(folder / "sub" / "sixteen.png", rng.integers(0, 65536, (36, 36), dtype=np.uint16))
    _write_dicom(folder / "xray.dcm", rng.integers(0, 4096, (48, 40)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_in_folder_out_keeps_bit_depth_and_skips_bad_files(checkpoint, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            "denoise",
            str(inputs),
            "--run",
            str(checkpoint),
            "--out",
            str(out),
            "--tile",
            "32",
            "--overlap",
            "8",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert status == 1  # one input (broken.png) failed
    eight = Image.open(out / "eight.png")
    assert eight.mode == "L" and eight.size == (52, 40)
    sixteen = Image.open(out / "sub" / "sixteen.png")
    assert sixteen.mode.startswith("I;16") and sixteen.size == (36, 36)
    original = pydicom.dcmread(inputs / "xray.dcm")
    written = pydicom.dcmread(out / "xray.dcm")
    assert written.pixel_array.shape == (48, 40) and written.pixel_array.dtype == original.pixel_array.dtype
    assert written.BitsStored == 12 and float(written.RescaleIntercept) == -1024
    assert written.PatientID == "P-123" and written.SOPInstanceUID != original.SOPInstanceUID
    assert written.pixel_array.max() <= 4095
    assert not np.array_equal(written.pixel_array, original.pixel_array)
    summary = json.loads((out / "denoise_summary.json").read_text())
    assert len(summary["written"]) == 3
    assert [s["file"] for s in summary["failed"]] == [str(inputs / "broken.png")]
    assert "broken.png" in capsys.readouterr().out


def test_dicom_round_trip_of_an_unchanged_image_restores_stored_values(tmp_path):
    from meddenoise.imageio import dicom_bytes, read_image

    stored = np.random.default_rng(1).integers(0, 4096, (32, 32))
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        path = tmp_path / f"{photometric}.dcm"
        _write_dicom(path, stored, photometric)
        image = read_image(path)
        written = pydicom.dcmread(__import__("io").BytesIO(dicom_bytes(image, image.pixels, "identity")))
        # float32 display values carry ~1e-7 relative error: the inverse may be off by one stored unit
        assert np.abs(written.pixel_array.astype(int) - stored).max() <= 1


def test_only_unreadable_inputs_is_a_clean_error(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    status = main(
        [
            "denoise",
            str(bad),
            "--run",
            str(checkpoint),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert status == 2
    assert "no image could be denoised" in capsys.readouterr().err


def test_missing_input_is_a_clean_error(checkpoint, tmp_path, capsys):
    status = main(
        ["denoise", str(tmp_path / "nothing"), "--run", str(checkpoint), "--out", str(tmp_path / "o")]
    )
    assert status == 2
    assert "does not exist" in capsys.readouterr().err


def test_inputs_unlike_the_training_inputs_are_flagged_per_file(make_prepared, tiny_fit, tmp_path, capsys):
    from meddenoise.data.cache import load_prepared
    from meddenoise.noise.spec import NoiseSpec

    data_dir = make_prepared(n=24, size=32, patients=12)
    run = tiny_fit(data_dir, tmp_path / "run", epochs=1)
    data = load_prepared(data_dir)
    rows = data.indices("test")[:1]
    clean = torch.from_numpy(data.images[rows].astype(np.float32) / 255.0).unsqueeze(1)
    noisy = NoiseSpec(std=0.2).build()(clean, torch.from_numpy(data.image_keys[rows]), seed=0, mode="fixed")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _write_png(inputs / "like.png", (noisy[0, 0].numpy() * 255).round().astype(np.uint8))
    _write_png(inputs / "bright.png", np.full((32, 32), 245, np.uint8))  # another site's overexposed image
    _write_png(inputs / "clean.png", data.images[rows][0])  # never obfuscated
    big = torch.nn.functional.interpolate(noisy, scale_factor=4, mode="nearest")[0, 0]
    _write_png(inputs / "big.png", (big.numpy() * 255).round().astype(np.uint8))
    out = tmp_path / "out"
    assert main(["denoise", str(inputs), "--run", str(run), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "warning: " + str(inputs / "bright.png") + " is unlike the model's training inputs" in printed
    assert "mean intensity 0.961 is outside the training inputs'" in printed
    assert str(inputs / "like.png") + " is unlike" not in printed
    summary = json.loads((out / "denoise_summary.json").read_text())
    reasons = {Path(item["file"]).name: " ".join(item["reasons"]) for item in summary["unlike_training"]}
    assert sorted(reasons) == ["big.png", "bright.png", "clean.png"]
    assert "it looks un-obfuscated: estimated noise std" in reasons["clean.png"]
    assert "it is 128x128 pixels, the training images were 32x32" in reasons["big.png"]
    profile = summary["training_input_profile"]
    assert profile["of"] == "noisy training inputs" and profile["size"] == [32, 32]
    assert 0.1 < profile["noise_std_estimate"] < 0.3  # the training noise: std 0.2, clamped
    assert len(summary["written"]) == 4  # warnings, not refusals


def test_a_checkpoint_without_a_profile_says_inputs_are_not_checked(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_png(inputs / "a.png", np.full((16, 16), 100, np.uint8))
    assert (
        main(
            [
                "denoise",
                str(inputs),
                "--run",
                str(checkpoint),
                "--out",
                str(tmp_path / "o"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "inputs not checked" in capsys.readouterr().out


def test_a_disk_that_fills_at_the_summary_keeps_and_lists_the_written_images(
    checkpoint, tmp_path, monkeypatch, capsys
):
    """Issue 23, row 20: denoise on a disk that filled at the end: OSError traceback writing config.json."""
    import errno

    from meddenoise import fileio

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        _write_png(inputs / name, np.full((32, 32), 100, np.uint8))

    def full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "atomic_write_json", full)
    out = tmp_path / "out"
    assert main(["denoise", str(inputs), "--run", str(checkpoint), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"writing the summary in {out} failed: No space left on device" in err
    assert "the 2 denoised image(s) written are kept:" in err and str(out / "a.png") in err
    assert (out / "a.png").is_file() and (out / "b.png").is_file()
