"""The `meddenoise` command itself: dispatch, help for every option, fast start, errors as messages."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meddenoise import cli
from meddenoise.errors import DataError
from time_limits import ANSWER


def all_parsers(parser: argparse.ArgumentParser, name: str = "meddenoise"):
    """(command name, parser) for the top-level parser and every sub-command, recursively."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                yield from all_parsers(sub_parser, f"{name} {sub_name}")


def test_every_command_is_registered_and_every_option_has_help():
    parsers = dict(all_parsers(cli.build_parser()))
    top_level = {name.split()[1] for name in parsers if name != "meddenoise"}
    assert {module.replace("_", "-") for module in cli.COMMAND_MODULES} <= top_level
    for name, parser in parsers.items():
        assert parser.description or name == "meddenoise data", f"{name} has no description"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, f"{name}: {action.option_strings}"


def run_python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=ANSWER
    )


def test_help_starts_without_heavy_imports(tmp_path):
    # `meddenoise --help` and every sub-command's parser must not pull in torch, scipy or matplotlib.
    probe = (
        "import sys; from meddenoise.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'scipy', 'matplotlib', 'skimage') if m in sys.modules))"
    )
    done = run_python("-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_python_dash_m_is_the_console_command(tmp_path):
    console = Path(sys.executable).with_name("meddenoise")
    if not console.is_file():
        pytest.skip("the console script is not installed next to this interpreter")
    module = run_python("-m", "meddenoise", "prepare", "--help", cwd=tmp_path)
    script = subprocess.run(
        [str(console), "prepare", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=ANSWER
    )
    assert module.returncode == script.returncode == 0
    assert module.stdout == script.stdout and "--split-by {patient,image}" in module.stdout
    bad = run_python("-m", "meddenoise", "prepare", "--out", "x", "--source", "nih", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("meddenoise prepare: error: root is required")
    assert bad.stderr.rstrip().endswith("(--root)")


@pytest.mark.parametrize(
    "raised, code, message",
    [
        (DataError("prepared folder /x is incomplete; run prepare again"), 2,
         "meddenoise models: error: prepared folder /x is incomplete; run prepare again"),
        (KeyboardInterrupt(), 130, "meddenoise models: interrupted"),
    ],
)  # fmt: skip
def test_user_errors_and_interrupts_become_messages_and_exit_codes(
    monkeypatch, capsys, raised, code, message
):
    def command(args):
        raise raised

    parser = cli.build_parser()
    dict(all_parsers(parser))["meddenoise models"].set_defaults(func=command)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["models"]) == code
    assert capsys.readouterr().err.strip() == message


def test_no_command_prints_the_overview(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def _command_parsers():
    """Every leaf command's parser, by its name as typed (`data info`), walked from the real CLI."""
    found = {}

    def walk(parser, prefix):
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            found[prefix.strip()] = parser
        for action in subparsers:
            for name, child in action.choices.items():
                walk(child, f"{prefix} {name}")

    walk(cli.build_parser(), "")
    return found


def _option(parser, flag):
    for action in parser._actions:
        if flag in action.option_strings:
            return (tuple(action.option_strings), action.help, repr(action.default), action.nargs)
    return None


def test_every_command_shares_one_vocabulary():
    parsers = _command_parsers()
    assert len(parsers) >= 10, sorted(parsers)
    for flag in ("--quiet", "--print-config"):
        spellings = {name: _option(parser, flag) for name, parser in parsers.items()}
        assert None not in spellings.values(), {k for k, v in spellings.items() if v is None}
        assert len(set(spellings.values())) == 1, spellings
    seeds = {name: _option(p, "--seed") for name, p in parsers.items() if _option(p, "--seed")}
    assert {"prepare", "train", "privacy-audit"} <= set(seeds) and len(set(seeds.values())) == 1, seeds
    for name, parser in parsers.items():
        flags = {flag for action in parser._actions for flag in action.option_strings}
        # one name for a trained run, one set of noise flags
        assert not flags & {"--checkpoint", "--run-dir", "--noise", "--clamp", "--no-clamp"}, (name, flags)
    for name in ("evaluate", "denoise", "privacy-audit"):
        assert _option(parsers[name], "--run") is not None, name
    groups = {
        name: [(a.option_strings, a.help, a.default, a.choices) for a in group._group_actions]
        for name, parser in parsers.items()
        for group in parser._action_groups
        if group.title == "noise options"
    }
    assert set(groups) >= {"train", "obfuscate", "privacy-audit", "data info"}
    assert len({repr(group) for group in groups.values()}) == 1


def test_unknown_options_are_reported_with_the_commands_own_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["obfuscate", "--data", "d", "--no-such-flag"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("usage: meddenoise obfuscate") and "unrecognized arguments: --no-such-flag" in error
    )
    with pytest.raises(SystemExit):
        cli.main(["data", "info", "d", "--no-such-flag"])
    assert capsys.readouterr().err.startswith("usage: meddenoise data info")


def test_train_on_a_folder_of_images_suggests_preparing_it_into_a_new_folder(tmp_path, capsys):
    raw = tmp_path / "scans"
    raw.mkdir()
    (raw / "a.png").write_bytes(b"not really a png")
    assert cli.main(["train", "--data", str(raw), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert f"meddenoise prepare --source folder --root {raw} --out NEW_FOLDER" in error
    assert f"--out {raw}`" not in error


def test_evaluate_refuses_two_different_runs_instead_of_silently_taking_one(tmp_path, capsys):
    from meddenoise.cli import main

    assert main(["evaluate", str(tmp_path / "a"), "--run", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert "two runs given" in error and "--run" in error


def test_errors_of_data_subcommands_name_the_subcommand(tmp_path, capsys):
    from meddenoise.cli import main

    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("meddenoise data info: error:")
