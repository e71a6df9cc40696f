"""`NoiseSpec`: one description of the noise, through config files, run files and every command's flags."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from meddenoise.cli import main
from meddenoise.config import add_config_arguments, config_from_args, config_from_mapping, load_config
from meddenoise.engine.config import TrainConfig
from meddenoise.errors import ConfigError
from meddenoise.noise import NoiseSpec, build_noise


def test_spec_builds_the_operator_it_describes():
    spec = NoiseSpec(kind="poisson_gaussian", mean=0.0, std=0.01, dose=250.0, clamp=False, seed=3)
    op = spec.build()
    same = build_noise("poisson_gaussian", mean=0.0, std=0.01, dose=250.0, clamp=False)
    assert op.describe() == same.describe()
    clean, keys = torch.rand(2, 1, 8, 8), torch.tensor([5, 9])
    assert torch.equal(op(clean, keys, seed=spec.seed), same(clean, keys, seed=3))


def test_copy_seeds_follow_one_rule():
    spec = NoiseSpec(seed=11)
    assert [spec.copy_seed(c) for c in range(3)] == [11, 11 + 7919, 11 + 2 * 7919]
    with pytest.raises(ConfigError):
        spec.copy_seed(1.5)


def test_round_trips_through_dicts_configs_and_files(tmp_path):
    spec = NoiseSpec(kind="poisson", dose=500.0, clamp=False, mode="fresh", seed=4, std=0.3)
    assert NoiseSpec.from_dict(spec.to_dict()) == spec
    # checkpoint metadata and evaluation records carry extra keys (noise_level, generator): ignored
    assert NoiseSpec.from_dict({**spec.to_dict(), "noise_level": "x", "generator": "y"}) == spec
    config = config_from_mapping(TrainConfig, {"data": "d", "out": "o", "noise": spec.to_dict()})
    assert config.noise == spec
    from meddenoise.config import save_config

    save_config(config, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())["config"]
    assert saved["noise"] == spec.to_dict()
    assert load_config(TrainConfig, tmp_path / "config.json").noise == spec


def test_old_flat_config_files_are_read(tmp_path):
    path = tmp_path / "config.json"
    flat = {"data": "d", "out": "o", "noise_kind": "gaussian", "noise_std": 0.3, "noise_seed": 2}
    path.write_text(json.dumps({"kind": "TrainConfig", "config": {**flat, "noise_dose": None}}))
    noise = load_config(TrainConfig, path).noise
    assert (noise.std, noise.seed, noise.mean) == (0.3, 2, 0.1)


def test_toml_table_flat_keys_and_the_command_line_combine(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    toml = tmp_path / "run.toml"
    toml.write_text('data = "d"\nout = "o"\nnoise_seed = 5\n[noise]\nstd = 0.1\nmean = 0.05\n')
    args = parser.parse_args(["--config", str(toml), "--noise-std", "0.3", "--no-noise-clamp"])
    noise = config_from_args(TrainConfig, args).noise
    assert (noise.std, noise.mean, noise.seed, noise.clamp) == (0.3, 0.05, 5, False)


def test_bad_values_name_the_parameter_in_the_library_and_the_flag_on_the_command_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"noise\.kind") as raised:
        config_from_mapping(TrainConfig, {"data": "d", "out": "o", "noise": {"kind": "speckle"}})
    assert raised.value.parameter == "noise.kind" and "--" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"noise\.dose") as raised:
        NoiseSpec.from_dict({"kind": "poisson"})
    assert "--" not in str(raised.value)

    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--noise-kind", "poisson"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "--noise-dose" in error and "Traceback" not in error
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--epochs", "0"]) == 2
    assert "(--epochs)" in capsys.readouterr().err


def test_every_command_that_takes_noise_has_the_same_flags():
    from meddenoise.cli import build_parser

    def noise_group(parser):
        (group,) = [g for g in parser._action_groups if g.title == "noise options"]
        return [(a.option_strings, a.help, a.choices, a.nargs, a.dest) for a in group._group_actions]

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    data_info = commands["data"]._subparsers._group_actions[0].choices["info"]
    groups = {name: noise_group(commands[name]) for name in ("train", "obfuscate", "privacy-audit")} | {
        "data info": noise_group(data_info)
    }
    first = groups["train"]
    flags = [flag for options, *_ in first for flag in options]
    assert flags == [
        "--noise-kind",
        "--noise-mean",
        "--noise-std",
        "--noise-clamp",
        "--no-noise-clamp",
        "--noise-dose",
        "--noise-mode",
        "--noise-seed",
    ]
    assert all(group == first for group in groups.values()), groups


def test_a_registered_noise_kind_is_accepted_everywhere_and_trains(make_prepared, tiny_fit, tmp_path):
    from meddenoise.noise.operators import OPERATORS, GaussianNoise
    from meddenoise.rundir import RunDir

    class HalfGaussian(GaussianNoise):
        kind = "half_gaussian"

        def _noisy(self, clean, key0, key1):
            return clean + (super()._noisy(clean, key0, key1) - clean).abs()

    unknown = "unknown noise kind 'half_gaussian'; available: gaussian, poisson, poisson_gaussian"
    with pytest.raises(ConfigError, match=unknown) as raised:
        NoiseSpec(kind="half_gaussian").check()
    assert raised.value.parameter == "noise.kind"
    with pytest.raises(ConfigError, match="unknown noise kind 'half_gaussian'"):
        build_noise("half_gaussian")
    OPERATORS.add("half_gaussian", lambda mean, std, clamp, dose: HalfGaussian(mean, std, clamp))
    try:
        spec = NoiseSpec(kind="half_gaussian", mean=0.0, std=0.1)
        spec.check()
        assert isinstance(spec.build(), HalfGaussian)
        assert isinstance(build_noise("half_gaussian"), HalfGaussian)
        noisy = spec.build()(torch.full((1, 1, 4, 4), 0.5), torch.tensor([3]), seed=0)
        assert bool((noisy >= 0.5).all())
        values = {"data": "d", "out": "o", "noise": {"kind": "half_gaussian"}}
        config = config_from_mapping(TrainConfig, values)
        assert config.noise.kind == "half_gaussian"
        data = make_prepared(n=16, size=16)
        run = tiny_fit(data, tmp_path / "run", epochs=1, noise_kind="half_gaussian")
        assert RunDir(run).read_config()["noise"]["kind"] == "half_gaussian"
    finally:
        OPERATORS.remove("half_gaussian")
