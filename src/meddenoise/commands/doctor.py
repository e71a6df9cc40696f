"""`meddenoise doctor`: what this installation can do (GPU, LPIPS weights, optional packages, free disk)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from meddenoise.config import (
    add_config_arguments,
    command_config,
    option,
    print_config_option,
    quiet_option,
)


@dataclass
class DoctorConfig:
    place_lpips: str = option(
        "", "check this file against torchvision's AlexNet checksum and copy it where LPIPS looks for it"
    )
    quiet: bool = quiet_option()  # here: list only what is missing
    print_config: bool = print_config_option()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="list what this installation can do: GPU, LPIPS weights, optional packages, free disk",
        description="Check devices, the LPIPS weights, the optional packages (DP-SGD, federated, BM3D, ...) "
        "and free disk, and say how to enable what is missing. Exit status 0 even when optional parts are "
        "missing; 2 (an error) when --place-lpips is refused.",
    )
    add_config_arguments(parser, DoctorConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddenoise import doctor

    config = command_config(DoctorConfig, args)
    if config.place_lpips:
        target = doctor.place_lpips_backbone(config.place_lpips)
        print(f"LPIPS backbone placed at {target}")
    for check in doctor.all_checks():
        if config.quiet and check.ok:
            continue
        print(f"{'ok ' if check.ok else '-- '} {check.name:<26} {check.detail}")
    return 0
