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
import difflib
import json
import math
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
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A config field with its help text; `choices` are validated, `required` fields have no usable default.

    `ge` / `gt` / `le` / `lt` bound a number (>=, >, <=, <; for a list, each item), checked with the type when
    a config is built from flags, a TOML file or a mapping; a float option is also always finite (NaN or inf
    would pass every comparison-free rule downstream, e.g. `nan > 0` is false and silently meant "off").

    `flag` overrides the command-line spelling (default: `--field-name`); `cli=False` keeps a field out of
    the command line (settable from TOML only); `bare` is the value of the flag given without a value
    (e.g. `--resume` alone means `--resume yes`).

    A field whose type is itself a config dataclass (e.g. `noise: NoiseSpec = option(NoiseSpec(), "...")`)
    is a group: its fields become `--noise-kind`, `--noise-std`, ... in one argparse group, a `[noise]` table
    in TOML and a nested object in config.json. Flat keys (`noise_std = 0.2`) are read too.
    """
    # A tuple is kept as it is: a subclass may accept more than it lists (registered noise kinds).
    kept = choices if isinstance(choices, tuple) else tuple(choices) if choices else None
    metadata = {"help": help, "choices": kept or None, "required": required}
    metadata.update({"flag": flag, "cli": cli, "bare": bare})
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    metadata["bounds"] = {key: value for key, value in bounds.items() if value is not None}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda: dataclasses.replace(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _group_class(annotation: Any) -> type | None:
    """The config dataclass a field groups, or None for a plain field."""
    base, _ = _unwrap_optional(annotation)
    return base if isinstance(base, type) and dataclasses.is_dataclass(base) else None


def _groups(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: group for f in dataclasses.fields(cls) if (group := _group_class(hints[f.name]))}


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
        raise ConfigError(f"option '{name}' cannot be empty", name)
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
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"option '{name}' must be a finite number; got {value!r}", name)
            return number
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        type_name = getattr(base, "__name__", str(base))
        raise ConfigError(f"option '{name}' expects {type_name}, got {value!r}", name) from None
    return value


def describe_bounds(bounds: dict[str, float]) -> str:
    """`{"ge": 1, "le": 1024}` -> "between 1 and 1024", `{"gt": 0, "lt": 1}` -> "in (0, 1)", `{"ge": 0}` ->
    ">= 0"."""
    low = ("ge", bounds["ge"]) if "ge" in bounds else ("gt", bounds["gt"]) if "gt" in bounds else None
    high = ("le", bounds["le"]) if "le" in bounds else ("lt", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        if low[0] == "ge" and high[0] == "le":
            return f"between {low[1]:g} and {high[1]:g}"
        return f"in {'[' if low[0] == 'ge' else '('}{low[1]:g}, {high[1]:g}{']' if high[0] == 'le' else ')'}"
    symbol = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    kind, bound = low or high  # type: ignore[misc]
    return f"{symbol[kind]} {bound:g}"


def _check_bounds(field: dataclasses.Field, value: Any, name: str) -> None:
    bounds = field.metadata.get("bounds")
    if not bounds or value is None:
        return
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        inside = (
            item >= bounds.get("ge", -math.inf)
            and item > bounds.get("gt", -math.inf)
            and item <= bounds.get("le", math.inf)
            and item < bounds.get("lt", math.inf)
        )
        if not inside:
            raise ConfigError(f"{name} must be {describe_bounds(bounds)}; got {item}", name)


def check_bounds(config: Any, prefix: str = "") -> None:
    """The declared bounds (and finiteness) of every number of an already-typed config: for a config made in
    code (`dataclasses.replace`) whose `check()` runs without `validate_config`."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(
                    f"option '{prefix + field.name}' must be a finite number; got {item}", prefix + field.name
                )
        _check_bounds(field, value, prefix + field.name)


def validate_config(config: Any, prefix: str = "") -> Any:
    """Coerce every field to its type and check choices and required fields; return the config.

    `prefix` ("noise.") names the fields of a group in messages and in `ConfigError.parameter`.
    """
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        name = prefix + field.name
        group = _group_class(hints[field.name])
        if group is not None:
            value = getattr(config, field.name)
            if not isinstance(value, group):
                value = config_from_mapping(group, _group_mapping(group, value, name), prefix=name + ".")
            else:
                validate_config(value, prefix=name + ".")
            object.__setattr__(config, field.name, value)
            continue
        value = _coerce(getattr(config, field.name), hints[field.name], name)
        _check_bounds(field, value, name)
        choices = field.metadata.get("choices")
        if choices and value is not None:
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                if item not in choices:
                    allowed = ", ".join(map(str, choices))
                    raise ConfigError(f"option '{name}' must be one of {allowed}; got {item!r}", name)
        if field.metadata.get("required") and value in ("", None):
            raise ConfigError(f"option '{name}' is required (--{name.replace('_', '-')})", name)
        object.__setattr__(config, field.name, value)
    check = getattr(config, "check", None)
    if callable(check):
        check()
    return config


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; every way a path can fail to be one is a one-line ConfigError naming it."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", "config") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give a TOML file", "config") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not a text (UTF-8) TOML file: byte {exc.start} cannot be decoded",
            "config",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", "config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}", "config") from None


