"""Release an obfuscated copy of a prepared dataset for sharing (paper: "Site One"); `meddenoise obfuscate`
is a thin command over `obfuscate()`.

What leaves (the export folder): noisy images named by random ids, an index of ids and splits, the noise
parameters. What stays (the private files, outside the export): the id -> image/patient/source map, the noise
seed and the effective config. The seed is secret because fixed noise is a pure function of (seed, image id,
level): whoever knows the seed and can guess image ids can regenerate the noise and subtract it.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import secrets
import struct
import zlib
from pathlib import Path
from typing import Any, ClassVar

from meddenoise import __version__
from meddenoise.config import (
    config_from_mapping,
    config_to_dict,
    option,
    print_config_option,
    quiet_option,
    validate_config,
)
from meddenoise.errors import ConfigError
from meddenoise.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, ensure_writable_dir
from meddenoise.locking import LOCK_NAME, folder_lock
from meddenoise.noise.spec import NoiseSpec

PNG16_SCALE = 65535
EXPORT_FORMAT = "meddenoise-obfuscated-export"
EXPORT_VERSION = 1


@dataclasses.dataclass
class ObfuscateConfig:
    # Names in private config files written before the noise settings became one group.
    LEGACY_KEYS: ClassVar[dict[str, str]] = {"clamp": "noise_clamp", "seed": "noise_seed"}

    data: str = option("", "prepared folder to export (written by `meddenoise prepare`)", required=True)
    out: str = option(
        "", "export folder to create (new or empty); everything in it is meant to be shared", required=True
    )
    private_map: str = option(
        "",
        "CSV file OUTSIDE the export folder that maps export ids to image ids, patients and source paths "
        "(FILE.config.json, with the secret seed, is written next to it); keep both private",
        required=True,
    )
    noise: NoiseSpec = option(
        NoiseSpec(),
        "the obfuscation (fixed noise). Without --noise-seed a fresh random secret seed is drawn; anyone who "
        "knows the seed and the image ids can remove the noise, so it is written only to the private files",
    )
    image_format: str = option(
        "png16",
        "png16: 16-bit grayscale PNG, value = pixel / 65535; npy16: float16 .npy (keeps unclamped values)",
        choices=("png16", "npy16"),
        flag="--format",
    )
    split: str = option(
        "all", "which images to export: all, train, val or test", choices=("all", "train", "val", "test")
    )
    copies: int = option(
        1, "independently obfuscated copies per image (2 lets the receiver train noise2noise)", choices=(1, 2)
    )
    batch_size: int = option(64, "images obfuscated per batch")
    device: str = option("auto", "where the noise is made: auto, cpu, cuda or cuda:N (same result on each)")
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1; got {self.batch_size}", "batch_size")
        if self.noise.mode != "fixed":
            raise ConfigError(
                "an export holds one obfuscated copy per image: noise.mode must be 'fixed'", "noise.mode"
            )
        if self.image_format == "png16" and not self.noise.clamp:
            raise ConfigError(
                "image_format png16 stores values in [0, 1] only; use npy16 to keep unclamped values",
                "image_format",
            )


@dataclasses.dataclass(frozen=True)
class ObfuscateResult:
    """What `obfuscate` wrote: the public export folder and the two private files that must not leave."""

    out: Path  # the export folder, everything in it meant to be shared
    private_map: Path  # export id -> image id, patient, source path (private)
    private_config: Path  # the effective config with the secret seed (private)
    images: int  # images exported (each in `copies` folders)
    copies: int
    noise_level: str
    image_format: str
    chosen_seed: bool  # the seed came from the caller, not from the operating system


def obfuscate(
    config: ObfuscateConfig | None = None, *, keep_seed: bool = False, **options: Any
) -> ObfuscateResult:
    """Export an obfuscated copy of the prepared folder `data` to `out`, and the way back to `private_map`.

    Give an `ObfuscateConfig`, or its fields as keywords (`data=`, `out=`, `private_map=`, `noise=NoiseSpec(
    std=0.1)`, `image_format=`, `split=`, `copies=`, ...; keywords given with a config replace its fields).
    The noise seed is the export's key: unless `keep_seed` is true, a fresh secret seed from the operating
    system replaces `config.noise.seed`, and it is written only to the private config file.
    """
    if config is None:
        config = config_from_mapping(ObfuscateConfig, {"quiet": True, **options}, source="obfuscate()")
    else:  # a copy: checking coerces fields in place, and the caller's config stays as it was
        config = validate_config(dataclasses.replace(config, **options))
    if not keep_seed:
        fresh = dataclasses.replace(config.noise, seed=secrets.randbits(62))
        config = dataclasses.replace(config, noise=fresh)
    out = ensure_writable_dir(Path(config.out).expanduser().resolve(), what="export folder", parameter="out")
    with folder_lock(out):
        return _export(config, chosen_seed=keep_seed)


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """What is exported, decided once: prepared rows, their random ids, and one folder and seed per copy."""

    rows: Any  # (N,) int64 rows of the prepared folder
    export_ids: list[str]  # export_ids[i] names rows[i]
    folders: list[str]  # copy1, copy2, ...
    copy_seeds: list[int]  # the noise seed of each copy
    extension: str  # ".png" or ".npy"

    def files(self, position: int) -> list[str]:
        """Paths (relative to the export folder) of every copy of image `position`."""
        return [f"{folder}/{self.export_ids[position]}{self.extension}" for folder in self.folders]


def _export(config: ObfuscateConfig, chosen_seed: bool) -> ObfuscateResult:
    from meddenoise.data.cache import load_prepared
    from meddenoise.engine.runtime import resolve_device

    operator = config.noise.build()
    out, private_map = check_paths(config)
    device = resolve_device(config.device)
    data = load_prepared(config.data)
    rows = data.indices(config.split)
    if len(rows) == 0:
        raise ConfigError(
            f"split {config.split!r} of {data.folder} has no images; choose another split", "split"
        )
    ensure_writable_dir(out, what="export folder", parameter="out")
    ensure_writable_dir(private_map.parent, what="folder of the private map", parameter="private_map")

    plan = ExportPlan(
        rows=rows,
        export_ids=unique_random_ids(len(rows)),
        folders=[f"copy{copy + 1}" for copy in range(config.copies)],
        # copy c of an export is the noise2noise copy c a training run makes
        copy_seeds=[config.noise.copy_seed(copy) for copy in range(config.copies)],
        extension=".png" if config.image_format == "png16" else ".npy",
    )
    # The secret and the way back to patients are stored before anything is published.
    write_private_files(config, plan, data, operator, private_map)
    write_images(config, plan, data, operator, out, device)
    write_public_files(config, plan, data, operator, out)
    return ObfuscateResult(
        out=out,
        private_map=private_map,
        private_config=private_config_path(private_map),
        images=len(rows),
        copies=config.copies,
        noise_level=operator.noise_level,
        image_format=config.image_format,
        chosen_seed=chosen_seed,
    )


def private_config_path(private_map: Path) -> Path:
    return private_map.with_name(private_map.name + ".config.json")


def check_paths(config: ObfuscateConfig) -> tuple[Path, Path]:
    """The export folder (new or empty) and the private map (new, outside the export); creates nothing."""
    out = Path(config.out).expanduser().resolve()
    private_map = Path(config.private_map).expanduser().resolve()
    if private_map == out or out in private_map.parents:
        raise ConfigError(
            f"private_map {config.private_map} is inside the export folder {config.out}; it links the "
            "export to patients, so put it elsewhere (e.g. next to the prepared folder)",
            "private_map",
        )
    for path in (private_map, private_config_path(private_map)):
        if path.exists():
            raise ConfigError(
                f"{path} already exists (it may link an earlier export to patients); choose a new "
                "private_map or move the old one away",
                "private_map",
            )
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_NAME for p in out.iterdir())):
        raise ConfigError(f"export folder {out} exists and is not empty; choose a new out or empty it", "out")
    return out, private_map


def unique_random_ids(count: int) -> list[str]:
    """`count` distinct ids of 64 random bits from the OS (unrelated to image ids, so nothing to reverse)."""
    ids: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < count:
        candidate = secrets.token_hex(8)
        if candidate not in ids:
            ids.add(candidate)
            ordered.append(candidate)
    return ordered


def write_images(config, plan: ExportPlan, data, operator, out: Path, device) -> None:
    import numpy as np
    import torch

    from meddenoise.console import progress

    for folder in plan.folders:
        ensure_writable_dir(out / folder, what="export folder")
    # Work in a secret random order: file times then say nothing about the prepared order (often by patient).
    order = list(range(len(plan.rows)))
    secrets.SystemRandom().shuffle(order)
    batches = [order[start : start + config.batch_size] for start in range(0, len(order), config.batch_size)]
    for batch in progress(batches, quiet=config.quiet, desc="obfuscate", unit="batch"):
        rows = plan.rows[batch]
        pixels = torch.from_numpy(np.ascontiguousarray(data.images[rows])).to(device)  # (B, H, W) integer
        clean = pixels.unsqueeze(1).float() / float(data.max_value)  # (B, H, W) -> (B, 1, H, W) in [0, 1]
        keys = torch.from_numpy(data.image_keys[rows]).to(device)
        for folder, seed in zip(plan.folders, plan.copy_seeds):
            noisy = operator(clean, keys, seed=seed, mode="fixed")
            encoded = encode_batch(noisy[:, 0], config.image_format)
            for position, payload in zip(batch, encoded):
                atomic_write_bytes(out / folder / f"{plan.export_ids[position]}{plan.extension}", payload)


def encode_batch(noisy, image_format: str) -> list[bytes]:
    """(B, H, W) float noisy images -> one file's bytes each."""
    import numpy as np

    if image_format == "png16":
        # Quantised on the device, so the stored values are the same whichever device made them.
        levels = torch_round_to_uint16(noisy)
        return [encode_png16(image) for image in levels]
    arrays = noisy.to("cpu").numpy().astype(np.float16)
    payloads = []
    for image in arrays:
        buffer = io.BytesIO()
        np.save(buffer, image, allow_pickle=False)
        payloads.append(buffer.getvalue())
    return payloads


