"""`meddenoise reproduce`: the paper's grid of runs and baselines, resumable, ending in report.md /
report.html."""

from __future__ import annotations

import argparse

from meddenoise.config import add_config_arguments, command_config
from meddenoise.reproduce import ReproduceConfig

DESCRIPTION = """Train and evaluate models {U-Net, U-Net++} x noise {0.1, 0.2, 0.3} x strategies
{1 device, DP, DDP+AMP}, the baselines (noisy input, Gaussian filter, non-local means, BM3D, DnCNN trained by
this pipeline), the clean-free targets that are installed and the privacy audit, on the same test images with
the same fixed noise; then write OUT/report.md and OUT/report.html (Tables III-VI, figures). What the hardware
cannot run is skipped with the reason in the report. Finished configurations hold a DONE marker; rerun with
--resume to continue.

Presets: smoke (seconds, tiny; for tests), quick (480 images of the embedded NIH sample at 64x64, narrow
networks, a few epochs: about 12 minutes on 2 CPU cores), paper (NIH ChestX-ray14 via --data-root, 256x256,
base 64, 50 epochs)."""


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
    from meddenoise.reproduce import dry_run, reproduce

    config = command_config(ReproduceConfig, args)
    if config.dry_run:
        print(dry_run(config))
        return 0
    report = reproduce(config)
    print(f"report: {report} and {report.with_suffix('.html')}")
    return report_failures(config.folder)


def report_failures(out) -> int:
    """1 (after listing them) when jobs of the reproduction failed, else 0: a grid with holes must not
    look like a success to a script or a CI job."""
    from meddenoise.reprodir import ReproDir

    failed = ReproDir(out).read_plan().get("failed") or []
    for item in failed:
        print(f"failed: {item['what']}: {item['reason']}")
    if failed:
        print(
            f"{len(failed)} job(s) failed (listed in the report); rerun with --resume after fixing the cause"
        )
        return 1
    return 0
