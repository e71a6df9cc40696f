"""`meddenoise obfuscate`: export an obfuscated copy of a prepared dataset for sharing (paper: "Site One").

The export itself is `meddenoise.release.obfuscate`; this command parses, calls it and prints.
"""

from __future__ import annotations

import argparse

from meddenoise.config import add_config_arguments, config_from_args, given_options, print_config_and_exit
from meddenoise.release import ObfuscateConfig

__all__ = ["ObfuscateConfig", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "obfuscate",
        help="export a noise-obfuscated copy of a prepared dataset for sharing",
        description="Add noise (fixed: a pure function of the secret seed, the image and the noise level) to "
        "the images of a prepared folder and export them to OUT as 16-bit PNG or float16 .npy files named "
        "by random ids, with index.csv (id, split, files), export.json and README.txt. Nothing identifying "
        "goes into OUT: the id -> image/patient/source map, the seed and the config go to --private-map "
        "(which must be outside OUT) and FILE.config.json next to it.",
    )
    add_config_arguments(parser, ObfuscateConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddenoise.release import obfuscate

    config = config_from_args(ObfuscateConfig, args)
    if config.print_config:
        print_config_and_exit(config, hidden=["noise.seed"])  # the seed is the export's key
    result = obfuscate(config, keep_seed="noise.seed" in given_options(ObfuscateConfig, args))
    print(
        f"exported {result.images} images x {result.copies} cop{'y' if result.copies == 1 else 'ies'} "
        f"({result.noise_level}, {result.image_format}) to {result.out}\n"
        f"private map (keep it, never share it): {result.private_map}\n"
        f"secret seed and config: {result.private_config}"
    )
    if result.chosen_seed:
        print("note: you chose the seed; keep it secret, or the noise can be regenerated and removed")
    return 0
