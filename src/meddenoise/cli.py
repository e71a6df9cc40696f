"""The `meddenoise` command: parses the command line and hands over to one function per command.

Each command lives in `meddenoise.commands.<module>` and exposes `register(subparsers)`, which adds its parser
and sets `func` (called with the parsed arguments). Command modules import torch and other heavy libraries
inside their functions, so `meddenoise --help` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
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
    "export_model",
    "reproduce",
    "report",
    "doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meddenoise",
        description="Train, evaluate and audit deep denoisers for medical images (chest X-rays first).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"meddenoise {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"meddenoise.commands.{module_name}").register(subparsers)
    for each in all_parsers(parser):
        # No abbreviations: `--dp-eps` silently meaning `--dp-epsilon` today becomes ambiguous (or another
        # option) when a flag is added tomorrow. Set here once, so no command module can forget it.
        each.allow_abbrev = False
    return parser


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every subparser below it (commands, and `data info` / `data leaks`)."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += all_parsers(child)
    return found


def unknown_flags_message(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """ "unrecognized arguments: --epoch 3 (did you mean --epochs?)": the closest flag of the command."""
    flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    hints: list[tuple[str, str]] = []
    for item in unknown:
        name = item.split("=", 1)[0]
        close = difflib.get_close_matches(name, flags, n=1) if name.startswith("--") else []
        hints += [(close[0], name)] if close else []
    message = f"unrecognized arguments: {' '.join(unknown)}"
    if len(hints) == 1:
        return message + f" (did you mean {hints[0][0]}?)"
    if hints:
        return message + f" (did you mean {', '.join(f'{flag} for {name}' for flag, name in hints)}?)"
    return message


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
        chosen = command_parser(parser, args)
        chosen.error(unknown_flags_message(chosen, unknown))
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
        exit_code = getattr(exc, "exit_code", 2)
        kind = "error: " if exit_code == 2 else ""
        print(f"meddenoise {command}: {kind}{message}", file=sys.stderr)
        return exit_code
    except KeyboardInterrupt:
        print(f"meddenoise {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`meddenoise models | head`): point stdout at /dev/null so the interpreter's
        # final flush does not raise again, and exit like other tools killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(result or 0)


def leave(code: int) -> None:
    """Exit with `code`. A torchrun worker leaves without the interpreter's final C++ destructors: everything
    is written and the process group is gone, but those can still abort on gloo/TCPStore threads
    ("terminate called without an active exception"), and torchrun would then report a finished run as
    failed."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
