"""`meddenoise obfuscate` through the real CLI: layout, values, secrecy of the map and seed, clean errors."""

from __future__ import annotations

import csv
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import IDENTIFIABLE_COUNT, IDENTIFIABLE_SIZE, IDENTIFYING_STRINGS, write_identifiable_prepared
from meddenoise.cli import main
from meddenoise.commands.obfuscate import ObfuscateConfig
from meddenoise.config import load_config
from meddenoise.data.cache import load_prepared
from meddenoise.noise import build_noise

COUNT, SIZE = IDENTIFIABLE_COUNT, IDENTIFIABLE_SIZE


@pytest.fixture
def prepared(tmp_path) -> Path:
    return write_identifiable_prepared(tmp_path / "prepared-ward7")


def export(tmp_path: Path, prepared: Path, *options: str, name: str = "export") -> tuple[Path, Path]:
    out, private_map = tmp_path / name, tmp_path / f"{name}-private-map.csv"
    code = main(
        ["obfuscate", "--data", str(prepared), "--out", str(out), "--private-map", str(private_map), *options]
    )
    assert code == 0
    return out, private_map


def read_map(private_map: Path) -> dict[str, dict[str, str]]:
    with open(private_map, newline="") as handle:
        return {row["export_id"]: row for row in csv.DictReader(handle)}


def expected_noisy(prepared: Path, image_id: str, seed: int, **noise) -> torch.Tensor:
    data = load_prepared(prepared)
    index = next(i for i, row in enumerate(data.records) if row["image_id"] == image_id)
    clean = torch.from_numpy(data.images[index : index + 1].astype(np.float32) / data.max_value).unsqueeze(1)
    return build_noise(**noise)(clean, data.image_keys[index : index + 1], seed=seed)[0, 0]


def png_chunk_types(payload: bytes) -> list[bytes]:
    assert payload[:8] == b"\x89PNG\r\n\x1a\n"
    position, types = 8, []
    while position < len(payload):
        (length,) = struct.unpack(">I", payload[position : position + 4])
        types.append(payload[position + 4 : position + 8])
        position += 12 + length
    return types


def test_png16_export_layout_and_values_round_trip(tmp_path, prepared, capsys):
    # (--print-config now prints and exits; that the seed stays hidden there is checked in
    # tests/unit/test_option_validation.py)
    out, private_map = export(
        tmp_path, prepared, "--noise-seed", "5", "--noise-std", "0.1", "--device", "cpu"
    )
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "copy1", "export.json", "index.csv"]
    files = sorted((out / "copy1").iterdir())
    assert len(files) == COUNT and all(re.fullmatch(r"[0-9a-f]{16}\.png", f.name) for f in files)
    mapping = read_map(private_map)
    assert {f"{export_id}.png" for export_id in mapping} == {f.name for f in files}
    for file in files:
        assert png_chunk_types(file.read_bytes()) == [b"IHDR", b"IDAT", b"IEND"]  # no text/time chunks
        with Image.open(file) as image:
            stored = np.array(image).astype(np.int64)
        expected = expected_noisy(prepared, mapping[file.stem]["image_id"], seed=5, std=0.1).numpy()
        assert stored.shape == (SIZE, SIZE) and stored.min() >= 0 and stored.max() <= 65535
        assert np.abs(stored / 65535 - expected).max() <= 0.5 / 65535 + 1e-6
    description = json.loads((out / "export.json").read_text())
    assert description["noise"]["noise_level"] == "gaussian_m0.1_s0.1" and description["images"] == COUNT
    assert description["splits"] == {"train": 2, "val": 2, "test": 2}
    with open(out / "index.csv", newline="") as handle:
        index = list(csv.DictReader(handle))
    assert [row["export_id"] for row in index] == sorted(mapping)  # ordered by random id, not by patient
    assert all(row["split"] == mapping[row["export_id"]]["split"] for row in index)


def test_nothing_identifying_leaves_with_the_export(tmp_path, prepared):
    out, private_map = export(tmp_path, prepared, "--noise-seed", "123456789", "--copies", "2")
    data = load_prepared(prepared)
    secrets_ = {str(prepared), prepared.name, private_map.name, "123456789", *IDENTIFYING_STRINGS}
    for row in data.records:
        secrets_ |= {row["image_id"], row["patient_id"], row["source_path"], row["image_key"]}
    map_text = private_map.read_text()
    assert all(row["patient_id"] in map_text and row["source_path"] in map_text for row in data.records)
    exported = [path for path in out.rglob("*") if path.is_file()]
    assert len(exported) == 3 + 2 * COUNT
    for path in exported:
        content = path.read_bytes()
        for secret in secrets_:
            assert secret.encode() not in content, (path.name, secret)
            assert secret not in str(path.relative_to(out)), secret
    private_config = load_config(ObfuscateConfig, Path(f"{private_map}.config.json"))
    assert private_config.noise.seed == 123456789


def test_two_copies_share_ids_and_differ_in_noise(tmp_path, prepared):
    out, private_map = export(tmp_path, prepared, "--noise-seed", "9", "--copies", "2", "--device", "cpu")
    mapping = read_map(private_map)
    assert sorted(p.name for p in (out / "copy1").iterdir()) == sorted(
        p.name for p in (out / "copy2").iterdir()
    )
    export_id = sorted(mapping)[0]
    image_id = mapping[export_id]["image_id"]
    assert mapping[export_id]["files"] == f"copy1/{export_id}.png;copy2/{export_id}.png"
    for copy, seed in ((1, 9), (2, 9 + 7919)):  # NoiseSpec.copy_seed, as training targets use it
        with Image.open(out / f"copy{copy}" / f"{export_id}.png") as image:
            stored = np.array(image) / 65535
        assert np.abs(stored - expected_noisy(prepared, image_id, seed=seed).numpy()).max() <= 1e-5