def _group_mapping(group: type, value: Any, name: str) -> dict[str, Any]:
    """A group's values as a mapping: a table/dict as it is, a bare value as the group's SHORTHAND field."""
    if isinstance(value, dict):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    shorthand = getattr(group, "SHORTHAND", None)
    if shorthand is None:
        raise ConfigError(
            f"option '{name}' expects a table of {group.__name__} settings; got {value!r}", name
        )
    return {shorthand: value}


def normalise_mapping(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Keys with '_' for '-', old names renamed (the class's LEGACY_KEYS), and each group's keys gathered
    into one dict: `noise_std = 0.2`, `noise = {std = 0.2}` and `noise = "poisson"` (a SHORTHAND) all read."""
    legacy = getattr(cls, "LEGACY_KEYS", {})
    normalised: dict[str, Any] = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        normalised[legacy.get(key, key)] = value
    for name, group in _groups(cls).items():
        members = {f.name for f in dataclasses.fields(group)}
        gathered: dict[str, Any] = {}
        if name in normalised:
            gathered.update(_group_mapping(group, normalised.pop(name), name))
        for key in [k for k in normalised if k.startswith(name + "_") and k[len(name) + 1 :] in members]:
            gathered[key[len(name) + 1 :]] = normalised.pop(key)
        if gathered:
            normalised[name] = {k.replace("-", "_"): v for k, v in gathered.items()}
    return normalised


Unknown = tuple[str, list[str], list[str]]


def _unknown_keys(cls: type, normalised: dict[str, Any], prefix: str) -> list[Unknown]:
    """Every unknown key of `normalised`, its groups' tables included (`noise.meen`), so one pass reports
    every typo of a file: (key, the keys known at its level, those plus the flat group spellings such as
    `noise_mean`, which are accepted and which a flat typo resembles)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    groups = _groups(cls)
    listed = sorted(prefix + key for key in fields)
    flat = [f"{prefix}{g}_{f.name}" for g, group in groups.items() for f in dataclasses.fields(group)]
    found = [(prefix + key, listed, listed + flat) for key in normalised if key not in fields]
    for name, group in groups.items():
        value = normalised.get(name)
        if isinstance(value, dict):
            found += _unknown_keys(group, normalise_mapping(group, value), prefix + name + ".")
    return found


def unknown_keys_message(unknown: list[Unknown], source: str) -> str:
    """ "unknown key(s) in SOURCE: a, noise.b; known keys: ...; did you mean x (for a), ...?" (difflib)."""
    known: list[str] = []
    for _, listed, _ in unknown:
        known += [key for key in listed if key not in known]
    hints = []
    for key, _, candidates in unknown:
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        if close:
            hints.append(f"{close[0]} (for {key})")
    message = f"unknown key(s) in {source}: {', '.join(key for key, _, _ in unknown)}; known keys: "
    return message + ", ".join(known) + (f"; did you mean {', '.join(hints)}?" if hints else "")


def config_from_mapping(cls: type[T], values: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Build and validate `cls` from a mapping; unknown keys are errors (they are usually typos), all of them
    reported at once, with the closest known key."""
    normalised = normalise_mapping(cls, values)
    unknown = _unknown_keys(cls, normalised, prefix)
    if unknown:
        raise ConfigError(unknown_keys_message(unknown, source), unknown[0][0])
    return validate_config(cls(**normalised), prefix=prefix)


def _field_default(field: dataclasses.Field) -> Any:
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def _flag(field: dataclasses.Field, prefix: str = "") -> str:
    if not prefix and field.metadata.get("flag"):
        return field.metadata["flag"]
    return "--" + (prefix + field.name).replace("_", "-")


def _add_argument(target: Any, field: dataclasses.Field, annotation: Any, flag: str, dest: str) -> None:
    help_text = field.metadata.get("help", "")
    default = _field_default(field)
    if field.metadata.get("required"):
        help_text += " (required)"
    elif default not in ("", None):
        help_text += f" (default: {default})"
    base, _ = _unwrap_optional(annotation)
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
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
    target.add_argument(flag, **kwargs)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per dataclass field, plus `--config FILE.toml` to read them from a file.

    A group field (see `option`) adds an argparse group of `--<group>-<field>` options; every command that
    has the same group therefore has the same flags, help and defaults.
    """
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
        group = _group_class(hints[field.name])
        if group is None:
            _add_argument(parser, field, hints[field.name], _flag(field), field.name)
            continue
        arguments = parser.add_argument_group(f"{field.name} options", field.metadata.get("help"))
        group_hints = typing.get_type_hints(group)
        for member in dataclasses.fields(group):
            flag = _flag(member, prefix=field.name + "_")
            _add_argument(arguments, member, group_hints[member.name], flag, f"{field.name}.{member.name}")


def _values_from_args(cls: type, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        values.update(normalise_mapping(cls, load_toml(config_file)))
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in vars(args).items():
        name, _, member = key.partition(".")
        if name not in known:
            continue
        if member:
            values[name] = {**values.get(name, {}), member: value}
        else:
            values[name] = value
    return values, config_file or "command line"


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Defaults, then the TOML file given with --config, then options given on the command line."""
    values, source = _values_from_args(cls, args)
    return config_from_mapping(cls, values, source=source)


def given_options(cls: type, args: argparse.Namespace) -> set[str]:
    """Options set in the --config file or on the command line, not left at their default (`noise.std`
    for a group's field)."""
    values, _ = _values_from_args(cls, args)
    given: set[str] = set()
    for name, value in values.items():
        if name in _groups(cls) and isinstance(value, dict):
            given.update(f"{name}.{member}" for member in value)
        else:
            given.add(name)
    return given


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
    """One `key = value` line per field (`group.key = value` inside a group), for logs."""
    lines = [f"{type(config).__name__}:"]
    for key, value in config_to_dict(config).items():
        if isinstance(value, dict) and key in _groups(type(config)):
            lines += [f"  {key}.{member} = {item!r}" for member, item in value.items()]
        else:
            lines.append(f"  {key} = {value!r}")
    return "\n".join(lines)


def config_to_toml(config: Any, hidden: typing.Iterable[str] = ()) -> str:
    """The config as a TOML file that `--config` reads back to the same config: top-level keys, then one
    `[group]` table per group. Unset (None) values and `hidden` keys (`noise.seed`) become comments, since
    TOML has no null; `print_config` is left out, or reading the file back would print again and stop."""
    hidden = set(hidden)
    groups = _groups(type(config))
    lines = [f"# {type(config).__name__}: meddenoise's effective options; run with --config FILE.toml"]
    tables: list[str] = []
    for key, value in config_to_dict(config).items():
        if key == "print_config":
            continue
        if key in groups and isinstance(value, dict):
            tables += ["", f"[{key}]"]
            tables += [_toml_line(k, v, f"{key}.{k}" in hidden) for k, v in value.items()]
        else:
            lines.append(_toml_line(key, value, key in hidden))
    return "\n".join(lines + tables)


def _toml_line(key: str, value: Any, hidden: bool) -> str:
    if hidden:
        return f"# {key} = <secret> (not printed)"
    if value is None:
        return f"# {key} = (not set)"
    return f"{_toml_key(key)} = {_toml_value(value)}"


def _toml_key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # finite: NaN and inf never pass validation
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + (f" {items} " if items else "") + "}"
    # A JSON string is a TOML basic string, except that TOML also wants DEL escaped.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def print_config_and_exit(config: Any, hidden: typing.Iterable[str] = ()) -> typing.NoReturn:
    """`--print-config`: print the effective config as TOML and stop without running (Lightning's and
    argparse's `--help` convention: a look at what would run must not start a long job)."""
    print(config_to_toml(config, hidden), flush=True)
    raise SystemExit(0)


# -- options every command spells the same way (a test compares them across all parsers) -------------------
def quiet_option(default: bool = False) -> Any:
    return option(default, "no progress bars or library chatter (for logs)")


def print_config_option() -> Any:
    return option(
        False,
        "print the effective configuration as TOML (readable with --config) and exit without running",
    )


def seed_option(default: int = 0) -> Any:
    return option(default, "seed of the command's random choices (the noise has its own: --noise-seed)")


def run_option(help: str = "run folder written by `meddenoise train` (or a .safetensors checkpoint)") -> Any:
    return option("", help, required=True)


def command_config(cls: type[T], args: argparse.Namespace, complete: Any = None) -> T:
    """A command's effective config: defaults < --config file < command line, then `complete(config, given)`
    (`given`: the options set explicitly, see `given_options`) when the command fills in defaults that
    depend on others; with `print_config` set, printed as TOML and the command exits (see
    `print_config_and_exit`). Saving it with the outputs is the command's."""
    config = config_from_args(cls, args)
    if complete is not None:
        config = complete(config, given_options(cls, args))
    if getattr(config, "print_config", False):
        print_config_and_exit(config)
    return config
