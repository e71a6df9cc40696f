"""`meddenoise baselines`: classical denoisers on any prepared folder, written as evaluation folders."""

from __future__ import annotations

import argparse
import dataclasses

from meddenoise.config import (
    add_config_arguments,
    command_config,
    option,
    print_config_option,
    quiet_option,
    save_config,
)
from meddenoise.errors import ConfigError
from meddenoise.noise.spec import NoiseSpec, check_levels, levels_option, with_levels
from meddenoise.reproduce import CLASSICAL_BASELINES

METHODS = CLASSICAL_BASELINES

DESCRIPTION = """Evaluate classical baselines (the noisy input itself, Gaussian filter, non-local means,
BM3D) on a split of a prepared folder with fixed noise, exactly as `reproduce` does: parameters tuned on at
most --tune-limit validation images, never on the evaluated ones. Each method and noise level becomes an
evaluation folder OUT/<method>_std<level>/ (per_image.csv, summary.csv, evaluation.json, samples.npz) that
`meddenoise report` and the report's Table VI read beside the networks evaluated on the same images, so
Table VI does not need the whole grid: put OUT inside the folder you report on (e.g.
runs/quick/extra-baselines)."""


@dataclasses.dataclass
class BaselinesConfig:
    data: str = option("", "prepared folder (from `meddenoise prepare`)", required=True)
    out: str = option("", "output folder; one evaluation folder per method and noise level", required=True)
    methods: list[str] = option(["gaussian", "nlm", "bm3d"], f"methods: any of {', '.join(METHODS)}")
    noise: NoiseSpec = option(NoiseSpec(), "the obfuscation of the evaluated images (fixed noise)")
    levels: list[float] = levels_option()
    split: str = option("test", "split to evaluate", choices=("train", "val", "test", "all"))
    tune_split: str = option("val", "split the parameters are tuned on", choices=("train", "val", "test"))
    tune_limit: int = option(16, "tune on at most this many images")
    limit: int = option(
        0, "evaluate only the N images with the smallest keys (the same N for every method; 0: all)"
    )
    samples: int = option(3, "images kept as samples.npz for the report's figures")
    device: str = option("cpu", "device the noise is made on (the filters run on the CPU)")
    lpips_weights: str = option("", "AlexNet LPIPS weights file (default: the torch hub cache, else n/a)")
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if not self.methods or unknown:
            raise ConfigError(
                f"methods: choose from {', '.join(METHODS)}; got {', '.join(unknown) or 'none'}", "methods"
            )
        check_levels(self.levels)
        for name in ("tune_limit", "limit", "samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0", name)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baselines",
        help="classical baselines (noisy, Gaussian, NLM, BM3D) on a prepared folder, as evaluation folders",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, BaselinesConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = command_config(BaselinesConfig, args, with_levels)
    from meddenoise.commands.evaluate import format_summary
    from meddenoise.evaluation import files
    from meddenoise.evaluation.runs import evaluate_baseline
    from meddenoise.fileio import ensure_writable_dir

    out = ensure_writable_dir(config.out, what="output folder (--out)")
    save_config(config, out / "config.json")
    for level in config.levels:
        noise = dataclasses.replace(config.noise, std=float(level))
        for method in config.methods:
            folder = out / f"{method}_std{level:g}"
            evaluate_baseline(
                method,
                config.data,
                folder,
                noise=noise,
                split=config.split,
                tune_split=config.tune_split,
                device=config.device,
                keep_samples=config.samples,
                lpips_weights=config.lpips_weights or None,
                limit=config.limit,
                tune_limit=config.tune_limit,
                quiet=config.quiet,
            )
            files.mark_done(folder)
            info = files.read_info(folder)
            psnr = format_summary(info["summary"]["psnr"])
            print(
                f"{method} at std {level:g}, {info['images']} images: PSNR {psnr}; "
                f"parameters {info.get('params')}"
            )
    print(
        f"wrote {out}; build a report that includes them with `meddenoise report` on a folder holding {out}"
    )
    return 0
