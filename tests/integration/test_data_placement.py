"""`--data-placement`: streamed training equals resident training bitwise; running out of host memory while
loading the data gets the same advice as running out of device memory."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from meddenoise.config import config_from_mapping
from meddenoise.data.cache import load_prepared
from meddenoise.engine.checkpoint import load_weights
from meddenoise.engine.config import TrainConfig
from meddenoise.engine.train import fit
from meddenoise.errors import ConfigError, HostMemoryError, MeddenoiseError

TIMING_KEYS = {
    "train_seconds",
    "val_seconds",
    "images_per_second",
    "peak_memory_mb",
    "cpu_seconds",
    "load_average",
}


def tiny_config(data, out, **overrides) -> TrainConfig:
    values = dict(
        data=str(data),
        out=str(out),
        base_channels=8,
        depth=3,
        batch_size=3,
        val_batch_size=4,
        epochs=2,
        quiet=True,
        device="cpu",
    )
    return config_from_mapping(TrainConfig, {**values, **overrides})


def metrics_without_timings(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_streamed_training_equals_resident_training_bitwise(make_prepared, tmp_path):
    data = make_prepared(n=30, size=32)
    runs = {}
    for kind in ("device", "stream"):
        runs[kind] = fit(tiny_config(data, tmp_path / kind, data_placement=kind, checkpoint_every=2))
        assert f"data placement: {kind} (as asked" in (runs[kind] / "train.log").read_text()
    for name in ("last.safetensors", "best.safetensors"):
        resident = load_weights(runs["device"] / "checkpoints" / name)[0]
        streamed = load_weights(runs["stream"] / "checkpoints" / name)[0]
        assert resident.keys() == streamed.keys()
        for key in resident:
            assert torch.equal(resident[key], streamed[key]), (name, key)
    assert metrics_without_timings(runs["device"]) == metrics_without_timings(runs["stream"])
    resident_test = (runs["device"] / "test_metrics.csv").read_text()
    assert resident_test == (runs["stream"] / "test_metrics.csv").read_text()


def test_auto_streams_when_the_splits_exceed_the_share_of_free_memory(make_prepared, tmp_path, monkeypatch):
    from meddenoise.engine import placement

    monkeypatch.setattr(placement, "free_memory_bytes", lambda device: 1000)
    out = fit(tiny_config(make_prepared(n=16), tmp_path / "run", epochs=1, evaluate_test=False))
    assert "data placement: stream (auto: the splits take" in (out / "train.log").read_text()


def test_reference_pipeline_refuses_a_placement(make_prepared, tmp_path):
    with pytest.raises(ConfigError, match="data_placement applies to the fast pipeline") as refused:
        tiny_config(make_prepared(n=16), tmp_path / "run", pipeline="reference", data_placement="stream")
    assert refused.value.parameter == "data_placement"


ADVICE = r"out of memory while placing .*data_placement stream.*fewer images \(limit_train"


def test_host_memory_error_while_copying_the_splits_gets_the_out_of_memory_advice(
    make_prepared, tmp_path, monkeypatch
):
    from meddenoise.data import loader

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 55.0 GiB for an array with shape (112120, 1024, 1024)")

    monkeypatch.setattr(loader, "copy_rows", exhausted)
    with pytest.raises(MeddenoiseError, match=ADVICE + ".*") as caught:
        fit(tiny_config(make_prepared(n=16), tmp_path / "run", data_placement="device"))
    assert "host memory: MemoryError" in str(caught.value)


def test_device_out_of_memory_gets_the_same_advice(make_prepared, tmp_path, monkeypatch):
    from meddenoise.data import loader

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loader, "copy_rows", exhausted)
    with pytest.raises(MeddenoiseError, match=ADVICE):
        fit(tiny_config(make_prepared(n=16), tmp_path / "run", data_placement="device"))


def test_a_failed_memory_map_names_the_file_and_gets_the_same_advice(make_prepared, tmp_path, monkeypatch):
    data = make_prepared(n=16)
    real_load = np.load

    def refuse_map(path, *args, **kwargs):
        if kwargs.get("mmap_mode"):
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", refuse_map)
    with pytest.raises(HostMemoryError, match=r"not enough memory to map .*images\.npy.*ulimit -v"):
        load_prepared(data)
    with pytest.raises(MeddenoiseError, match=ADVICE) as caught:
        fit(tiny_config(data, tmp_path / "run"))
    assert "images.npy" in str(caught.value)


def test_host_memory_error_during_training_suggests_streaming(make_prepared, tmp_path, monkeypatch):
    from meddenoise.engine.step import TrainStep

    def exhausted(self, batch, share, lr):
        raise MemoryError()

    monkeypatch.setattr(TrainStep, "__call__", exhausted)
    advice = r"out of host memory during training.*data_placement stream"
    with pytest.raises(MeddenoiseError, match=advice) as caught:
        fit(tiny_config(make_prepared(n=16), tmp_path / "run"))
    assert caught.value.parameter == "data_placement"


def test_out_of_memory_while_already_streaming_advises_a_smaller_batch(make_prepared, tmp_path, monkeypatch):
    """Issue 23, row 16: out of memory while streaming advised "use --data-placement stream"."""
    import dataclasses

    from meddenoise.engine.step import TrainStep

    def exhausted(self, batch, share, lr):
        raise MemoryError()

    monkeypatch.setattr(TrainStep, "__call__", exhausted)
    config = dataclasses.replace(tiny_config(make_prepared(n=16), tmp_path / "run"), data_placement="stream")
    with pytest.raises(MeddenoiseError) as caught:
        fit(config)
    message = str(caught.value)
    assert "already streamed from disk" in message and "batch_size" in message
    assert caught.value.parameter == "batch_size"
    assert "use data_placement stream" not in message
