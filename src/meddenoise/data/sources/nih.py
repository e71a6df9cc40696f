"""NIH ChestX-ray14 as distributed.

Layouts under --root: the Kaggle one (`images_001/images/*.png` ... `images_012/images/*.png`), a flat
`images/*.png`, or the PNGs directly in the root. Metadata: `Data_Entry_2017_v2020.csv` or
`Data_Entry_2017.csv` in the root (or --csv), with `Image Index`, `Patient ID`, `View Position`. Without a CSV
the patient id comes from the file name (`00000013_005.png` -> '13') and the notes say so; a view-position
filter then cannot work.

When a CSV is used, files on disk that it does not list are left out (no metadata), and CSV rows without a
file are counted; both are reported with a few names. `--nih-folders k` keeps the first k `images_0NN`
folders (the paper used the first two).
"""

from __future__ import annotations

import csv
from pathlib import Path

from meddenoise.data import split_claims
from meddenoise.data.decode import DEFAULT_MAX_PIXELS, DecodedImage, decode_pil_bytes, read_file_bytes
from meddenoise.data.records import ImageRecord, select_subset
from meddenoise.data.sources import resolve_root
from meddenoise.data.sources.folder import nih_patient_from_name
from meddenoise.errors import ConfigError, DataError

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED_COLUMNS = ("Image Index", "Patient ID")
VIEW_COLUMN = "View Position"


def _examples(names, limit: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


class NihSource:
    name = "nih"

    def __init__(
        self,
        root: str,
        count: int = 0,
        seed: int = 0,
        view_position: str = "",
        nih_folders: int = 0,
        csv_path: str = "",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.root = resolve_root(root, self.name)
        self.max_pixels = max_pixels
        self.count, self.seed = count, seed
        self.view_position = view_position.upper()
        self.nih_folders = nih_folders
        self.csv_path = Path(csv_path).expanduser() if csv_path else None
        self.notes: list[str] = []

    def records(self) -> list[ImageRecord]:
        files = self._image_files()
        metadata = self._read_csv()
        if metadata is None:
            if self.view_position:
                raise ConfigError(
                    f"view_position needs the metadata CSV ({' or '.join(CSV_NAMES)}) in {self.root} "
                    "or given as csv",
                    "view_position",
                )
            self.notes.append(
                f"no metadata CSV in {self.root} (looked for {', '.join(CSV_NAMES)}): patient ids derived "
                "from file names (00000013_005.png -> patient 13)"
            )
            rows = {}
            for name in files:
                patient = nih_patient_from_name(name)
                rows[name] = (patient if patient is not None else Path(name).stem, "")
        else:
            rows = self._match_csv(files, metadata)
        names = sorted(rows)
        if self.view_position:
            names = [n for n in names if rows[n][1].upper() == self.view_position]
            self.notes.append(f"view position {self.view_position}: {len(names)} image(s)")
        if not names:
            raise DataError(f"no NIH images left under {self.root} after matching the CSV and filters")
        if self.count and self.count > len(names):
            self.notes.append(f"--count {self.count} asked, only {len(names)} image(s) available: using all")
        chosen = select_subset(names, self.count, self.seed)
        origins: dict[str, int] = {}
        for name in chosen:
            if metadata is not None:
                origin = split_claims.NIH_CSV
            else:
                origin = split_claims.NIH_NAME if nih_patient_from_name(name) else split_claims.NONE
            origins[origin] = origins.get(origin, 0) + 1
        self.patient_id_origins = origins
        return [ImageRecord(n, rows[n][0], self.name, str(files[n]), rows[n][0]) for n in chosen]

    def decode(self, record: ImageRecord) -> DecodedImage:
        return decode_pil_bytes(read_file_bytes(record.path), record.path, self.max_pixels)

    def _image_folders(self) -> list[Path]:
        kaggle = sorted(p for p in self.root.glob("images_[0-9][0-9][0-9]") if p.is_dir())
        if kaggle:
            if self.nih_folders:
                kaggle = kaggle[: self.nih_folders]
                self.notes.append("folders used: " + ", ".join(p.name for p in kaggle))
            return [p / "images" if (p / "images").is_dir() else p for p in kaggle]
        if self.nih_folders:
            raise ConfigError(
                f"nih_folders needs the Kaggle layout (images_001/, images_002/, ...) under {self.root}",
                "nih_folders",
            )
        if (self.root / "images").is_dir():
            return [self.root / "images"]
        return [self.root]

    def _image_files(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        duplicates = []
        for folder in self._image_folders():
            for path in sorted(folder.glob("*.png")):
                if path.name in files:
                    duplicates.append(path.name)
                    continue
                files[path.name] = path
        if duplicates:
            self.notes.append(f"{len(duplicates)} duplicate file name(s) kept once: {_examples(duplicates)}")
        if not files:
            raise DataError(
                f"no PNG images found under {self.root}; expected images_001/images/*.png (Kaggle), "
                "images/*.png or PNGs in the folder itself",
                parameter="root",
            )
        return files

    def _find_csv(self) -> Path | None:
        if self.csv_path is not None:
            if not self.csv_path.is_file():
                raise DataError(f"metadata CSV {self.csv_path} does not exist", parameter="csv")
            return self.csv_path
        for name in CSV_NAMES:
            if (self.root / name).is_file():
                return self.root / name
        return None

    def _read_csv(self) -> dict[str, tuple[str, str]] | None:
        path = self._find_csv()
        if path is None:
            return None
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                columns = reader.fieldnames or []
                missing = [c for c in REQUIRED_COLUMNS if c not in columns]
                if missing:
                    raise DataError(
                        f"{path} lacks column(s) {', '.join(missing)}; is it the NIH Data_Entry CSV?"
                    )
                metadata = {}
                for row in reader:
                    name = (row.get("Image Index") or "").strip()
                    patient = (row.get("Patient ID") or "").strip()
                    if name and patient:
                        patient = str(int(patient)) if patient.isdigit() else patient
                        metadata[name] = (patient, (row.get(VIEW_COLUMN) or "").strip())
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read the metadata CSV {path}: {exc}") from None
        if self.view_position and VIEW_COLUMN not in columns:
            raise DataError(
                f"{path} has no '{VIEW_COLUMN}' column, needed by view_position", parameter="view_position"
            )
        self.notes.append(f"metadata from {path.name} ({len(metadata)} rows)")
        return metadata

    def _match_csv(self, files: dict[str, Path], metadata: dict[str, tuple[str, str]]):
        unlisted = set(files) - set(metadata)
        absent = set(metadata) - set(files)
        if unlisted:
            self.notes.append(
                f"{len(unlisted)} PNG file(s) are not in the CSV and are left out: {_examples(unlisted)}"
            )
        if absent:
            partial = " (expected: --nih-folders limits the folders)" if self.nih_folders else ""
            self.notes.append(
                f"{len(absent)} CSV row(s) name files not found under {self.root}{partial}: "
                f"{_examples(absent)}"
            )
        return {name: metadata[name] for name in files if name in metadata}
