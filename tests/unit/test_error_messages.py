"""Library errors name parameters, never command-line flags: `ConfigError(message, parameter="noise.std")`,
and the CLI adds the flag of the command that was run (`(--noise-std)`). A flag written into a library
message would be wrong for the commands that spell the option differently or lack it (reproduce reaches the
trainer too), and for code that calls the library directly."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import meddenoise
from meddenoise.cli import build_parser, command_parser, flag_of, main
from meddenoise.errors import ConfigError, DataError, MeddenoiseError
from meddenoise.worker import flag_for

SOURCE = Path(meddenoise.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
# A command line quoted in backticks is an example to copy (`meddenoise prepare --out DIR`, `pip install
# --no-deps ...`, torchrun's own options), not a flag of the command at hand.
QUOTED = re.compile(r"`[^`]*`")
# Where flags belong: the command modules and the CLI itself know which command they serve.
FLAG_OWNERS = ("commands/", "cli.py")
# (file, flag) pairs allowed in library raise statements, each with its reason. Empty today; add only a
# message about an option that exists on the command line alone (no config field for `parameter=`).
ALLOWED: dict[tuple[str, str], str] = {}


def _message_text(node: ast.AST) -> str:
    """The literal text of an exception's arguments; f-string fields become `{}`."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else ""
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return " ".join(_message_text(child) for child in ast.iter_child_nodes(node))


def _flags_in_raises() -> list[str]:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        if relative.startswith(FLAG_OWNERS):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            for flag in FLAG.findall(QUOTED.sub("", _message_text(node.exc))):
                if (relative, flag) not in ALLOWED:
                    found.append(f"{relative}:{node.lineno}: {flag}")
    return found


def test_library_raise_statements_name_parameters_not_flags():
    assert _flags_in_raises() == [], "name the parameter (parameter=...) instead of the flag"


def test_the_scan_sees_a_flag_in_a_raise(tmp_path, monkeypatch):
    # the guard above must not pass because it looks at nothing
    (tmp_path / "bad.py").write_text('def f():\n    raise ValueError(f"use --batch-size {1}, `--ok`")\n')
    monkeypatch.setattr(f"{__name__}.SOURCE", tmp_path)
    assert _flags_in_raises() == ["bad.py:2: --batch-size"]


@pytest.mark.parametrize("error", [MeddenoiseError, DataError])
def test_every_meddenoise_error_can_name_its_parameter(error):
    assert error("gone", parameter="root").parameter == "root"
    assert error("gone").parameter is None
    assert ConfigError("bad", "noise.std").parameter == "noise.std"


def test_the_cli_adds_the_flag_of_the_named_parameter(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["prepare", "--source", "folder", "--root", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"image folder {missing} does not exist" in err and err.rstrip().endswith("(--root)")


@pytest.mark.parametrize("parameter", ["noise.std", "batch_size", "resume", "dist_timeout", "nproc"])
def test_ddp_workers_name_the_train_flag_like_the_cli(parameter):
    train = command_parser(build_parser(), build_parser().parse_args(["train", "--data", "d", "--out", "o"]))
    assert (
        flag_for(parameter)
        == flag_of(train, parameter)
        == "--" + parameter.replace(".", "-").replace("_", "-")
    )


def test_ddp_workers_invent_no_flag_for_a_parameter_train_lacks():
    assert flag_for("root") is None and flag_for(None) is None
