"""Images in and out for `meddenoise denoise`: PNG/JPEG/TIFF (8- or 16-bit) and DICOM, same bit depth out.

Reading reuses the data decoders (`meddenoise.data.decode`, `meddenoise.data.sources.dicom`), so a file
is seen exactly as `prepare` would see it: one channel in [0, 1], DICOM through its modality LUT and VOI
window with MONOCHROME1 inverted (the domain the networks were trained in).

Writing:
- 8-bit input -> 8-bit grayscale PNG; 16-bit (or float) input -> 16-bit grayscale PNG. Raster inputs always
  come out as PNG (lossless), named `<stem>.png`.
- DICOM -> DICOM: a copy of the input dataset (all tags kept, including RescaleSlope/Intercept and the
  window) whose PixelData holds the denoised image mapped back through the inverse of the linear VOI window
  (or min-max stretch) and the inverse rescale, in the original stored type. Pixels the window had clipped
  (outside the window, where the network saw a flat 0 or 1) keep their original stored values. The copy
  gets a new SOP Instance UID, ImageType DERIVED and a DerivationDescription. A VOI LUT sequence or a
  SIGMOID window cannot be inverted; such files are written as 16-bit PNG of the displayed image instead,
  and the summary says so.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np

from meddenoise.data.decode import (
    DEFAULT_MAX_PIXELS,
    UnreadableImage,
    decode_pil_bytes,
    has_dicom_preamble,
    read_file_bytes,
)
from meddenoise.fileio import atomic_write_bytes

RASTER_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})


@dataclasses.dataclass
class LoadedImage:
    """A decoded input: `pixels` (H, W) float32 in [0, 1] as the network sees it, and how to write it back."""

    path: Path
    pixels: np.ndarray
    kind: str  # "png8", "png16" or "dicom"
    dataset: Any = None  # the pydicom dataset of a DICOM input

    @property
    def bit_depth(self) -> int:
        if self.kind == "dicom":
            return int(getattr(self.dataset, "BitsStored", 16) or 16)
        return 8 if self.kind == "png8" else 16


def is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_EXTENSIONS or has_dicom_preamble(str(path))


def is_image_candidate(path: Path) -> bool:
    """Files a folder walk considers: known raster extensions, DICOM extensions or the DICOM marker."""
    return path.suffix.lower() in RASTER_EXTENSIONS or is_dicom(path)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode one file; raises `UnreadableImage` (a DataError) naming it when it cannot be used, including
    when it has more than `max_pixels` pixels (checked before decoding)."""
    path = Path(path)
    if is_dicom(path):
        from meddenoise.data.sources.dicom import decode_dicom, read_dataset

        decoded = decode_dicom(str(path), max_pixels)
        dataset, _ = read_dataset(str(path))
        return LoadedImage(path, decoded.pixels.astype(np.float32), "dicom", dataset)
    decoded = decode_pil_bytes(read_file_bytes(str(path)), str(path), max_pixels)
    pixels = decoded.pixels
    if pixels.dtype == np.uint8:
        return LoadedImage(path, pixels.astype(np.float32) / 255.0, "png8")
    if pixels.dtype == np.uint16:
        return LoadedImage(path, pixels.astype(np.float32) / 65535.0, "png16")
    # float: colour turned to luminance, or a float/32-bit image; 8-bit colour stays 8-bit on output
    kind = "png8" if _pil_mode(path) in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else "png16"
    return LoadedImage(path, np.clip(pixels, 0.0, 1.0).astype(np.float32), kind)


