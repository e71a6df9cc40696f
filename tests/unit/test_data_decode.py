"""Decoding of PNG/JPEG/TIFF files into one channel, the geometry steps, and each kind of bad file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from meddenoise.data.decode import UnreadableImage, decode_pil_bytes, fit_square, resize_quantized
from meddenoise.data.sources.folder import decode_file


def gradient(height=32, width=32) -> np.ndarray:
    return (np.add.outer(np.arange(height), np.arange(width)) * 255 // (height + width - 2)).astype(np.uint8)


def decode_path(path):
    return decode_file(str(path))


def test_8bit_grayscale_png(tmp_path, image_files):
    pixels = gradient()
    decoded = decode_path(image_files.png(tmp_path / "a.png", pixels))
    assert decoded.bit_depth == 8 and decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert len(decoded.source_hash) == 32


def test_16bit_png_keeps_full_precision(tmp_path, image_files):
    pixels = (np.arange(32 * 32, dtype=np.uint16) * 61).reshape(32, 32)
    decoded = decode_path(image_files.png(tmp_path / "a.png", pixels))
    assert decoded.bit_depth == 16 and decoded.pixels.dtype == np.uint16
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_16bit_tiff(tmp_path):
    pixels = (np.arange(32 * 32, dtype=np.uint16) * 50).reshape(32, 32)
    Image.fromarray(pixels).save(tmp_path / "a.tif")
    decoded = decode_path(tmp_path / "a.tif")
    assert decoded.bit_depth == 16
    np.testing.assert_array_equal(decoded.pixels, pixels)


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA", "P"])
def test_grayscale_stored_as_colour_or_with_alpha_keeps_the_gray_values(tmp_path, mode):
    gray = gradient()
    image = Image.fromarray(gray, "L").convert(mode)
    if mode in ("RGBA", "LA"):
        image.putalpha(Image.fromarray(np.full_like(gray, 128)))  # alpha must be ignored, not blended
    image.save(tmp_path / "a.png")
    decoded = decode_path(tmp_path / "a.png")
    assert decoded.bit_depth == 8 and decoded.pixels.shape == gray.shape
    np.testing.assert_array_equal(decoded.pixels, gray)


def test_colour_image_becomes_luminance(tmp_path):
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    Image.fromarray(rgb, "RGB").save(tmp_path / "a.png")
    decoded = decode_path(tmp_path / "a.png")
    assert decoded.pixels.dtype == np.float32
    np.testing.assert_allclose(decoded.pixels, 0.299 * 200 / 255, atol=1e-5)


def test_jpeg(tmp_path):
    Image.fromarray(gradient(), "L").save(tmp_path / "a.jpg", quality=95)
    decoded = decode_path(tmp_path / "a.jpg")
    assert decoded.pixels.shape == (32, 32) and np.abs(decoded.pixels.astype(int) - gradient()).max() < 12


def test_bad_files_raise_unreadable_with_the_file_name(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    Image.fromarray(np.zeros((1, 300), np.uint8)).save(tmp_path / "line.png")
    frames = [Image.fromarray(gradient()) for _ in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    expected = {
        "empty.png": "empty",
        "text.png": "not an image",
        "truncated.png": "truncated",
        "line.png": "at least 16",
        "stack.tif": "3 frames",
    }
    for name, message in expected.items():
        with pytest.raises(UnreadableImage, match=message) as caught:
            decode_path(tmp_path / name)
        assert name in str(caught.value)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(UnreadableImage, match="cannot read"):
        decode_path(tmp_path / "gone.png")


def test_fit_square():
    wide = np.arange(20 * 40).reshape(20, 40)
    assert fit_square(wide, "crop").shape == (20, 20)
    np.testing.assert_array_equal(fit_square(wide, "crop"), wide[:, 10:30])
    padded = fit_square(wide, "pad")
    assert padded.shape == (40, 40) and padded[:10].max() == 0
    np.testing.assert_array_equal(padded[10:30], wide)
    assert fit_square(wide, "stretch") is wide


def test_resize_is_antialiased_and_keeps_range():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)  # finest possible detail
    for name in ("lanczos", "box", "bilinear"):
        small = resize_quantized(checker, 16, name, "uint8")
        assert small.shape == (16, 16) and small.dtype == np.uint8
        assert abs(float(small.mean()) - 127.5) < 3 and small.std() < 10  # aliasing would give 0/255 patterns
    wide = resize_quantized(np.full((40, 40), 0.5, np.float32), 16, "lanczos", "uint16")
    assert wide.dtype == np.uint16 and np.all(np.abs(wide.astype(int) - 32768) <= 1)


def test_decode_pil_bytes_rejects_unknown_bytes():
    with pytest.raises(UnreadableImage):
        decode_pil_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "fake.png")


def test_other_pixel_modes_become_one_channel(tmp_path):
    gray = gradient()
    wide = gray.astype(np.int32) * 1000 - 50_000  # 32-bit with values outside 0..65535: min-max scaled
    Image.fromarray(wide, "I").save(tmp_path / "wide.tif")
    Image.fromarray(gray.astype(np.float32) * 3.0 - 7.0, "F").save(tmp_path / "float.tif")
    Image.fromarray(gray, "L").convert("1").save(tmp_path / "bilevel.png")
    Image.fromarray(gray, "L").convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    for name in ("wide.tif", "float.tif"):
        decoded = decode_path(tmp_path / name)
        assert decoded.pixels.dtype == np.float32 and decoded.bit_depth == 16, name
        np.testing.assert_allclose(decoded.pixels, gray / 255.0, atol=1e-6, err_msg=name)
    bilevel = decode_path(tmp_path / "bilevel.png")
    assert bilevel.pixels.dtype == np.uint8 and set(np.unique(bilevel.pixels)) <= {0, 255}
    cmyk = decode_path(tmp_path / "cmyk.jpg")
    assert cmyk.pixels.shape == gray.shape and cmyk.bit_depth == 8
