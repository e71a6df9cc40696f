"""Bad files never stop a batch: denoise lists every per-file failure and goes on; oversize images are refused
from their header before decoding (denoise and prepare); a prepare that empties a split is an error."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch

from meddenoise.cli import main
from meddenoise.data.decode import DEFAULT_MAX_PIXELS
from meddenoise.engine.checkpoint import save_weights
from meddenoise.models import build_model


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header announces width x height 8-bit gray pixels (a decompression bomb's header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1))  # one row of data; the rest would be inflated from nothing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_the_default_pixel_limit_is_pillows():
    from PIL import Image

    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    options = {"base_channels": 4, "depth": 3}
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_weights(path, build_model("unet", **options).eval(), {"model": "unet", "model_options": options})
    return path


def test_denoise_lists_every_failing_file_and_finishes_the_batch(checkpoint, tmp_path, image_files, capsys):
    rng = np.random.default_rng(0)
    inputs, out = tmp_path / "in", tmp_path / "out"
    image_files.png(inputs / "a_good.png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    (inputs / "b_bomb.png").write_bytes(png_claiming(30000, 30000))
    image_files.dicom(
        inputs / "c_huge.dcm", rng.integers(0, 4096, (32, 32)).astype(np.uint16), Rows=20000, Columns=20000
    )
    image_files.png(inputs / "d_good.png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    image_files.png(inputs / "e_unwritable.png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    (out / "e_unwritable.png").mkdir(parents=True)  # a folder where the output file should go
    argv = ["denoise", str(inputs), "--run", str(checkpoint), "--out", str(out), "--tile", "32"]
    status = main([*argv, "--overlap", "8", "--device", "cpu", "--quiet"])
    printed = capsys.readouterr()
    assert status == 1, printed.err
    summary = json.loads((out / "denoise_summary.json").read_text())
    assert [item["input"] for item in summary["written"]] == [
        str(inputs / "a_good.png"),
        str(inputs / "d_good.png"),
    ]
    failed = {item["file"].rsplit("/", 1)[1]: item for item in summary["failed"]}
    assert sorted(failed) == ["b_bomb.png", "c_huge.dcm", "e_unwritable.png"]
    assert "30000x30000 pixels (900.0 megapixels), above the limit" in failed["b_bomb.png"]["reason"]
    assert "20000x20000 pixels (400.0 megapixels), above the limit" in failed["c_huge.dcm"]["reason"]
    assert failed["e_unwritable.png"]["stage"] == "write"
    assert "cannot write the output" in failed["e_unwritable.png"]["reason"]
    for name in failed:
        assert name in printed.out
    assert "3 of 5 file(s) failed" in printed.err and "Traceback" not in printed.err


def test_prepare_refuses_images_above_the_pixel_limit_before_decoding(tmp_path, image_files, capsys):
    root, out = tmp_path / "xrays", tmp_path / "cache"
    for index, image in enumerate(image_files.smooth(6, 48)):
        image_files.png(root / f"patient{index}" / "view.png", (image * 255).astype(np.uint8))
    image_files.png(root / "patient6" / "large.png", np.zeros((64, 64), np.uint8))  # 4096 pixels
    (root / "patient7").mkdir()
    (root / "patient7" / "bomb.png").write_bytes(png_claiming(12000, 12000))  # 144 megapixels
    argv = ["prepare", "--source", "folder", "--root", str(root), "--out", str(out), "--size", "16"]
    assert main([*argv, "--patient-from", "folder", "--workers", "1", "--max-pixels", "3000", "--quiet"]) == 0
    skipped = (out / "skipped.csv").read_text()
    assert "large.png is 64x64 pixels (0.0 megapixels), above the limit of 0.0 megapixels" in skipped
    assert "bomb.png is 12000x12000 pixels (144.0 megapixels), above the limit" in skipped
    assert "images: 6 of 16x16" in capsys.readouterr().out
    # With the default limit the 64 x 64 image is fine; the 144-megapixel one is still refused.
    assert main([*argv, "--patient-from", "folder", "--workers", "1", "--quiet"]) == 0
    skipped = (out / "skipped.csv").read_text()
    assert "large.png" not in skipped and "bomb.png is 12000x12000 pixels" in skipped


def folder_of_patients(root, image_files, patients: int):
    for index, image in enumerate(image_files.smooth(2 * patients, 32)):
        image_files.png(
            root / f"patient{index % patients}" / f"view{index}.png", (image * 255).astype(np.uint8)
        )


def test_a_prepare_that_leaves_a_split_empty_is_an_error(tmp_path, image_files, capsys):
    root, out = tmp_path / "xrays", tmp_path / "cache"
    folder_of_patients(root, image_files, patients=2)  # two patients cannot fill three splits
    argv = ["prepare", "--source", "folder", "--root", str(root), "--out", str(out), "--size", "16"]
    argv += ["--patient-from", "folder", "--workers", "1", "--quiet"]
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert "split of" in message and "would be empty" in message and "allow_empty_split" in message
    assert message.rstrip().endswith("(--fractions)")
    assert not (out / "prepare.json").exists()
    assert main([*argv, "--allow-empty-split"]) == 0
    assert "warning: empty split(s)" in capsys.readouterr().out
    # An empty train split is never accepted.
    assert main([*argv, "--allow-empty-split", "--fractions", "0", "0.5", "0.5", "--force"]) == 2
    assert "the train split" in capsys.readouterr().err
