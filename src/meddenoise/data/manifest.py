"""The on-disk format of a prepared folder, its one writer and its one reader.

    DIR/images.npy     N x H x W, uint8 or uint16 (memory-mapped when loaded)
    DIR/manifest.csv   one row per image (see MANIFEST_COLUMNS, plus source-specific extras)
    DIR/prepare.json   parameters, input fingerprint, dtype, shape, counts, and checks of the two files above

`prepare.json` is the commit marker: a writer deletes it first and writes it last (atomically), and it records
the byte size of images.npy and the sha256 of manifest.csv. A prepare killed at any point therefore leaves a
folder that `load_prepared` refuses, never one that looks valid with stale or half-written parts.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import errno
import hashlib
import io
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meddenoise import __version__
from meddenoise.data.manifest_rows import ManifestRows
from meddenoise.data.records import ImageRecord, image_key
from meddenoise.data.splits import SPLIT_NAMES
from meddenoise.errors import DataError, HostMemoryError, MeddenoiseError
from meddenoise.fileio import (
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    read_json,
    require_free_space,
    reserve_space,
)

FORMAT_VERSION = 1
IMAGES_FILE = "images.npy"
MANIFEST_FILE = "manifest.csv"
MARKER_FILE = "prepare.json"
PARTIAL_PREFIX = ".images.npy.partial-"
MANIFEST_COLUMNS = (
    "index",
    "image_id",
    "image_key",
    "patient_id",
    "group",
    "source",
    "split",
    "source_path",
    "height",
    "width",
    "content_hash",
)
MAX_VALUES = {"uint8": 255, "uint16": 65535}


@dataclasses.dataclass
class PreparedData:
    """A loaded prepared folder. `images` is memory-mapped; nothing is copied until asked for."""

    folder: Path
    images: np.ndarray  # (N, H, W) uint8 | uint16
    records: Sequence[dict[str, str]]  # manifest.csv rows (a ManifestRows when loaded: parsed on access)
    image_keys: np.ndarray  # (N,) int64
    splits: np.ndarray  # (N,) str
    max_value: int
    params: dict[str, Any]
    info: dict[str, Any]  # the whole prepare.json

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def indices(self, split: str | None = "all") -> np.ndarray:
        """Row indices (int64, ascending) of one split; 'all' or None for every image."""
        if split in (None, "all"):
            return np.arange(len(self), dtype=np.int64)
        if split not in SPLIT_NAMES:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)} or 'all'")
        return np.flatnonzero(self.splits == split).astype(np.int64)

    def keys(self, split: str | None = "all") -> np.ndarray:
        return self.image_keys[self.indices(split)]

    def tensor(self, split: str | None = "all", device: Any = "cpu"):
        """The images of `split` as an (n, 1, H, W) tensor on `device`, in the stored integer dtype."""
        import torch

        rows = np.ascontiguousarray(self.images[self.indices(split)])  # (n, H, W), read from the memmap
        return torch.from_numpy(rows).unsqueeze(1).to(device)  # (n, H, W) -> (n, 1, H, W)

    def to_float(self, batch):
        """Integer batch -> float32 in [0, 1] (on the batch's device)."""
        return batch.float() / float(self.max_value)


def pixel_hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:32]


