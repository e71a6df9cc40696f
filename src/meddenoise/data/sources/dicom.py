"""DICOM files -> display-ready grayscale in [0, 1], following the standard's pixel pipeline.

Order (DICOM PS3.3 C.11): stored values -> modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence)
-> VOI (a VOI LUT Sequence if present, else the first WindowCenter/WindowWidth with its VOILUTFunction, else a
per-image min-max stretch) -> MONOCHROME1 is inverted so bone is always bright. Compressed transfer syntaxes
decode when pydicom has a handler installed for them; otherwise the file is skipped with a message saying
which package to install.
"""

from __future__ import annotations

import numpy as np

from meddenoise.data.decode import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    UnreadableImage,
    check_pixel_count,
    check_shape,
    read_file_bytes,
)

DECODER_HINT = (
    "install a pydicom decoder for it (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, "
    "or python-gdcm) or convert the file to uncompressed DICOM"
)


def _pixel_helpers():
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def read_dataset(path: str, header_only: bool = False):
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    data = read_file_bytes(path)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)
    except InvalidDicomError:
        raise UnreadableImage(f"{path} is not a DICOM file (no DICM header)") from None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise UnreadableImage(f"{path} is a damaged DICOM file ({type(exc).__name__}: {exc})") from None
    return dataset, data


def read_patient_id(path: str) -> str:
    """The PatientID tag, or '' when absent or unreadable (the caller then falls back to its own rule)."""
    try:
        dataset, _ = read_dataset(path, header_only=True)
    except UnreadableImage:
        return ""
    return str(getattr(dataset, "PatientID", "") or "").strip()


def decode_dicom(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    import hashlib

    dataset, data = read_dataset(path)
    if "PixelData" not in dataset:
        raise UnreadableImage(f"{path} has no pixel data (a DICOMDIR, report or other non-image object)")
    frames = _int_tag(dataset, "NumberOfFrames", 1, path)
    if frames > 1:
        raise UnreadableImage(f"{path} has {frames} frames (a multi-frame DICOM); expected one radiograph")
    # From the header: compressed pixel data can be small on disk and huge once decoded.
    width, height = _int_tag(dataset, "Columns", 0, path), _int_tag(dataset, "Rows", 0, path)
    check_pixel_count(width, height, path, max_pixels)
    stored = _stored_pixels(dataset, path)
    bits_stored = int(getattr(dataset, "BitsStored", 8) or 8)
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if stored.ndim == 3:  # colour (RGB, or YBR already converted by pydicom): luminance, no VOI
        max_value = float(2**bits_stored - 1)
        pixels = stored[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / max_value
    else:
        pixels = _display_values(dataset, stored)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
    pixels = np.clip(pixels, 0.0, 1.0).astype(np.float32)
    check_shape(pixels, path)
    return DecodedImage(pixels, 16 if bits_stored > 8 else 8, hashlib.sha256(data).hexdigest()[:32])


def _int_tag(dataset, keyword: str, default: int, path: str) -> int:
    try:
        return int(getattr(dataset, keyword, default) or default)
    except (TypeError, ValueError):
        raise UnreadableImage(f"{path} has an invalid {keyword} tag") from None


def _stored_pixels(dataset, path: str) -> np.ndarray:
    transfer_syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return np.asarray(dataset.pixel_array)
    except Exception as exc:
        compressed = transfer_syntax is not None and getattr(transfer_syntax, "is_compressed", False)
        if compressed and not decoder_available(transfer_syntax):
            raise UnreadableImage(
                f"{path} uses the compressed transfer syntax {transfer_syntax.name} ({transfer_syntax}) "
                f"and no installed decoder handles it; {DECODER_HINT}"
            ) from None
        kind = f"compressed ({transfer_syntax.name}) " if compressed else ""
        raise UnreadableImage(
            f"{path} has unreadable {kind}pixel data ({type(exc).__name__}: {exc})"
        ) from None


def decoder_available(transfer_syntax) -> bool:
    """Whether pydicom has a working decoder plugin for `transfer_syntax` (pydicom 2.x: assume none)."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:
        return False
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def _display_values(dataset, stored: np.ndarray) -> np.ndarray:
    """Stored values -> [0, 1] through the modality and VOI transforms."""
    apply_modality_lut, apply_voi_lut = _pixel_helpers()
    values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
        # a LUT is indexed by integer input values (pydicom warns about floats)
        mapped = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), dataset, index=0), np.float64)
        return _scale_to_unit(mapped, *_lut_output_range(dataset.VOILUTSequence[0], mapped))
    centers, widths = _first_value(dataset, "WindowCenter"), _first_value(dataset, "WindowWidth")
    if centers is not None and widths is not None and widths > 0:
        function = str(getattr(dataset, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return apply_window(values, centers, widths, function)
    return _scale_to_unit(values, float(values.min()), float(values.max()))


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The DICOM VOI window functions (PS3.3 C.11.2.1.2), output in [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:  # LINEAR requires width >= 1
        width = 1.0
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first_value(dataset, keyword: str) -> float | None:
    """First value of a possibly multi-valued tag (several windows may be listed; the first is default)."""
    value = getattr(dataset, keyword, None)
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _lut_output_range(lut_item, mapped: np.ndarray) -> tuple[float, float]:
    try:
        bits = int(lut_item.LUTDescriptor[2])
        if 8 <= bits <= 16:
            return 0.0, float(2**bits - 1)
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    return float(mapped.min()), float(mapped.max())


def _scale_to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)
