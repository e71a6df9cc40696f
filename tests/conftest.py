"""Shared fixtures: tiny prepared folders written through the real writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meddenoise.data.cache import write_prepared
from meddenoise.data.records import ImageRecord
from meddenoise.data.splits import assign_splits


def smooth_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """(count, size, size) float32 in [0, 1]: a few random low-frequency cosines per image, so denoisers have
    structure to learn and neighbouring pixels are correlated like in a radiograph."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((count, size, size), dtype=np.float32)
    for i in range(count):
        image = np.zeros((size, size), dtype=np.float32)
        for _ in range(4):
            fy, fx = rng.uniform(0.3, 2.5, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            image += rng.uniform(0.3, 1.0) * np.cos(2 * np.pi * (fy * y + fx * x) + phase)
        image -= image.min()
        images[i] = image / max(float(image.max()), 1e-6)
    return images


def write_tiny_prepared(
    out_dir: Path,
    n: int = 24,
    size: int = 32,
    patients: int = 8,
    seed: int = 0,
    split_by: str = "patient",
    dtype: str = "uint8",
) -> Path:
    max_value = 255 if dtype == "uint8" else 65535
    images = np.round(smooth_images(n, size, seed) * max_value).astype(dtype)
    records = [
        ImageRecord(
            image_id=f"img{i:05d}",
            patient_id=f"patient{i % patients:03d}",
            source="synthetic",
            path=f"synthetic/img{i:05d}.png",
            group=f"patient{i % patients:03d}",
        )
        for i in range(n)
    ]
    splits = assign_splits(records, seed=seed, split_by=split_by)
    params = {"source": "synthetic", "size": size, "seed": seed, "split_by": split_by, "count": n}
    return write_prepared(out_dir, images, records, splits, params)


IDENTIFIABLE_COUNT, IDENTIFIABLE_SIZE = 6, 12
# strings of the identifiable folder that must never reach a released export
IDENTIFYING_STRINGS = ("JaneDoe", "MRN-77", "hospital")


def write_identifiable_prepared(out_dir: Path) -> Path:
    """A 6-image prepared folder (random 12 x 12 uint8, two per patient) whose image ids, patient ids and
    paths are distinctive strings (IDENTIFYING_STRINGS), easy to search for in what a release writes."""
    rng = np.random.default_rng(0)
    size = IDENTIFIABLE_SIZE
    images = rng.integers(0, 256, size=(IDENTIFIABLE_COUNT, size, size), dtype=np.uint8)
    records = [
        ImageRecord(
            image_id=f"scan-{i:03d}-of-JaneDoe",
            patient_id=f"MRN-77{i // 2:04d}",
            source="folder",
            path=f"/hospital/radiology/MRN-77{i // 2:04d}/scan-{i:03d}.dcm",
        )
        for i in range(IDENTIFIABLE_COUNT)
    ]
    splits = ["train", "train", "val", "val", "test", "test"]
    return write_prepared(out_dir, images, records, splits, {"source": "folder"})


@pytest.fixture
def make_prepared(tmp_path_factory):
    """Factory: `make_prepared(n=24, size=32, patients=8, seed=0, split_by="patient", dtype="uint8") -> Path`
    of a fresh prepared folder (smooth random images, patient-level splits unless split_by="image")."""

    def make(n=24, size=32, patients=8, seed=0, split_by="patient", dtype="uint8") -> Path:
        out_dir = tmp_path_factory.mktemp("prepared")
        return write_tiny_prepared(out_dir, n, size, patients, seed, split_by, dtype)

    return make


# ---- image files for the data-source tests ----


def write_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels, mode) if mode else Image.fromarray(pixels)
    image.save(path)
    return path


def write_dicom(path: Path, stored: np.ndarray, **tags) -> Path:
    """An uncompressed single-frame DICOM with `stored` (H, W) uint16/uint8 pixels; `tags` set/override
    attributes (e.g. PhotometricInterpretation, RescaleSlope, WindowCenter, PatientID)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tags.pop("TransferSyntaxUID", ExplicitVRLittleEndian)
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.PatientID = "anon"
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 if stored.dtype == np.uint8 else 16
    dataset.BitsAllocated = bits
    dataset.BitsStored = tags.pop("BitsStored", bits)
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0
    pixel_data = tags.pop("PixelData", None)
    for keyword, value in tags.items():
        if value is None:
            if keyword in dataset:
                delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    dataset.PixelData = pixel_data if pixel_data is not None else np.ascontiguousarray(stored).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def image_files():
    """Helpers writing test files: `.png(path, pixels, mode=None)`, `.dicom(path, stored, **tags)`."""
    import types

    return types.SimpleNamespace(png=write_png, dicom=write_dicom, smooth=smooth_images)


@pytest.fixture
def tiny_fit():
    """Factory: `tiny_fit(data, out, target="clean", epochs=4, noise_kind="gaussian") -> run folder`: a
    seconds-long CPU training run (5-layer DnCNN, GroupNorm, noise std 0.2) through the real engine."""

    def fit_tiny(
        data: Path, out: Path, target: str = "clean", epochs: int = 4, noise_kind: str = "gaussian"
    ) -> Path:
        from meddenoise.config import config_from_mapping
        from meddenoise.engine.config import TrainConfig
        from meddenoise.engine.train import fit

        options = {
            "data": str(data),
            "out": str(out),
            "model": "dncnn",
            "base_channels": 16,
            "model_options": ["num_layers=5"],
            "norm": "group",
            "target": target,
            "noise_std": 0.2,
            "noise_kind": noise_kind,
            "epochs": epochs,
            "batch_size": 8,
            "lr": 2e-3,
            "device": "cpu",
            "quiet": True,
            "evaluate_test": False,
            "patience": 0,
        }
        return fit(config_from_mapping(TrainConfig, options))

    return fit_tiny