def torch_round_to_uint16(noisy):
    """(B, H, W) float in [0, 1] -> (B, H, W) uint16 numpy array of round(value * 65535)."""
    import numpy as np
    import torch

    levels = (noisy.float().clamp(0, 1) * PNG16_SCALE).round().to(torch.int32)
    return levels.to("cpu").numpy().astype(np.uint16)


def encode_png16(image) -> bytes:
    """A 16-bit grayscale PNG holding exactly IHDR, IDAT and IEND: no text, time or other metadata chunks."""
    import numpy as np

    height, width = image.shape
    rows = np.zeros((height, 1 + 2 * width), dtype=np.uint8)  # each row: filter byte 0 (none), then pixels
    rows[:, 1:] = np.ascontiguousarray(image, dtype=">u2").view(np.uint8).reshape(height, 2 * width)
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)  # 16-bit, grayscale, no interlace

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
            chunk(b"IEND", b""),
        ]
    )


def write_private_files(config, plan: ExportPlan, data, operator, private_map: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["export_id", "files", "image_id", "image_key", "patient_id", "source_path", "split"])
    for position, (export_id, row_index) in enumerate(zip(plan.export_ids, plan.rows)):
        row = data.records[int(row_index)]
        files = ";".join(plan.files(position))
        writer.writerow(
            [
                export_id,
                files,
                *(row[key] for key in ("image_id", "image_key", "patient_id", "source_path", "split")),
            ]
        )
    atomic_write_text(private_map, buffer.getvalue())
    # Loadable with meddenoise.config.load_config(ObfuscateConfig, path); the extra keys are for people.
    details = {
        "kind": type(config).__name__,
        "config": config_to_dict(config),
        "noise": operator.describe(),
        "copy_seeds": plan.copy_seeds,
        "prepared_folder": str(Path(data.folder).resolve()),
    }
    atomic_write_json(private_config_path(private_map), details)


