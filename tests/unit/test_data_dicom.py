"""DICOM: rescale slope/intercept, window / VOI LUT, MONOCHROME1 inversion, and clear errors for the rest."""

from __future__ import annotations

import numpy as np
import pytest

from meddenoise.data.decode import UnreadableImage
from meddenoise.data.sources.dicom import apply_window, decode_dicom, decoder_available, read_patient_id

RAMP = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # stored values 0..4095


def expected_window(stored, slope, intercept, center, width):
    values = stored.astype(np.float64) * slope + intercept
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_rescale_then_window_then_inversion(tmp_path, image_files, photometric):
    path = image_files.dicom(
        tmp_path / "a.dcm",
        RAMP,
        BitsStored=12,
        PhotometricInterpretation=photometric,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=1000,
        WindowWidth=2000,
    )
    decoded = decode_dicom(str(path))
    expected = expected_window(RAMP, 2, -1024, 1000, 2000)
    if photometric == "MONOCHROME1":
        expected = 1 - expected
    assert decoded.bit_depth == 16 and decoded.pixels.dtype == np.float32
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)


def test_monochrome1_makes_low_values_bright(tmp_path, image_files):
    path = image_files.dicom(tmp_path / "a.dcm", RAMP, BitsStored=12, PhotometricInterpretation="MONOCHROME1")
    pixels = decode_dicom(str(path)).pixels
    assert pixels[0, 0] == pytest.approx(1.0) and pixels[-1, -1] == pytest.approx(0.0)


def test_without_window_the_image_is_stretched_to_its_range(tmp_path, image_files):
    stored = (RAMP // 4 + 100).astype(np.uint16)
    pixels = decode_dicom(str(image_files.dicom(tmp_path / "a.dcm", stored, BitsStored=12))).pixels
    assert pixels.min() == 0 and pixels.max() == pytest.approx(1.0)
    np.testing.assert_allclose(pixels, (stored - 100.0) / (stored.max() - 100.0), atol=1e-6)


def test_multi_valued_window_uses_the_first(tmp_path, image_files):
    path = image_files.dicom(
        tmp_path / "a.dcm", RAMP, BitsStored=12, WindowCenter=[2048, 100], WindowWidth=[4096, 50]
    )
    np.testing.assert_allclose(
        decode_dicom(str(path)).pixels, expected_window(RAMP, 1, 0, 2048, 4096), atol=1e-6
    )


def test_voi_lut_sequence_is_applied(tmp_path, image_files):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = (4095 - np.arange(4096, dtype="<u2")).tobytes()  # inverting; output 0..4095 of 16 bits
    path = image_files.dicom(tmp_path / "a.dcm", RAMP, BitsStored=12, VOILUTSequence=Sequence([lut]))
    pixels = decode_dicom(str(path)).pixels
    np.testing.assert_allclose(pixels, (4095 - RAMP) / 65535.0, atol=1e-6)


def test_8bit_dicom(tmp_path, image_files):
    stored = (RAMP % 256).astype(np.uint8)
    decoded = decode_dicom(
        str(image_files.dicom(tmp_path / "a.dcm", stored, WindowCenter=127.5, WindowWidth=256))
    )
    assert decoded.bit_depth == 8
    np.testing.assert_allclose(decoded.pixels, expected_window(stored, 1, 0, 127.5, 256), atol=1e-6)


def test_window_functions():
    values = np.array([0.0, 50.0, 100.0])
    np.testing.assert_allclose(apply_window(values, 50, 101, "LINEAR"), [0.0, 0.5, 1.0], atol=1e-2)
    np.testing.assert_allclose(apply_window(values, 50, 100, "LINEAR_EXACT"), [0.0, 0.5, 1.0])
    sigmoid = apply_window(values, 50, 100, "SIGMOID")
    assert sigmoid[1] == pytest.approx(0.5) and sigmoid[0] < 0.2 and sigmoid[2] > 0.8


def test_patient_id_tag(tmp_path, image_files):
    path = image_files.dicom(tmp_path / "a.dcm", RAMP, PatientID="PX-17")
    assert read_patient_id(str(path)) == "PX-17"
    assert read_patient_id(str(image_files.dicom(tmp_path / "b.dcm", RAMP, PatientID=None))) == ""


def test_compressed_syntax_without_decoder_names_file_and_fix(tmp_path, image_files):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    if decoder_available(JPEGLSLossless):
        pytest.skip("a JPEG-LS decoder is installed here")
    path = image_files.dicom(
        tmp_path / "jls.dcm",
        RAMP,
        TransferSyntaxUID=JPEGLSLossless,
        PixelData=encapsulate([b"\xff\xd8" + b"\0" * 64]),
    )
    with pytest.raises(UnreadableImage, match="no installed decoder") as caught:
        decode_dicom(str(path))
    assert "jls.dcm" in str(caught.value) and "pip install" in str(caught.value)


def test_damaged_compressed_data_with_a_decoder_is_reported_as_unreadable(tmp_path, image_files):
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    path = image_files.dicom(
        tmp_path / "rle.dcm", RAMP, TransferSyntaxUID=RLELossless, PixelData=encapsulate([b"\0" * 10])
    )
    with pytest.raises(UnreadableImage, match="unreadable compressed"):
        decode_dicom(str(path))


def test_non_dicom_and_pixel_less_files(tmp_path, image_files):
    (tmp_path / "x.dcm").write_text("hello")
    with pytest.raises(UnreadableImage, match="not a DICOM file"):
        decode_dicom(str(tmp_path / "x.dcm"))
    path = image_files.dicom(tmp_path / "nopix.dcm", RAMP)
    import pydicom

    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(path)
    with pytest.raises(UnreadableImage, match="no pixel data"):
        decode_dicom(str(path))


def test_multi_frame_dicom_is_rejected(tmp_path, image_files):
    stack = np.concatenate([RAMP, RAMP])
    path = image_files.dicom(tmp_path / "mf.dcm", RAMP, NumberOfFrames=2, PixelData=stack.tobytes())
    with pytest.raises(UnreadableImage, match="2 frames"):
        decode_dicom(str(path))
