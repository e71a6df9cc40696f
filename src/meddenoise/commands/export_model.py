"""`meddenoise export-model RUN OUT`: a run as a shareable model folder with a model card."""

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
class ExportConfig:
    run: str = option("", "run folder written by train (its best checkpoint is exported)", required=True)
    out: str = option(
        "", "new folder for model.safetensors, config.json and the README model card", required=True
    )
    onnx: bool = option(
        False, "also write model.onnx (fixed input size; needs: pip install onnx onnxruntime)"
    )
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-model",
        help="write a run's model as a shareable folder (weights, config.json, model card)",
        description="Write the run's best weights (model.safetensors, with their metadata), config.json and "
        "a README.md model card (data, noise, test metrics with 95% intervals, privacy mode and epsilon, "
        "intended use and limits) into a new folder. load_trained_model(OUT) and `denoise --run OUT` read "
        "it.",
    )
    add_config_arguments(parser, ExportConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddenoise.export import export_model

    config = command_config(ExportConfig, args)
    out = export_model(config.run, config.out, onnx=config.onnx)
    if not config.quiet:
        print(f"exported {config.run} -> {out} (model.safetensors, config.json, README.md)")
    return 0
