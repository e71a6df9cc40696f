"""`meddenoise reproduce`: the paper's grid of runs and baselines, resumable, ending in report.md /
report.html."""

from __future__ import annotations

import argparse
import dataclasses

from meddenoise.config import (
    add_config_arguments,
    config_from_args,
    format_config,
    option,
    print_config_option,
    quiet_option,
    save_config,
)
from meddenoise.errors import ConfigError

PRESET_NAMES = ("smoke", "quick", "paper")

DESCRIPTION = """Train and evaluate models {U-Net, U-Net++} x noise {0.1, 0.2, 0.3} x strategies
{1 device, DP, DDP+AMP}, the baselines (noisy input, Gaussian filter, non-local means, BM3D, DnCNN trained by
this pipeline), the clean-free targets that are installed and the privacy audit, on the same test images with
the same fixed noise; then write OUT/report.md and OUT/report.html (Tables III-VI, figures). What the hardware
cannot run is skipped with the reason in the report. Finished configurations hold a DONE marker; rerun with
--resume to continue.

Presets: smoke (seconds, tiny; for tests), quick (rendered default data at 64x64, narrow networks, a few
epochs: about 10 minutes on 2 CPU cores), paper (NIH ChestX-ray14 via --data-root, 256x256, base 64, 50
epochs)."""


@dataclasses.dataclass
class ReproduceConfig:
    preset: str = option("quick", "grid size: smoke, quick or paper", choices=PRESET_NAMES)
    out: str = option("", "output folder (runs, baselines, report)", required=True)
    seeds: int = option(1, "train each configuration this many times (seeds 0..K-1); tables show the spread")
    resume: bool = option(
        False, "continue a reproduction in --out: keep finished configurations, resume runs"
    )
    data: str = option("", "use this prepared folder instead of preparing the preset's data")
    data_root: str = option("", "folder of the source images (paper preset: the NIH ChestX-ray14 root)")
    device: str = option("auto", "device for training and evaluation: auto, cpu, cuda, cuda:N")
    epochs: int = option(0, "override the preset's epochs (0: keep)")
    lpips_weights: str = option("", "AlexNet LPIPS weights file (default: the torch hub cache, else n/a)")
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1; got {self.seeds}")
        if self.epochs < 0:
            raise ConfigError(f"--epochs must be >= 0; got {self.epochs}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="run the paper's grid (models x noise x strategies + baselines) and write the report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, ReproduceConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meddenoise.fileio import ensure_writable_dir
    from meddenoise.reproduce import PRESETS, ReproduceSettings, reproduce

    config = config_from_args(ReproduceConfig, args)
    if config.print_config:
        print(format_config(config), flush=True)
    out = ensure_writable_dir(config.out, what="output folder (--out)")
    settings = ReproduceSettings(
        preset=PRESETS[config.preset],
        out=Path(out),
        seeds=config.seeds,
        resume=config.resume,
        data=config.data,
        data_root=config.data_root,
        device=config.device,
        epochs=config.epochs,
        lpips_weights=config.lpips_weights,
        quiet=config.quiet,
    )
    report = reproduce(settings)
    save_config(config, out / "config.json")
    print(f"report: {report} and {report.with_suffix('.html')}")
    return report_failures(out)


def report_failures(out) -> int:
    """1 (after listing them) when jobs of the reproduction failed, else 0: a grid with holes must not
    look like a success to a script or a CI job."""
    from meddenoise.fileio import read_json
    from meddenoise.reproduce import PLAN_FILE

    failed = (read_json(out / PLAN_FILE, what="reproduction plan") or {}).get("failed") or []
    for item in failed:
        print(f"failed: {item['what']}: {item['reason']}")
    if failed:
        print(
            f"{len(failed)} job(s) failed (listed in the report); rerun with --resume after fixing the cause"
        )
        return 1
    return 0
