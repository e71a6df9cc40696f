"""Any folder of radiographs: PNG, JPEG, TIFF (8- or 16-bit) and DICOM, found recursively.

Which files: names ending in .png .jpg .jpeg .tif .tiff (Pillow) or .dcm .dicom (DICOM), plus extension-less
files that carry the DICOM 'DICM' marker. Other files are ignored and counted in the notes; hidden files and
folders (leading '.') and the output folder are never scanned.

Patient id (`--patient-from`):
- auto (default): the DICOM PatientID tag; else an NIH-style name `00000013_005.png` -> '13'; else the image
  is its own patient (no grouping is known: a patient-level split then equals an image-level split, and the
  notes say so).
- folder: the first sub-folder under the root (root/<patient>/.../image.png); files directly in the root are
  their own patient.
- file: every image is its own patient.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from meddenoise.data import split_claims
from meddenoise.data.decode import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    decode_pil_bytes,
    has_dicom_preamble,
    read_file_bytes,
)
from meddenoise.data.prepare_config import PATIENT_FROM_CHOICES
from meddenoise.data.records import ImageRecord, select_subset
from meddenoise.data.sources import resolve_root
from meddenoise.errors import ConfigError, DataError

PIL_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
NIH_NAME = re.compile(r"^(\d+)_(\d+)\.[A-Za-z]+$")


def nih_patient_from_name(file_name: str) -> str | None:
    """'00000013_005.png' -> '13' (NIH ChestX-ray14 names are <patient>_<follow-up>.png)."""
    match = NIH_NAME.match(file_name)
    return str(int(match.group(1))) if match else None


def decode_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode one image file by its content: DICOM when it has the DICM marker or a DICOM extension."""
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_EXTENSIONS or (suffix not in PIL_EXTENSIONS and has_dicom_preamble(path)):
        from meddenoise.data.sources.dicom import decode_dicom

        return decode_dicom(path, max_pixels)
    return decode_pil_bytes(read_file_bytes(path), path, max_pixels)


RULE_ORIGINS = {
    "DICOM PatientID": split_claims.DICOM,
    "NIH-style file name": split_claims.NIH_NAME,
    "first sub-folder": split_claims.SUB_FOLDER,
    "unknown (own patient)": split_claims.NONE,
}


class FolderSource:
    name = "folder"

    def __init__(
        self,
        root: str,
        count: int = 0,
        seed: int = 0,
        patient_from: str = "auto",
        exclude=(),
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        if patient_from not in PATIENT_FROM_CHOICES:
            raise ConfigError(
                f"patient_from must be one of {', '.join(PATIENT_FROM_CHOICES)}; got {patient_from!r}",
                "patient_from",
            )
        self.root = resolve_root(root, self.name)
        self.count, self.seed, self.patient_from = count, seed, patient_from
        self.exclude = {Path(p).expanduser().resolve() for p in exclude if p}
        self.max_pixels = max_pixels
        self.notes: list[str] = []

    def records(self) -> list[ImageRecord]:
        paths, ignored = self._scan()
        if ignored:
            examples = ", ".join(ignored[:3])
            self.notes.append(f"ignored {len(ignored)} file(s) that are not images by name (e.g. {examples})")
        if not paths:
            raise DataError(
                f"no image files (PNG, JPEG, TIFF or DICOM) found under {self.root}; "
                "check the path (sub-folders are searched)",
                parameter="root",
            )
        chosen = select_subset(paths, self.count, self.seed)
        if self.count and self.count > len(paths):
            self.notes.append(f"--count {self.count} asked, only {len(paths)} image files found: using all")
        records, rule_used = [], Counter()
        for path in chosen:
            patient_id, rule = self._patient_id(path)
            rule_used[rule] += 1
            image_id = path.relative_to(self.root).as_posix()
            records.append(ImageRecord(image_id, patient_id, self.name, str(path), patient_id))
        self.notes.append(
            "patient id from " + ", ".join(f"{rule}: {n}" for rule, n in sorted(rule_used.items()))
        )
        self.patient_id_origins = {RULE_ORIGINS[rule]: n for rule, n in sorted(rule_used.items())}
        if rule_used.get("unknown (own patient)"):
            self.notes.append(
                f"{rule_used['unknown (own patient)']} image(s) have no known patient, so each counts as its "
                "own patient; if sub-folders are patients, use --patient-from folder"
            )
        return records

    def decode(self, record: ImageRecord) -> DecodedImage:
        return decode_file(record.path, self.max_pixels)

    def _scan(self) -> tuple[list[Path], list[str]]:
        images: list[Path] = []
        ignored: list[str] = []
        for folder, subfolders, files in os.walk(self.root):
            folder_path = Path(folder)
            subfolders[:] = sorted(
                d
                for d in subfolders
                if not d.startswith(".") and (folder_path / d).resolve() not in self.exclude
            )
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = folder_path / name
                suffix = path.suffix.lower()
                known = suffix in PIL_EXTENSIONS or suffix in DICOM_EXTENSIONS
                if known or (suffix == "" and has_dicom_preamble(str(path))):
                    images.append(path)
                else:
                    ignored.append(path.relative_to(self.root).as_posix())
        # one canonical order (by relative path), so --count selection depends only on the files and the seed
        images.sort(key=lambda p: p.relative_to(self.root).as_posix())
        return images, sorted(ignored)

    def _patient_id(self, path: Path) -> tuple[str, str]:
        relative = path.relative_to(self.root)
        if self.patient_from == "folder":
            if len(relative.parts) > 1:
                return relative.parts[0], "first sub-folder"
            return relative.as_posix(), "unknown (own patient)"
        if self.patient_from == "auto":
            if path.suffix.lower() in DICOM_EXTENSIONS or has_dicom_preamble(str(path)):
                from meddenoise.data.sources.dicom import read_patient_id

                patient = read_patient_id(str(path))
                if patient:
                    return patient, "DICOM PatientID"
            patient = nih_patient_from_name(path.name)
            if patient is not None:
                return patient, "NIH-style file name"
        return relative.as_posix(), "unknown (own patient)"
