"""`meddenoise doctor`: what the installation can do, and placing the LPIPS backbone after a checksum."""

from __future__ import annotations

import hashlib

import pytest

from meddenoise import doctor
from meddenoise.cli import main
from meddenoise.errors import MeddenoiseError


def test_doctor_lists_devices_lpips_packages_and_disk(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: LPIPS missing
    monkeypatch.delenv("MEDDENOISE_LPIPS_BACKBONE", raising=False)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "GPU", "LPIPS weights", "opacus", "flwr", "bm3d", "disk (working folder)"):
        assert f" {name} " in out
    lpips_line = next(line for line in out.splitlines() if "LPIPS weights" in line)
    # the missing file is named with where to get it, its checksum prefix and the command that places it
    assert lpips_line.startswith("-- ") and "alexnet-owt-7be5be79.pth" in lpips_line
    assert "7be5be79" in lpips_line and "meddenoise doctor --place-lpips FILE" in lpips_line


def test_place_lpips_refuses_a_file_with_another_checksum_and_copies_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    fake = tmp_path / "alexnet.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(MeddenoiseError, match="does not start with 7be5be79.*nothing was copied"):
        doctor.place_lpips_backbone(fake)
    assert not (tmp_path / "torch").exists() or not any((tmp_path / "torch").rglob("*.pth"))
    assert (
        main(["doctor", "--place-lpips", str(tmp_path / "missing.pth")]) == 2
    )  # an error, like every command


def test_place_lpips_copies_a_matching_file_where_lpips_looks(tmp_path, monkeypatch):
    from meddenoise.metrics.perceptual import default_backbone_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    payload = b"stand-in weights"
    source = tmp_path / "download.pth"
    source.write_bytes(payload)
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    target = doctor.place_lpips_backbone(source, expected_prefix=prefix)
    assert target == default_backbone_path() and target.read_bytes() == payload
    assert str(target).startswith(str(tmp_path / "torch"))
