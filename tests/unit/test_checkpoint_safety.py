"""Checkpoints from elsewhere: metadata that asks for another (huge) model is refused before any model is
built for real, and a refused state file never comes with advice to unpickle it."""

from __future__ import annotations

import json
import types

import pytest
import torch

from meddenoise.engine import checkpoint as ckpt
from meddenoise.errors import MeddenoiseError
from meddenoise.models import build_model, list_models

TINY = {"unet": {"depth": 3}, "unetpp": {"depth": 3}, "dncnn": {"num_layers": 3}}


def save(path, model_name, options, tensors=None):
    from safetensors.torch import save_file

    if tensors is None:
        tensors = ckpt.plain_state_dict(build_model(model_name, base_channels=4, **options))
    metadata = {"model": model_name, "model_options": {"base_channels": 4, **options}}
    save_file(tensors, str(path), metadata={ckpt.METADATA_KEY: json.dumps(metadata)})
    return path


@pytest.mark.parametrize("name", list_models())
def test_every_model_loads_after_the_shape_check(tmp_path, name):
    path = save(tmp_path / f"{name}.safetensors", name, TINY.get(name, {}))
    model, metadata = ckpt.load_trained_model(path)
    assert metadata.model_name == name and next(model.parameters()).device.type == "cpu"


@pytest.fixture
def real_builds(monkeypatch):
    """Records every model built outside the meta device (i.e. with real memory)."""
    import meddenoise.models
    import meddenoise.models.registry

    built, calls = [], []

    def recording(name, **options):
        model = build_model(name, **options)
        calls.append(name)
        if next(model.parameters()).device.type != "meta":
            built.append((name, options))
        return model

    monkeypatch.setattr(meddenoise.models.registry, "build_model", recording)
    monkeypatch.setattr(meddenoise.models, "build_model", recording)
    return types.SimpleNamespace(real=built, any=calls)


def crafted(tmp_path, options):
    """A real tiny U-Net's tensors with metadata edited to ask for `options`."""
    from safetensors.torch import save_file

    tensors = ckpt.plain_state_dict(build_model("unet", base_channels=4, depth=3))
    path = tmp_path / "crafted.safetensors"
    metadata = {"model": "unet", "model_options": options}
    save_file(tensors, str(path), metadata={ckpt.METADATA_KEY: json.dumps(metadata)})
    return path


def test_metadata_asking_for_a_bigger_model_is_refused_before_it_is_built(tmp_path, real_builds):
    path = crafted(tmp_path, {"base_channels": 48, "depth": 3})  # within the cap, but not these tensors
    with pytest.raises(
        MeddenoiseError, match="refused before building its model.*does not match its tensors"
    ):
        ckpt.load_trained_model(path)
    assert real_builds.any == ["unet"]  # built once, on the meta device
    assert real_builds.real == []


def test_absurd_option_values_are_capped_by_what_the_file_holds(tmp_path, real_builds):
    path = crafted(tmp_path, {"base_channels": 1_000_000_000, "depth": 3})
    with pytest.raises(MeddenoiseError, match="base_channels=1000000000 is larger than anything"):
        ckpt.load_trained_model(path)
    path = crafted(tmp_path, {"base_channels": 4, "depth": 5000})
    with pytest.raises(MeddenoiseError, match="depth=5000 is larger than anything"):
        ckpt.load_trained_model(path)
    assert real_builds.any == []


class RunsCode:
    def __reduce__(self):
        return (print, ("this should never run",))


def test_a_refused_state_file_gets_no_advice_to_unpickle_it(tmp_path, capsys):
    path = tmp_path / "last.state.pt"
    torch.save({"format_version": ckpt.FORMAT_VERSION, "payload": RunsCode()}, path)
    with pytest.raises(MeddenoiseError) as refused:
        ckpt.load_training_state(path)
    message = str(refused.value)
    assert "weights_only" not in message and "trust" not in message
    assert "the Python object print" in message and "meddenoise refuses" in message and str(path) in message
    assert "this should never run" not in capsys.readouterr().out


def test_a_refused_lpips_weight_file_gets_no_advice_either(tmp_path):
    from meddenoise.metrics.perceptual import MetricUnavailable, _load_state

    path = tmp_path / "lin.pth"
    torch.save({"lin0.model.1.weight": RunsCode()}, path)
    with pytest.raises(MetricUnavailable) as refused:
        _load_state(path, "LPIPS lin weights")
    assert "weights_only" not in str(refused.value) and "meddenoise refuses" in str(refused.value)


def test_a_training_state_with_flipped_bytes_is_refused_not_resumed(tmp_path):
    """Issue 23, row 13: 400 bytes flipped in last.state.pt resumed silently from wrong values."""
    state = {"model": {"weight": torch.arange(50_000, dtype=torch.float32)}, "epoch": 3}
    path = tmp_path / "last.state.pt"
    path.write_bytes(ckpt.training_state_payload(state))
    loaded = ckpt.load_training_state(path)
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"]) and loaded["epoch"] == 3
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(b ^ 0xFF for b in data[middle : middle + 400])
    path.write_bytes(bytes(data))
    with pytest.raises(MeddenoiseError, match="is damaged: its content no longer matches the checksum"):
        ckpt.load_training_state(path)


def test_a_training_state_written_before_checksums_still_loads(tmp_path):
    path = tmp_path / "old.state.pt"
    torch.save({"format_version": ckpt.FORMAT_VERSION, "epoch": 2}, path)
    assert ckpt.load_training_state(path)["epoch"] == 2


def test_an_empty_tensor_does_not_lift_the_option_cap(tmp_path, real_builds):
    """Issue 23, row 8: a 672-byte file with a [0, 10**7] tensor and DnCNN num_layers=100000 took 1.7-3.6 GB
    and up to two minutes before it was refused."""
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    metadata = {"model": "dncnn", "model_options": {"num_layers": 100_000, "base_channels": 4}}
    save_file(
        {"huge": torch.zeros(0, 10_000_000)}, str(path), metadata={ckpt.METADATA_KEY: json.dumps(metadata)}
    )
    assert path.stat().st_size < 1000
    with pytest.raises(MeddenoiseError, match="num_layers=100000 is larger than anything its 1 tensors hold"):
        ckpt.load_trained_model(path)
    assert real_builds.any == []  # refused before any model, even on the meta device