class PreparedWriter:
    """Writes a prepared folder in commit-marker order; images are filled in place through a memmap.

    Use `images` (an (N, H, W) memmap of a temporary file) and then `commit(...)`; `keep` drops rows that
    failed to decode. Nothing in `out_dir` is valid until `commit` returns.
    """

    def __init__(self, out_dir: str | os.PathLike, count: int, height: int, width: int, dtype: str) -> None:
        if dtype not in MAX_VALUES:
            raise DataError(f"prepared images must be uint8 or uint16, not {dtype}")
        if count <= 0:
            raise DataError(f"no usable images to write to {out_dir}")
        self.folder = ensure_writable_dir(out_dir, what="output folder", parameter="out")
        # Checked before the folder is touched, so a refused prepare leaves an earlier valid cache intact.
        needed = count * height * width * np.dtype(dtype).itemsize + _bookkeeping_bytes(count)
        require_free_space(self.folder, needed, what=f"the prepared images ({count} x {height} x {width})")
        remove_partials(self.folder)  # leftovers of killed writers
        self.dtype = dtype
        self.partial_path = self.folder / f"{PARTIAL_PREFIX}{os.getpid()}"
        # Opened before the earlier cache is invalidated: when memory or address space refuses the new map,
        # the folder still holds its earlier valid cache.
        self.images = self._open_reserved(self.partial_path, np.dtype(dtype), (count, height, width))
        invalidate_prepared(self.folder, keep=self.partial_path)

    def commit(
        self,
        records: Sequence[ImageRecord],
        splits: Sequence[str],
        params: dict[str, Any],
        *,
        keep: np.ndarray | None = None,
        extra_columns: dict[str, Sequence[Any]] | None = None,
        fingerprint: str | None = None,
    ) -> Path:
        count = self.images.shape[0]
        if len(records) != count or len(splits) != count:
            raise ValueError(f"{count} images but {len(records)} records and {len(splits)} splits")
        extra_columns = dict(extra_columns or {})
        keep = np.ones(count, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
        if not keep.any():
            self.abort()
            raise DataError(f"no usable images to write to {self.folder}")
        kept = np.flatnonzero(keep)
        images = self._final_images(kept)
        records = [records[i] for i in kept]
        splits = [splits[i] for i in kept]
        extra_columns = {name: [values[i] for i in kept] for name, values in extra_columns.items()}

        manifest_text = _manifest_text(images, records, splits, extra_columns)
        images_path = self.folder / IMAGES_FILE
        try:
            self._commit_files(images_path, manifest_text, records, splits, params, fingerprint)
        except BaseException:
            # Nothing of this write is valid without the marker: leave no half of it taking space.
            self.abort()
            for name in (IMAGES_FILE, MANIFEST_FILE, MARKER_FILE):
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / name).unlink()
            raise
        return self.folder

    def _commit_files(self, images_path: Path, manifest_text: str, records, splits, params, fingerprint):
        atomic_write_text(self.folder / MANIFEST_FILE, manifest_text)
        images = self.images
        os.replace(self.partial_path, images_path)
        info = {
            "format_version": FORMAT_VERSION,
            "meddenoise_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "params": params,
            "input_fingerprint": fingerprint,
            "dtype": self.dtype,
            "max_value": MAX_VALUES[self.dtype],
            "shape": list(images.shape),
            "counts": {name: int(sum(s == name for s in splits)) for name in SPLIT_NAMES},
            "patients": {
                name: len({r.patient_id for r, s in zip(records, splits) if s == name})
                for name in SPLIT_NAMES
            },
            "groups": {
                name: len({r.group for r, s in zip(records, splits) if s == name}) for name in SPLIT_NAMES
            },
            "images_bytes": images_path.stat().st_size,
            "manifest_sha256": hashlib.sha256(manifest_text.encode("utf-8")).hexdigest(),
        }
        atomic_write_json(self.folder / MARKER_FILE, info)  # the commit point: written last
        _fsync_dir(self.folder)

    def _open_reserved(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A new .npy memmap at `path` whose blocks are allocated up front (see `reserve_space`)."""
        try:
            images = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        except (MemoryError, OSError) as exc:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # open_memmap sized the file before mapping it: no sparse partial left
            if isinstance(exc, OSError) and exc.errno != errno.ENOMEM:
                raise
            size = int(np.prod(shape)) * dtype.itemsize
            raise HostMemoryError(
                f"not enough memory or address space to map the new prepared images "
                f"({' x '.join(map(str, shape))}, {size / 2**30:.1f} GiB) in {path.parent} "
                f"({type(exc).__name__}: {exc}); any earlier prepared images there are intact; prepare fewer "
                "or smaller images (count, size), or raise the limit (ulimit -v)",
                parameter="count",
            ) from None
        try:
            what = f"the prepared images ({' x '.join(map(str, shape))})"
            reserve_space(path, path.stat().st_size, what=what)
        except BaseException:
            del images
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        return images

    def promote_to_uint16(self) -> None:
        """Switch storage to uint16 (a 16-bit image arrived); earlier rows are scaled by 257 (exact)."""
        if self.dtype == "uint16":
            return
        old = self.images
        wide_path = self.partial_path.with_name(self.partial_path.name + "-u16")
        wide = self._open_reserved(wide_path, np.dtype(np.uint16), old.shape)
        for start in range(0, old.shape[0], 256):
            wide[start : start + 256] = old[start : start + 256].astype(np.uint16) * 257
        del old, self.images
        os.replace(wide_path, self.partial_path)
        self.images, self.dtype = wide, "uint16"

    def put(self, index: int, image: np.ndarray) -> None:
        """Store one (H, W) uint8/uint16 image at `index`, promoting the storage to uint16 if needed."""
        if image.dtype == np.uint16:
            self.promote_to_uint16()
        elif self.dtype == "uint16":
            image = image.astype(np.uint16) * 257
        self.images[index] = image

    def abort(self) -> None:
        """Remove this writer's temporary files (idempotent)."""
        self.images = None
        for suffix in ("", "-u16", "-compact"):
            with contextlib.suppress(FileNotFoundError):
                self.partial_path.with_name(self.partial_path.name + suffix).unlink()

    def _final_images(self, kept: np.ndarray) -> np.ndarray:
        """Flush the memmap to disk; when rows were dropped, rewrite the file without them (in chunks)."""
        full = self.images
        if len(kept) == full.shape[0]:
            full.flush()
            _fsync_file(self.partial_path)
            return full
        compact_path = self.partial_path.with_name(self.partial_path.name + "-compact")
        compact = self._open_reserved(compact_path, full.dtype, (len(kept), *full.shape[1:]))
        for start in range(0, len(kept), 256):
            compact[start : start + 256] = full[kept[start : start + 256]]
        compact.flush()
        _fsync_file(compact_path)
        del full, self.images
        os.replace(compact_path, self.partial_path)
        self.images = compact
        return compact


def write_prepared(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    records: Sequence[ImageRecord],
    splits: Sequence[str],
    params: dict[str, Any],
    *,
    extra_columns: dict[str, Sequence[Any]] | None = None,
    fingerprint: str | None = None,
) -> Path:
    """Write a prepared folder from an in-memory (N, H, W) uint8/uint16 array; returns the folder."""
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype.name not in MAX_VALUES:
        raise DataError(
            f"images must be an (N, H, W) uint8 or uint16 array, got {images.shape} {images.dtype}"
        )
    writer = PreparedWriter(out_dir, *images.shape, dtype=images.dtype.name)
    writer.images[:] = images
    return writer.commit(records, splits, params, extra_columns=extra_columns, fingerprint=fingerprint)


def _bookkeeping_bytes(count: int) -> int:
    """A generous estimate of manifest.csv, skipped.csv and prepare.json (a manifest row is ~150 bytes)."""
    return 64 * 1024 + 512 * count


def invalidate_prepared(folder: Path, keep: Path | None = None) -> None:
    """Remove the commit marker (so the folder stops looking valid) and leftovers of killed writers
    (`keep`: this writer's own partial file)."""
    with contextlib.suppress(FileNotFoundError):
        (folder / MARKER_FILE).unlink()
        _fsync_dir(folder)
    remove_partials(folder, keep)


def remove_partials(folder: Path, keep: Path | None = None) -> None:
    for leftover in folder.glob(PARTIAL_PREFIX + "*"):
        if keep is not None and leftover.name.startswith(keep.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _manifest_text(images, records, splits, extra_columns) -> str:
    seen: set[str] = set()
    for record in records:
        if record.image_id in seen:
            raise DataError(
                f"duplicate image_id {record.image_id!r} ({record.path}); image ids must be unique"
            )
        seen.add(record.image_id)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*MANIFEST_COLUMNS, *extra_columns])
    _, height, width = images.shape
    for index, (record, split) in enumerate(zip(records, splits)):
        if split not in SPLIT_NAMES:
            raise ValueError(f"split {split!r} of {record.image_id} is not one of {SPLIT_NAMES}")
        row = [
            index,
            record.image_id,
            image_key(record.image_id),
            record.patient_id,
            record.group,
            record.source,
            split,
            record.path,
            height,
            width,
            pixel_hash(images[index]),
        ]
        writer.writerow(row + [values[index] for values in extra_columns.values()])
    return buffer.getvalue()