def _pil_mode(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:  # reads the header only
        return image.mode


def output_name(path: Path, kind: str) -> str:
    return path.name if kind == "dicom" else path.stem + ".png"


def png_bytes(pixels: np.ndarray, bit_depth: int) -> bytes:
    """(H, W) float in [0, 1] -> grayscale PNG bytes, 8- or 16-bit."""
    from PIL import Image

    clipped = np.clip(pixels, 0.0, 1.0)
    if bit_depth == 8:
        image = Image.fromarray(np.round(clipped * 255.0).astype(np.uint8))
    else:
        image = Image.fromarray(np.round(clipped * 65535.0).astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class NotInvertible(Exception):
    """The DICOM display transform cannot be inverted (VOI LUT sequence, sigmoid window)."""


def _window(dataset) -> tuple[float, float, str] | None:
    from meddenoise.data.sources.dicom import _first_value

    center, width = _first_value(dataset, "WindowCenter"), _first_value(dataset, "WindowWidth")
    if center is None or width is None or width <= 0:
        return None
    return center, width, str(getattr(dataset, "VOILUTFunction", "LINEAR") or "LINEAR").upper()


def display_to_modality(display: np.ndarray, dataset, modality: np.ndarray) -> np.ndarray:
    """Invert the VOI step of `decode_dicom` (before MONOCHROME1 inversion): [0, 1] -> modality values."""
    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
        raise NotInvertible("it has a VOI LUT sequence")
    window = _window(dataset)
    if window is None:
        low, high = float(modality.min()), float(modality.max())
        return low + display * (high - low)
    center, width, function = window
    if function == "LINEAR_EXACT":
        return (display - 0.5) * width + center
    if function == "LINEAR" and width > 1:
        return (display - 0.5) * (width - 1) + center - 0.5
    raise NotInvertible(f"its VOI function {function} (width {width:g}) is not invertible")


def dicom_bytes(image: LoadedImage, denoised: np.ndarray, description: str) -> bytes:
    """A copy of the input DICOM with the denoised image as PixelData (see the module docstring)."""
    import copy

    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from meddenoise.data.sources.dicom import _pixel_helpers

    dataset = copy.deepcopy(image.dataset)
    stored = np.asarray(dataset.pixel_array)
    if stored.ndim != 2:
        raise NotInvertible("it is a colour image")
    apply_modality_lut, _ = _pixel_helpers()
    modality = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    shown_in, shown_out = image.pixels.astype(np.float64), np.clip(denoised.astype(np.float64), 0.0, 1.0)
    if photometric == "MONOCHROME1":  # undo decode_dicom's inversion
        shown_in, shown_out = 1.0 - shown_in, 1.0 - shown_out
    new_modality = display_to_modality(shown_out, dataset, modality)
    clipped = (shown_in <= 0.0) | (shown_in >= 1.0)
    new_modality[clipped] = modality[clipped]
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    values = np.rint((new_modality - intercept) / slope)
    bits = int(getattr(dataset, "BitsStored", 16) or 16)
    if int(getattr(dataset, "PixelRepresentation", 0) or 0) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    values = np.clip(values, low, high).astype(stored.dtype)
    dataset.PixelData = values.tobytes()
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    image_type = list(getattr(dataset, "ImageType", []) or ["DERIVED", "SECONDARY"])
    dataset.ImageType = ["DERIVED", *image_type[1:]] if image_type else ["DERIVED", "SECONDARY"]
    dataset.DerivationDescription = description[:1024]
    buffer = io.BytesIO()
    if _pydicom_major() >= 3:
        dataset.save_as(buffer, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        dataset.save_as(buffer, write_like_original=False)
    return buffer.getvalue()


def _pydicom_major() -> int:
    import pydicom

    return int(pydicom.__version__.split(".")[0])


def write_image(
    image: LoadedImage, denoised: np.ndarray, out_path: Path, description: str
) -> tuple[Path, str]:
    """Write `denoised` (H, W) in [0, 1] like `image`; returns (path written, note: '' or why it differs)."""
    if image.kind == "dicom":
        try:
            atomic_write_bytes(out_path, dicom_bytes(image, denoised, description))
            return out_path, ""
        except NotInvertible as reason:
            png_path = out_path.with_name(out_path.name + ".png")
            atomic_write_bytes(png_path, png_bytes(denoised, 16))
            return png_path, f"written as 16-bit PNG of the displayed image: {reason}"
    atomic_write_bytes(out_path, png_bytes(denoised, image.bit_depth))
    return out_path, ""


__all__ = ["LoadedImage", "UnreadableImage", "is_image_candidate", "output_name", "read_image", "write_image"]
