"""Configuration as data: defaults < TOML file < command line, typed and validated, saved and reloaded."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from meddenoise.config import (
    add_config_arguments,
    config_from_args,
    config_from_mapping,
    format_config,
    load_config,
    option,
    save_config,
)
from meddenoise.errors import ConfigError


@dataclasses.dataclass
class ExampleConfig:
    out: str = option("", "output folder", required=True)
    size: int = option(256, "image side in pixels")
    std: float = option(0.2, "noise standard deviation")
    levels: list[float] = option([0.1, 0.2], "noise levels")
    mode: str = option("fixed", "noise mode", choices=("fixed", "fresh"))
    clamp: bool = option(True, "clamp to [0, 1]")
    dose: float | None = option(None, "photons per pixel")
    image_format: str = option("png16", "file format", flag="--format")
    secret: str = option("", "settable from TOML only", cli=False)

    def check(self) -> None:
        if self.size < 16:
            raise ConfigError(f"--size must be at least 16; got {self.size}")


def parse(argv: list[str]) -> ExampleConfig:
    parser = argparse.ArgumentParser(prog="example")
    add_config_arguments(parser, ExampleConfig)
    return config_from_args(ExampleConfig, parser.parse_args(argv))


def test_defaults_then_toml_then_command_line(tmp_path):
    assert parse(["--out", "o"]) == ExampleConfig(out="o")
    toml = tmp_path / "c.toml"
    toml.write_text(
        'out = "from-file"\nsize = 64\nstd = 1\nlevels = [0.3]\nsecret = "s"\nimage-format = "npy"\n'
    )
    from_file = parse(["--config", str(toml)])
    assert (from_file.out, from_file.size, from_file.std, from_file.levels) == ("from-file", 64, 1.0, [0.3])
    assert from_file.secret == "s" and from_file.image_format == "npy"  # dashes in TOML keys are accepted
    assert isinstance(from_file.std, float)
    overridden = parse(["--config", str(toml), "--size", "32", "--levels", "0.1", "0.5", "--format", "x"])
    assert (overridden.out, overridden.size, overridden.levels) == ("from-file", 32, [0.1, 0.5])
    assert overridden.image_format == "x"


def test_booleans_optional_values_and_list_strings():
    assert parse(["--out", "o", "--no-clamp"]).clamp is False
    assert parse(["--out", "o", "--dose", "1000"]).dose == 1000.0
    values = {"out": "o", "levels": "0.1, 0.2 0.4", "clamp": "off", "size": 64.0}
    config = config_from_mapping(ExampleConfig, values)
    assert config.levels == [0.1, 0.2, 0.4] and config.clamp is False and config.size == 64


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"sise": 3}, "unknown key(s) in config: sise; known keys: clamp, dose"),
        ({"size": "big"}, "option 'size' expects int, got 'big'"),
        ({"size": 2.5}, "option 'size' expects int"),
        ({"size": True}, "option 'size' expects int"),
        ({"clamp": "maybe"}, "option 'clamp' expects bool"),
        ({"mode": "sometimes"}, "option 'mode' must be one of fixed, fresh; got 'sometimes'"),
        ({"std": None}, "option 'std' cannot be empty"),
        ({"size": 8}, "--size must be at least 16"),  # the dataclass's own check()
    ],
)
def test_bad_values_raise_config_errors_naming_the_option(values, fragment):
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(ExampleConfig, {"out": "o", **values})
    assert fragment in str(caught.value)


def test_required_option_and_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match=r"option 'out' is required \(--out\)"):
        parse([])
    with pytest.raises(ConfigError, match="config file not found"):
        parse(["--config", str(tmp_path / "missing.toml")])
    (tmp_path / "bad.toml").write_text("size = = 3")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        parse(["--config", str(tmp_path / "bad.toml")])
    (tmp_path / "typo.toml").write_text("out = 'o'\n[section]\nsize = 3\n")
    with pytest.raises(ConfigError, match="typo.toml: section"):
        parse(["--config", str(tmp_path / "typo.toml")])


def test_help_explains_every_command_line_option():
    parser = argparse.ArgumentParser(prog="example")
    add_config_arguments(parser, ExampleConfig)
    text = " ".join(parser.format_help().split())
    for fragment in (
        "--out OUT output folder (required)",
        "--size INT image side in pixels (default: 256)",
        "--mode {fixed,fresh} noise mode (default: fixed)",
        "--clamp, --no-clamp clamp to [0, 1] (default: True)",
        "--format IMAGE_FORMAT file format",
        "--config FILE.toml",
    ):
        assert fragment in text
    assert "--secret" not in text


def test_saved_config_reloads_equal_and_prints_every_field(tmp_path):
    config = config_from_mapping(ExampleConfig, {"out": "o", "levels": [0.3], "dose": 5.0})
    save_config(config, tmp_path / "config.json")
    payload = json.loads((tmp_path / "config.json").read_text())
    assert payload["kind"] == "ExampleConfig" and payload["config"]["levels"] == [0.3]
    assert load_config(ExampleConfig, tmp_path / "config.json") == config
    printed = format_config(config)
    assert printed.splitlines()[0] == "ExampleConfig:"
    assert all(f"  {field.name} = " in printed for field in dataclasses.fields(ExampleConfig))
    (tmp_path / "other.json").write_text('{"not": "a config"}')
    with pytest.raises(ConfigError, match="not a meddenoise config file"):
        load_config(ExampleConfig, tmp_path / "other.json")


def test_list_defaults_are_not_shared_between_instances():
    first, second = ExampleConfig(out="a"), ExampleConfig(out="b")
    first.levels.append(0.9)
    assert second.levels == [0.1, 0.2]
