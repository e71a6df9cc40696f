"""`meddenoise train`: train a denoiser on a prepared folder (single device, DataParallel or DDP)."""

from __future__ import annotations

import argparse

from meddenoise.config import add_config_arguments, command_config
from meddenoise.engine.config import TrainConfig

DESCRIPTION = """Train a denoiser on obfuscated (noisy) copies of a prepared folder and write a run folder:
config.json, split.csv, metrics.jsonl, summary.csv, checkpoints/{last,best}.safetensors, train.log and
test_metrics.csv. Defaults follow the paper (U-Net, Adam lr 1e-3, L1, batch 16 per device, 50 epochs).

Multi-GPU: `--strategy dp` (DataParallel) or `--strategy ddp --nproc K` (launches torchrun for you); or run
`torchrun --nproc_per_node=K -m meddenoise train --strategy ddp ...` yourself (also multi-node, see
docs/training.md)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a denoiser (single device, DataParallel or DDP) into a run folder",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, TrainConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddenoise.engine.launch import train

    config = command_config(TrainConfig, args)  # --print-config prints it and exits here
    train(config, say=lambda line: print(line, flush=True))
    return 0