def test_npy16_keeps_unclamped_values_in_float16(tmp_path, prepared):
    out, private_map = export(
        tmp_path, prepared, "--noise-seed", "1", "--format", "npy16", "--no-noise-clamp", "--noise-std", "0.3"
    )
    mapping = read_map(private_map)
    values = []
    for export_id, row in mapping.items():
        array = np.load(out / "copy1" / f"{export_id}.npy", allow_pickle=False)
        assert array.dtype == np.float16 and array.shape == (SIZE, SIZE)
        expected = expected_noisy(prepared, row["image_id"], seed=1, std=0.3, clamp=False).numpy()
        assert np.allclose(array.astype(np.float32), expected, rtol=1e-3, atol=1e-3)
        values.append(array)
    assert min(v.min() for v in values) < 0 and max(v.max() for v in values) > 1


def test_split_and_poisson_noise(tmp_path, prepared):
    out, private_map = export(
        tmp_path, prepared, "--split", "test", "--noise-kind", "poisson", "--noise-dose", "200"
    )
    mapping = read_map(private_map)
    assert len(mapping) == 2 and {row["split"] for row in mapping.values()} == {"test"}
    description = json.loads((out / "export.json").read_text())
    assert description["noise"]["kind"] == "poisson" and description["noise"]["dose"] == 200.0


def test_default_seed_is_fresh_secret_and_recorded_privately(tmp_path, prepared):
    out_a, map_a = export(tmp_path, prepared, name="a")
    out_b, map_b = export(tmp_path, prepared, name="b")
    seeds = [load_config(ObfuscateConfig, Path(f"{m}.config.json")).noise.seed for m in (map_a, map_b)]
    assert seeds[0] != seeds[1]
    assert not set(read_map(map_a)) & set(read_map(map_b))  # ids are random, not derived from image ids
    export_id, row = next(iter(read_map(map_a).items()))
    with Image.open(out_a / "copy1" / f"{export_id}.png") as image:
        stored = np.array(image) / 65535
    assert np.abs(stored - expected_noisy(prepared, row["image_id"], seed=seeds[0]).numpy()).max() <= 1e-5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--no-noise-clamp"], "npy16"),
        (["--noise-kind", "poisson"], "--noise-dose"),
        (["--noise-std", "-0.2"], "--noise-std"),
        (["--batch-size", "0"], "--batch-size"),
        (["--device", "cuda:7"], "--device"),
    ],
)
def test_bad_options_give_clean_errors(tmp_path, prepared, capsys, options, message):
    if "cuda:7" in options and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "out"
    argv = ["obfuscate", "--data", str(prepared), "--out", str(out), "--private-map", str(tmp_path / "m.csv")]
    assert main([*argv, *options]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "m.csv").exists()


def test_unsafe_paths_are_refused(tmp_path, prepared, capsys):
    out = tmp_path / "export"
    base = ["obfuscate", "--data", str(prepared), "--out", str(out)]
    assert main([*base, "--private-map", str(out / "map.csv")]) == 2
    assert "inside the export folder" in capsys.readouterr().err
    assert not (out / "map.csv").exists()

    existing_map = tmp_path / "old-map.csv"
    existing_map.write_text("export_id\n")
    assert main([*base, "--private-map", str(existing_map)]) == 2
    assert "already exists" in capsys.readouterr().err

    out.mkdir(exist_ok=True)
    (out / "leftover.png").write_bytes(b"x")
    assert main([*base, "--private-map", str(tmp_path / "new-map.csv")]) == 2
    assert "not empty" in capsys.readouterr().err

    missing = ["obfuscate", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")]
    assert main([*missing, "--private-map", str(tmp_path / "m2.csv")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_private_config_files_from_before_the_noise_group_still_load(tmp_path):
    old = {
        "kind": "ObfuscateConfig",
        "config": {
            "data": "d",
            "out": "o",
            "private_map": "m.csv",
            "noise": "poisson",
            "noise_mean": 0.1,
            "noise_std": 0.2,
            "noise_dose": 300.0,
            "clamp": True,
            "image_format": "png16",
            "split": "all",
            "seed": 77,
            "copies": 2,
            "batch_size": 64,
            "device": "auto",
        },
    }
    path = tmp_path / "m.csv.config.json"
    path.write_text(json.dumps(old))
    noise = load_config(ObfuscateConfig, path).noise
    assert (noise.kind, noise.dose, noise.seed, noise.clamp) == ("poisson", 300.0, 77, True)
    assert noise.copy_seed(1) == 77 + 7919


def test_options_from_a_toml_file_with_command_line_winning(tmp_path, prepared):
    config_file = tmp_path / "obfuscate.toml"
    config_file.write_text('split = "val"\n[noise]\nstd = 0.3\nmean = 0.05\nseed = 4\n')
    out, private_map = export(tmp_path, prepared, "--config", str(config_file), "--noise-seed", "8")
    noise = json.loads((out / "export.json").read_text())["noise"]
    assert noise["noise_level"] == "gaussian_m0.05_s0.3"
    saved = load_config(ObfuscateConfig, Path(f"{private_map}.config.json"))
    assert (saved.noise.seed, saved.split, saved.noise.std) == (8, "val", 0.3)
    assert len(read_map(private_map)) == 2
