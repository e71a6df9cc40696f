"""Configuration as data: typed dataclasses, filled from defaults < TOML file < command-line options.

Each command declares one dataclass whose fields are built with `option(...)`. The same declaration drives
the argparse options (so `--help` explains every field), the TOML loader (unknown keys are errors) and the
`config.json` written next to every output, so a run can always be traced back to what produced it.

    @dataclass
    class PrepareConfig:
        out: str = option("", "output folder for the cache", required=True)
        size: int = option(256, "side of the square images, in pixels")

    add_config_arguments(parser, PrepareConfig)
    config = config_from_args(PrepareConfig, parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from meddenoise.errors import ConfigError
from meddenoise.fileio import atomic_write_json, read_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")


def option(
    default: Any,
    help: str,
    *,
    choices: typing.Sequence[Any] | None = None,
    required: bool = False,
    flag: str | None = None,
    cli: bool = True,
    bare: Any = None,
) -> Any:
    """A config field with its help text; `choices` are validated, `required` fields have no usable default.

    `flag` overrides the command-line spelling (default: `--field-name`); `cli=False` keeps a field out of
    the command line (settable from TOML only); `bare` is the value of the flag given without a value
    (e.g. `--resume` alone means `--resume yes`).
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "required": required}
    metadata.update({"flag": flag, "cli": cli, "bare": bare})
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a TOML/CLI value to the field's declared type, or raise a ConfigError naming the field."""
    base, optional = _unwrap_optional(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"option '{name}' cannot be empty")
    origin = typing.get_origin(base)
    try:
        if origin in (list, tuple):
            (item_type, *_rest) = typing.get_args(base) or (str,)
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, (list, tuple)):
                value = [value]
            items = [_coerce(v, item_type, name) for v in value]
            return tuple(items) if origin is tuple else items
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        type_name = getattr(base, "__name__", str(base))
        raise ConfigError(f"option '{name}' expects {type_name}, got {value!r}") from None
    return value


def validate_config(config: Any) -> Any:
    """Coerce every field to its type and check choices and required fields; return the config."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = _coerce(getattr(config, field.name), hints[field.name], field.name)
        choices = field.metadata.get("choices")
        if choices and value is not None:
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                if item not in choices:
                    allowed = ", ".join(map(str, choices))
                    raise ConfigError(f"option '{field.name}' must be one of {allowed}; got {item!r}")
        if field.metadata.get("required") and value in ("", None):
            raise ConfigError(f"option '{field.name}' is required (--{field.name.replace('_', '-')})")
        object.__setattr__(config, field.name, value)
    check = getattr(config, "check", None)
    if callable(check):
        check()
    return config


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def config_from_mapping(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build and validate `cls` from a mapping; unknown keys are errors (they are usually typos)."""
    known = {f.name for f in dataclasses.fields(cls)}
    normalised = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(normalised) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {source}: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    return validate_config(cls(**normalised))


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per dataclass field, plus `--config FILE.toml` to read them from a file."""
    hints = typing.get_type_hints(cls)
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        default=argparse.SUPPRESS,
        help="read options from a TOML file (keys are the option names with '_'); command-line options win",
    )
    for field in dataclasses.fields(cls):
        if not field.metadata.get("cli", True):
            continue
        flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if field.metadata.get("required"):
            help_text += " (required)"
        elif default not in ("", None):
            help_text += f" (default: {default})"
        base, _ = _unwrap_optional(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        if field.metadata.get("choices") and base is not bool:
            kwargs["choices"] = field.metadata["choices"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) in (list, tuple):
            item_type = (typing.get_args(base) or (str,))[0]
            kwargs.update(nargs="+", type=item_type if item_type in (int, float) else str, metavar="V")
        else:
            kwargs["type"] = base if base in (int, float) else str
            kwargs["metavar"] = field.name.upper() if base is str else base.__name__.upper()
        if field.metadata.get("bare") is not None:
            kwargs.update(nargs="?", const=field.metadata["bare"])
        if "choices" in kwargs:
            del kwargs["metavar"]  # argparse then shows the choices, {a,b,c}, in the usage and the help
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Defaults, then the TOML file given with --config, then options given on the command line."""
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        values.update(load_toml(config_file))
    known = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in known})
    return config_from_mapping(cls, values, source=config_file or "command line")


def config_to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_config(config: Any, path: str | Path) -> None:
    """Write the effective config as JSON (atomically), with the class name so it can be reloaded."""
    payload = {"kind": type(config).__name__, "config": config_to_dict(config)}
    atomic_write_json(path, payload)


def load_config(cls: type[T], path: str | Path) -> T:
    """A config saved by `save_config`, validated like any other (unknown keys are errors)."""
    payload = read_json(path, what="saved config")
    if not isinstance(payload, dict) or "config" not in payload:
        raise ConfigError(f"{path} is not a meddenoise config file")
    return config_from_mapping(cls, payload["config"], source=str(path))


def format_config(config: Any) -> str:
    """One `key = value` line per field, for printing at the start of a command."""
    lines = [f"{type(config).__name__}:"]
    lines += [f"  {key} = {value!r}" for key, value in config_to_dict(config).items()]
    return "\n".join(lines)