def write_public_files(config, plan: ExportPlan, data, operator, out: Path) -> None:
    order = sorted(range(len(plan.export_ids)), key=plan.export_ids.__getitem__)  # by random id: no order
    splits = [data.records[int(row)]["split"] for row in plan.rows]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["export_id", "split", *plan.folders])
    for position in order:
        writer.writerow([plan.export_ids[position], splits[position], *plan.files(position)])
    atomic_write_text(out / "index.csv", buffer.getvalue())
    _, height, width = data.images.shape
    description = public_description(config, operator, len(plan.rows), splits, height, width, plan.folders)
    atomic_write_text(out / "README.txt", readme_text(description))
    atomic_write_json(out / "export.json", description)  # written last: its presence marks a complete export


def public_description(config, operator, count, splits, height, width, folders) -> dict[str, Any]:
    encoding = (
        "16-bit grayscale PNG; intensity = pixel / 65535"
        if config.image_format == "png16"
        else "float16 .npy array (H, W); intensity as stored"
    )
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "meddenoise_version": __version__,
        "created": datetime.date.today().isoformat(),
        "images": count,
        "splits": {name: splits.count(name) for name in ("train", "val", "test")},
        "height": height,
        "width": width,
        "image_format": config.image_format,
        "encoding": encoding,
        "copies": config.copies,
        "copy_folders": folders,
        "noise": {**operator.describe(), "mode": "fixed", "seed": "secret, not part of the export"},
    }


def readme_text(description: dict[str, Any]) -> str:
    noise = description["noise"]
    parameters = ", ".join(
        f"{key} = {value}" for key, value in noise.items() if key not in ("generator", "seed", "mode")
    )
    copies = (
        "Each image appears once, in copy1/."
        if description["copies"] == 1
        else "Each image appears in copy1/ and copy2/ under the same id, with independent noise (usable as "
        "noise2noise pairs)."
    )
    return (
        "Obfuscated chest radiographs, exported by meddenoise obfuscate\n"
        "==============================================================\n\n"
        f"{description['images']} images of {description['width']} x {description['height']} pixels.\n"
        f"Files: {description['encoding']}.\n{copies}\n"
        "index.csv lists each image's random id, its split (train / val / test) and its file(s).\n"
        "export.json holds the same facts in machine-readable form.\n\n"
        f"Noise: {parameters}.\n"
        "The images were normalised to [0, 1] and noise was added per pixel (see the meddenoise\n"
        "documentation, docs/noise.md). File names are random and carry no information about the patients\n"
        "or the source.\n"
    )