def read_prepare_info(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The committed prepare.json of `folder`, or None when there is none (absent or unreadable)."""
    marker = Path(folder) / MARKER_FILE
    if not marker.is_file():
        return None
    try:
        info = read_json(marker, what="prepare marker")
    except Exception:
        return None
    return info if isinstance(info, dict) else None


RAW_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")


def _holds_images(folder: Path, look_at: int = 2000) -> bool:
    """Whether a folder (or its subfolders) holds image files: then it is raw data, not a prepared folder."""
    files = (path for path in folder.rglob("*") if path.is_file())
    return any(path.suffix.lower() in RAW_IMAGE_SUFFIXES for path in itertools.islice(files, look_at))


def load_prepared(folder: str | os.PathLike) -> PreparedData:
    """Open a prepared folder after checking that it is complete and consistent (else DataError naming it)."""
    folder = Path(folder)
    redo = f"run `meddenoise prepare --out {folder}` again"
    if not folder.is_dir():
        raise DataError(
            f"prepared folder {folder} does not exist; create it with `meddenoise prepare --out ...`"
        )
    if not (folder / MARKER_FILE).is_file():
        if _holds_images(folder):
            raise DataError(
                f"{folder} holds image files, not a prepared folder; prepare them first into a new folder: "
                f"`meddenoise prepare --source folder --root {folder} --out NEW_FOLDER`, then use NEW_FOLDER"
            )
        raise DataError(
            f"{folder} is not a complete prepared folder (no {MARKER_FILE}: never finished?); {redo}"
        )
    try:
        info = read_json(folder / MARKER_FILE, what="prepare marker")
    except MeddenoiseError as exc:
        raise DataError(f"{exc}; {redo}") from None
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{folder / MARKER_FILE} has an unknown format; {redo}")
    images_path, manifest_path = folder / IMAGES_FILE, folder / MANIFEST_FILE
    for path in (images_path, manifest_path):
        if not path.is_file():
            raise DataError(f"{path} is missing; {redo}")
    if images_path.stat().st_size != info.get("images_bytes"):
        raise DataError(f"{images_path} does not match {MARKER_FILE} (size differs); {redo}")
    manifest_bytes = manifest_path.read_bytes()
    if hashlib.sha256(manifest_bytes).hexdigest() != info.get("manifest_sha256"):
        raise DataError(f"{manifest_path} does not match {MARKER_FILE} (it was modified); {redo}")
    try:
        images = np.load(images_path, mmap_mode="r")
    except MemoryError as exc:
        raise HostMemoryError(_cannot_map(images_path, exc)) from None
    except (ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            raise HostMemoryError(_cannot_map(images_path, exc)) from None
        raise DataError(f"cannot read {images_path} ({exc}); {redo}") from None
    if list(images.shape) != info.get("shape") or images.dtype.name != info.get("dtype"):
        raise DataError(
            f"{images_path} has shape/dtype {images.shape} {images.dtype}, not as recorded; {redo}"
        )
    rows = ManifestRows(manifest_bytes.decode("utf-8"))  # parsed per row on access: little memory per image
    missing = [c for c in MANIFEST_COLUMNS if len(rows) and c not in rows.columns]
    if missing or len(rows) != images.shape[0]:
        raise DataError(f"{manifest_path} has {len(rows)} rows / missing columns {missing}; {redo}")
    splits = np.array(rows.column("split"))
    return PreparedData(
        folder=folder,
        images=images,
        records=rows,
        image_keys=np.array([int(key) for key in rows.column("image_key")], dtype=np.int64),
        splits=splits,
        max_value=MAX_VALUES[images.dtype.name],
        params=info.get("params", {}),
        info=info,
    )


def _cannot_map(images_path: Path, exc: BaseException) -> str:
    size = images_path.stat().st_size / 2**30
    return (
        f"not enough memory to map {images_path} ({size:.2f} GiB; {type(exc).__name__}: {exc}): the map "
        "needs address space, not RAM, so check the process's limits (ulimit -v) and free memory"
    )


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
