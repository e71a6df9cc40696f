"""A torchrun worker of `engine.launch.train`: `python -m meddenoise.worker RUN/launch_config.json`.

Reads the config its launcher wrote and trains it as one DDP rank; errors are printed the way the
`meddenoise train` command prints them, with the same exit statuses.
"""

from __future__ import annotations

import sys

from meddenoise.cli import leave
from meddenoise.errors import MeddenoiseError


def flag_for(parameter: str | None) -> str | None:
    """The `meddenoise train` flag of a config parameter (`noise.std` -> `--noise-std`), looked up in the
    command's own parser like the CLI does: a spelling convention would miss renamed flags and invent flags
    for parameters that have none."""
    if not parameter:
        return None
    import argparse

    from meddenoise.cli import build_parser, command_parser, flag_of

    return flag_of(command_parser(build_parser(), argparse.Namespace(command="train")), parameter)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m meddenoise.worker RUN/launch_config.json", file=sys.stderr)
        return 2
    try:
        from meddenoise.config import load_config
        from meddenoise.engine.config import TrainConfig
        from meddenoise.engine.train import fit

        fit(load_config(TrainConfig, arguments[0]))
    except MeddenoiseError as exc:
        message, flag = str(exc), flag_for(getattr(exc, "parameter", None))
        if flag and flag not in message:
            message += f" ({flag})"
        exit_code = getattr(exc, "exit_code", 2)
        print(f"meddenoise train: {'error: ' if exit_code == 2 else ''}{message}", file=sys.stderr)
        return exit_code
    except KeyboardInterrupt:
        print("meddenoise train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    leave(main())
