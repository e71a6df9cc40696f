"""`meddenoise evaluate RUN_DIR`: score a trained run per image (PSNR, SSIM, SSIM win 3, LPIPS) with CIs."""

from __future__ import annotations

import argparse
import dataclasses
from typing import ClassVar

from meddenoise.config import (
    add_config_arguments,
    command_config,
    option,
    print_config_option,
    quiet_option,
    run_option,
    save_config,
)
from meddenoise.errors import ConfigError

DESCRIPTION = """Evaluate the best checkpoint of a run on a split of its own prepared folder (or of
another one with
--data), with the fixed noise the run was trained for, so every method sees the same noisy inputs. Writes
RUN_DIR/evaluation/<split>[-<data>]/: per_image.csv (image_id, patient_id, noise level, model, strategy, psnr,
ssim, ssim_win3, lpips), summary.csv (mean and 95% interval: patient bootstrap when patients repeat, else t
over images), evaluation.json (LPIPS status with the reason when it is unavailable, timing, data,
hardware), samples.npz (a few images for the report) and, for U-Net++, per_head.csv with each pruned head's
quality and speed."""


@dataclasses.dataclass
class EvaluateConfig:
    LEGACY_KEYS: ClassVar[dict[str, str]] = {"run_dir": "run"}

    run: str = run_option()
    data: str = option("", "prepared folder to evaluate on (default: the run's own)")
    split: str = option("test", "split to evaluate", choices=("train", "val", "test", "all"))
    device: str = option("auto", "device: auto (CUDA if present), cpu, cuda or cuda:N")
    out: str = option("", "output folder (default: RUN_DIR/evaluation/<split>)")
    batch_size: int = option(16, "images per batch")
    samples: int = option(3, "images kept as samples.npz for the report's figures")
    heads: bool = option(True, "U-Net++: also evaluate each pruned head")
    lpips_weights: str = option("", "AlexNet LPIPS weights file (default: look in the torch hub cache)")
    limit: int = option(0, "evaluate only N images of the split, the same N for every run (0: all)")
    noise_std: float = option(
        0.0,
        "test at this noise std instead of the run's own (robustness; same mean, fixed seed; 0: the run's)",
        ge=0,
        le=1,
    )
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()


def format_summary(summary: dict, missing_reason: str = "") -> str:
    """One metric's console text: the mean and its cluster-aware interval, saying which kind it is."""
    if not summary["n"]:
        return f"n/a ({missing_reason})"
    mean = f"{summary['mean']:.4f}"
    method = summary.get("method", "t")
    if method == "none":
        return f"{mean}  95% CI n/a: {summary.get('note', '')}"
    kind = (
        f"bootstrap over {summary['groups']} patients/groups, images of one are not independent"
        if method == "group-bootstrap"
        else f"t over {summary['n']} images, each its own group: one image per patient, or patient ids "
        "unknown and images treated as independent (too narrow if patients repeat)"
    )
    return f"{mean}  95% CI [{summary['low']:.4f}, {summary['high']:.4f}] ({kind})"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a trained run per image on a split (PSNR, SSIM, LPIPS) with confidence intervals",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dir",
        nargs="?",
        default=argparse.SUPPRESS,
        metavar="RUN_DIR",
        help="the same as --run RUN_DIR",
    )
    add_config_arguments(parser, EvaluateConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    positional = vars(args).pop("run_dir", None)
    if positional is not None:
        given = getattr(args, "run", None)
        if given is not None and given != positional:
            raise ConfigError(f"two runs given: RUN_DIR {positional} and run {given}; give one", "run")
        args.run = positional
    config = command_config(EvaluateConfig, args)
    from meddenoise.evaluation import files
    from meddenoise.evaluation.runs import evaluate_run

    folder = evaluate_run(
        config.run,
        data_dir=config.data or None,
        split=config.split,
        device=config.device,
        out_dir=config.out or None,
        batch_size=config.batch_size,
        keep_samples=config.samples,
        heads=config.heads,
        lpips_weights=config.lpips_weights or None,
        limit=config.limit,
        quiet=config.quiet,
        noise_std=config.noise_std or None,
    )
    save_config(config, folder / "config.json")
    info = files.read_info(folder)
    trained = info.get("trained_noise_std")
    level = f"noise std {info['noise']['std']}" + (
        f" (trained at {trained:g})" if trained is not None else ""
    )
    print(f"{info['method']} ({info['strategy']}), {level}, {info['images']} images:")
    for metric, summary in info["summary"].items():
        print(f"  {metric:<10} {format_summary(summary, info['lpips'].get('reason', ''))}")
    for head in info.get("heads", []):
        print(
            f"  head {head['head']}: PSNR {head['psnr_mean']:.2f} dB, SSIM {head['ssim_mean']:.4f}, "
            f"{head['images_per_second']:.1f} images/s, {head['parameters']} parameters used"
        )
    print(f"wrote {folder}")
    return 0
