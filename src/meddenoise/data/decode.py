"""Image files -> one grayscale array, and the geometry steps every source shares (square, resize, quantise).

Decoding rules (documented in docs/data.md):
- 8-bit modes (1, L, P, LA, RGB, RGBA, CMYK, ...) give uint8; colour becomes luminance, alpha is ignored;
  RGB files whose three channels are equal (grayscale saved as colour, like some NIH images) keep one channel.
- 16-bit grayscale (I;16*, or I holding values <= 65535) gives uint16; float images (F) are min-max scaled.
- Multi-frame files (TIFF stacks, multi-frame DICOM) and images smaller than MIN_SIDE pixels on a side are
  rejected: they are not single radiographs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np

from meddenoise.errors import DataError

MIN_SIDE = 16
# Pillow's own default (Image.MAX_IMAGE_PIXELS, about 89.5 megapixels): above it an image is refused unless
# the caller raises the limit (--max-pixels). Checked from the header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclasses.dataclass
class DecodedImage:
    """A decoded single-channel image.

    `pixels` is (H, W): float32 in [0, 1], or the integer array as stored (uint8 for 8-bit, uint16 for
    16-bit), read as value / dtype max. Keeping integers lets the cache resize 8-bit images without a float
    copy.
    """

    pixels: np.ndarray
    bit_depth: int
    source_hash: str = ""


class UnreadableImage(DataError):
    """This one file cannot be used (the cache skips it and lists it with the message)."""


def read_file_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise UnreadableImage(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise UnreadableImage(f"{path} is empty (0 bytes)")
    return data


def check_pixel_count(width: int, height: int, path: str, max_pixels: int) -> None:
    """Refuse an image larger than `max_pixels` (from its header, before decoding: a decompression bomb
    would otherwise allocate gigabytes)."""
    if max_pixels and width * height > max_pixels:
        raise UnreadableImage(
            f"{path} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels (max_pixels); refused before decoding",
            parameter="max_pixels",
        )


def _open_unchecked(data: bytes):
    """Image.open without Pillow's global bomb check, which `check_pixel_count` replaces (and which would
    ignore a limit the user raised)."""
    import warnings

    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode_pil_bytes(data: bytes, path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode PNG/JPEG/TIFF/... bytes with Pillow into one channel (see the module rules); images above
    `max_pixels` pixels are refused from their header."""
    from PIL import UnidentifiedImageError

    try:
        image = _open_unchecked(data)
        check_pixel_count(*image.size, path, max_pixels)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise UnreadableImage(f"{path} has {frames} frames (an image stack); expected one radiograph")
        image.load()  # decode now, so truncated files fail here, not later
        pixels = _single_channel(image, path)
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path} is not an image Pillow can read (wrong format or corrupt)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImage(f"{path} is corrupt or truncated ({exc})") from None
    check_shape(pixels, path)
    bit_depth = 16 if pixels.dtype != np.uint8 else 8
    return DecodedImage(pixels, bit_depth, hashlib.sha256(data).hexdigest()[:32])


def _single_channel(image, path: str) -> np.ndarray:
    mode = image.mode
    # np.asarray of a Pillow image is already a fresh (read-only) array: no further copies on the fast path
    if mode == "L":
        return np.asarray(image)
    if mode == "LA":
        return np.ascontiguousarray(np.asarray(image)[..., 0])
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)  # also turns big-endian I;16B into native order
    if mode == "I":
        values = np.asarray(image)
        if values.min() >= 0 and values.max() <= 65535:
            return values.astype(np.uint16)
        return _minmax(values.astype(np.float64))
    if mode == "F":
        return _minmax(np.asarray(image).astype(np.float64))
    if mode == "1":
        return np.asarray(image.convert("L"))
    try:
        rgb = np.asarray(image.convert("RGB"))  # palette, RGBA (alpha dropped), CMYK, YCbCr, ...
    except ValueError:
        raise UnreadableImage(f"{path} has image mode {mode!r}, which meddenoise cannot convert") from None
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    # ITU-R BT.601 luma, computed in float so there is no extra rounding before the resize
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / np.float32(255.0)


def _minmax(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.float32)
    low, high = values[finite].min(), values[finite].max()
    scaled = (np.where(finite, values, low) - low) / max(high - low, 1e-12)
    return scaled.astype(np.float32)


def check_shape(pixels: np.ndarray, path: str) -> None:
    if pixels.ndim != 2:
        raise UnreadableImage(f"{path} decodes to shape {pixels.shape}; expected one 2-D image")
    if min(pixels.shape) < MIN_SIDE:
        raise UnreadableImage(
            f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; images need at least {MIN_SIDE} on a side"
        )


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    return np.clip(pixels.astype(np.float32), 0.0, 1.0)


def fit_square(pixels: np.ndarray, fit: str) -> np.ndarray:
    """Make (H, W) square: 'crop' keeps the centre, 'pad' adds black borders, 'stretch' leaves it as is."""
    height, width = pixels.shape
    if height == width or fit == "stretch":
        return pixels
    side = min(height, width) if fit == "crop" else max(height, width)
    if fit == "crop":
        top, left = (height - side) // 2, (width - side) // 2
        return pixels[top : top + side, left : left + side]
    padded = np.zeros((side, side), dtype=pixels.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    padded[top : top + height, left : left + width] = pixels
    return padded


def resize_quantized(pixels: np.ndarray, size: int, filter_name: str, out_dtype: str) -> np.ndarray:
    """(H, W) -> (size, size) in `out_dtype` (uint8 or uint16), antialiased.

    uint8 inputs going to uint8 are resized by Pillow in 8-bit ('L'), the fast path for NIH-style PNGs;
    anything else goes through float32 ('F') so 16-bit precision survives.
    """
    from PIL import Image

    resample = {
        "lanczos": Image.Resampling.LANCZOS,
        "box": Image.Resampling.BOX,
        "bilinear": Image.Resampling.BILINEAR,
    }[filter_name]
    if pixels.dtype == np.uint8 and out_dtype == "uint8":
        if pixels.shape == (size, size):
            return np.ascontiguousarray(pixels)
        return np.asarray(Image.fromarray(np.ascontiguousarray(pixels), "L").resize((size, size), resample))
    unit = to_unit_float(pixels)
    if unit.shape != (size, size):
        unit = np.asarray(Image.fromarray(np.ascontiguousarray(unit), "F").resize((size, size), resample))
    max_value = 255.0 if out_dtype == "uint8" else 65535.0
    return np.round(np.clip(unit, 0.0, 1.0) * max_value).astype(out_dtype)


def stretch_minmax(pixels: np.ndarray) -> np.ndarray:
    """Per-image contrast stretch to [0, 1] (the `--normalize minmax` option), keeping the dtype's meaning."""
    return _minmax(to_unit_float(pixels).astype(np.float64))


def has_dicom_preamble(path: str) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble, whatever their extension."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False
