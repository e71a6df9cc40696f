"""The `meddenoise` command: parses the command line and hands over to one function per command.

Each command lives in `meddenoise.commands.<module>` and exposes `register(subparsers)`, which adds its parser
and sets `func` (called with the parsed arguments). Command modules import torch and other heavy libraries
inside their functions, so `meddenoise --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from meddenoise import __version__
from meddenoise.errors import MeddenoiseError

# Order here is the order in `meddenoise --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "prepare",
    "data",
    "obfuscate",
    "models",
    "train",
    "federated",
    "privacy_audit",
    "evaluate",
    "baselines",
    "denoise",
    "reproduce",
    "report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meddenoise",
        description="Train, evaluate and audit deep denoisers for medical images (chest X-rays first).",
    )
    parser.add_argument("--version", action="version", version=f"meddenoise {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"meddenoise.commands.{module_name}").register(subparsers)
    return parser


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that `args` selected, e.g. the parser of `data info`."""
    descended = True
    while descended:
        descended = False
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                parser, descended = action.choices[chosen], True
                break
    return parser


def flag_of(parser: argparse.ArgumentParser, parameter: str | None) -> str | None:
    """The command-line flag of a config parameter (`noise.std` -> `--noise-std`), looked up in the parsers,
    so library errors can speak of parameters and the user still reads the flag to change."""
    if not parameter:
        return None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):
                flag = flag_of(subparser, parameter)
                if flag:
                    return flag
        elif action.dest == parameter and action.option_strings:
            return action.option_strings[0]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse would report these with the top-level usage; the command's own usage is the helpful one.
        command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except MeddenoiseError as exc:
        message = str(exc)
        flag = flag_of(command_parser(parser, args), getattr(exc, "parameter", None))
        if flag and flag not in message:
            message += f" ({flag})"
        # `data info` / `data leaks`: name the subcommand the user typed
        command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
        print(f"meddenoise {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"meddenoise {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`meddenoise models | head`): point stdout at /dev/null so the interpreter's
        # final flush does not raise again, and exit like other tools killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
