"""`meddenoise.obfuscate` and `meddenoise.denoise` called from Python (no CLI) on tiny generated data: real
outputs, the same as the commands write."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import meddenoise
from conftest import IDENTIFIABLE_COUNT, IDENTIFIABLE_SIZE, IDENTIFYING_STRINGS, write_identifiable_prepared
from meddenoise.cli import main
from meddenoise.data.cache import load_prepared
from meddenoise.engine.checkpoint import save_weights
from meddenoise.errors import ConfigError
from meddenoise.models import build_model

COUNT, SIZE = IDENTIFIABLE_COUNT, IDENTIFIABLE_SIZE


@pytest.fixture
def prepared(tmp_path) -> Path:
    return write_identifiable_prepared(tmp_path / "prepared")


def test_obfuscate_from_python_releases_every_image_and_no_clean_pixel_or_id(tmp_path, prepared):
    result = meddenoise.obfuscate(
        data=str(prepared),
        out=str(tmp_path / "export"),
        private_map=str(tmp_path / "map.csv"),
        noise=meddenoise.NoiseSpec(std=0.1),
        copies=2,
        device="cpu",
    )
    assert result.out == (tmp_path / "export").resolve() and result.private_map.is_file()
    assert (result.images, result.copies, result.noise_level) == (COUNT, 2, "gaussian_m0.1_s0.1")
    assert not result.chosen_seed
    released = {folder: sorted((result.out / folder).glob("*.png")) for folder in ("copy1", "copy2")}
    assert all(len(files) == COUNT for files in released.values())
    assert json.loads((result.out / "export.json").read_text())["images"] == COUNT

    data = load_prepared(prepared)
    identifying = {*IDENTIFYING_STRINGS, str(prepared)}
    for row in data.records:
        identifying |= {row["image_id"], row["patient_id"], row["source_path"], row["image_key"]}
    seed = json.loads(result.private_config.read_text())["config"]["noise"]["seed"]
    identifying.add(str(seed))  # drawn from the operating system, kept private
    for path in result.out.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(secret.encode() in content or secret in path.name for secret in identifying)
    clean = data.images.astype(np.float64) / 255.0
    for files in released.values():
        for file in files:
            with Image.open(file) as image:
                stored = np.array(image) / 65535.0
            # far from every clean image (noise std 0.1, mean 0.1): no clean pixels were released
            assert np.abs(stored[None] - clean).mean(axis=(1, 2)).min() > 0.05

    with open(result.private_map, newline="") as handle:
        mapping = list(csv.DictReader(handle))
    assert sorted(row["image_id"] for row in mapping) == sorted(row["image_id"] for row in data.records)


def test_obfuscate_from_python_refuses_a_private_map_inside_the_export(tmp_path, prepared):
    with pytest.raises(ConfigError) as raised:
        meddenoise.obfuscate(
            data=str(prepared), out=str(tmp_path / "export"), private_map=str(tmp_path / "export" / "m.csv")
        )
    assert raised.value.parameter == "private_map" and "--" not in str(raised.value)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    options = {"base_channels": 4, "depth": 3}
    path = tmp_path / "tiny.safetensors"
    save_weights(
        path,
        build_model("unet", **options).eval(),
        {"model": "unet", "model_options": options, "noise": {"kind": "gaussian", "std": 0.2}},
    )
    return path


def test_denoise_from_python_returns_arrays_equal_to_what_the_cli_writes(tmp_path, checkpoint):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 40, 36), dtype=np.uint8)
    options = {"device": "cpu", "tile": 32, "overlap": 8}

    stack = meddenoise.denoise(images, checkpoint, **options)
    assert stack.shape == images.shape and stack.dtype == np.uint8
    single = meddenoise.denoise(images[0], checkpoint, **options)
    assert single.shape == (40, 36) and np.array_equal(single, stack[0])
    floats = meddenoise.denoise(images.astype(np.float32) / 255.0, checkpoint, **options)
    assert floats.dtype == np.float32 and floats.shape == images.shape
    assert floats.min() >= 0.0 and floats.max() <= 1.0
    assert np.array_equal(np.round(floats * 255).astype(np.uint8), stack)

    inputs = tmp_path / "in"
    inputs.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(inputs / f"x{index}.png")
    out = tmp_path / "out"
    argv = ["denoise", str(inputs), "--run", str(checkpoint), "--out", str(out), "--tile", "32"]
    assert main([*argv, "--overlap", "8", "--device", "cpu", "--quiet"]) == 0
    for index in range(len(images)):
        with Image.open(out / f"x{index}.png") as written:
            assert np.array_equal(np.array(written), stack[index])

    summary = meddenoise.denoise(inputs, checkpoint, out=tmp_path / "out-py", **options)
    outputs = [Path(item["output"]) for item in summary["written"]]
    assert [path.name for path in outputs] == ["x0.png", "x1.png"] and not summary["failed"]
    for index, path in enumerate(outputs):
        with Image.open(path) as written:
            assert np.array_equal(np.array(written), stack[index])


def test_denoise_from_python_names_parameters_in_errors(checkpoint):
    with pytest.raises(ConfigError) as raised:
        meddenoise.denoise(np.zeros((16, 16), np.float32), checkpoint, tile=4)
    assert raised.value.parameter == "tile" and "--" not in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        meddenoise.denoise(np.zeros((16, 16), np.int32), checkpoint, device="cpu")
    assert raised.value.parameter == "inputs"
    with pytest.raises(ConfigError) as raised:
        meddenoise.denoise([str(checkpoint)], checkpoint)
    assert raised.value.parameter == "out"


def test_denoise_from_python_warns_about_arrays_unlike_the_training_inputs(tmp_path):
    options = {"base_channels": 4, "depth": 3}
    profile = {"of": "noisy training inputs", "images": 8, "size": [16, 16], "noise_std_estimate": 0.2}
    path = tmp_path / "profiled.safetensors"
    metadata = {"model": "unet", "model_options": options, "input_profile": profile}
    save_weights(path, build_model("unet", **options).eval(), metadata)
    noisy = np.clip(0.5 + np.random.default_rng(0).normal(0, 0.2, (16, 16)), 0, 1).astype(np.float32)
    clean = np.full((16, 16), 0.5, np.float32)
    with pytest.warns(UserWarning, match=r"image 1 is unlike .* it looks un-obfuscated") as caught:
        meddenoise.denoise(np.stack([noisy, clean]), path, device="cpu")
    flagged = [
        str(warning.message).split(" is unlike")[0] for warning in caught if "unlike" in str(warning.message)
    ]
    assert flagged == ["image 1"]
