"""`meddenoise models`: the table of registered models with parameters and forward FLOPs per image."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from meddenoise.config import (
    add_config_arguments,
    command_config,
    config_to_dict,
    option,
    print_config_option,
    quiet_option,
)
from meddenoise.errors import ConfigError


@dataclass
class ModelsConfig:
    size: int = option(256, "side of the square image the FLOPs are counted for, in pixels")
    base_channels: int = option(64, "channels of the first level (U-Nets double them per level; DnCNN width)")
    out: str = option("", "also write the table as JSON to this file")
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        if self.size < 8:
            raise ConfigError(f"option 'size' must be at least 8 pixels; got {self.size}")
        if self.base_channels < 1:
            raise ConfigError(f"option 'base_channels' must be at least 1; got {self.base_channels}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the registered models with parameter counts and FLOPs per image",
        description="Print every registered model (and variants such as pruned U-Net++ heads) with its "
        "parameter count and forward FLOPs for one image, counted without allocating the model.",
    )
    add_config_arguments(parser, ModelsConfig)
    parser.set_defaults(func=run)


def summary_rows(config: ModelsConfig) -> list[dict[str, Any]]:
    from meddenoise.models import get_model_entry, list_models, model_summary

    rows = []
    for name in list_models():
        variants = [("", {}), *get_model_entry(name).variants]
        for label, options in variants:
            summary = model_summary(name, size=config.size, base_channels=config.base_channels, **options)
            rows.append({"variant": label, **summary})
    return rows


def format_table(rows: list[dict[str, Any]], config: ModelsConfig) -> str:
    from meddenoise.models import get_model_entry
    from meddenoise.models.summary import FLOP_CONVENTION

    lines = [
        f"Models at base_channels={config.base_channels}; "
        f"FLOPs per {config.size}x{config.size} image, eval mode.",
        "",
        f"{'model':<8} {'variant':<8} {'parameters':>12} {'used':>12} {'GFLOPs':>9}",
    ]
    for row in rows:
        lines.append(
            f"{row['model']:<8} {row['variant']:<8} {row['parameters']:>12,} "
            f"{row['active_parameters']:>12,} {row['gflops']:>9.2f}"
        )
    lines += ["", "used = parameters the forward pass touches (a pruned U-Net++ head skips the rest)."]
    lines += [FLOP_CONVENTION + ".", ""]
    for name in dict.fromkeys(row["model"] for row in rows):
        entry = get_model_entry(name)
        defaults = " ".join(
            f"{key}={value}" for key, value in entry.defaults.items() if key != "base_channels"
        )
        lines += [f"{name}: {entry.description}", f"    options (defaults): {defaults}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from meddenoise.fileio import atomic_write_json

    config = command_config(ModelsConfig, args)
    rows = summary_rows(config)
    print(format_table(rows, config))
    if config.out:
        atomic_write_json(config.out, {"config": config_to_dict(config), "models": rows})
        print(f"\nwrote {config.out}")
    return 0
