"""`meddenoise privacy-audit`: what noise obfuscation hides and what it does not, per noise level."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from meddenoise.config import (
    add_config_arguments,
    command_config,
    config_to_dict,
    option,
    print_config_option,
    quiet_option,
    save_config,
    seed_option,
)
from meddenoise.errors import ConfigError
from meddenoise.noise.spec import NoiseSpec, check_levels, levels_option, with_levels


@dataclasses.dataclass
class PrivacyAuditConfig:
    data: str = option("", "prepared folder to audit (from `meddenoise prepare`)", required=True)
    out: str = option("", "output folder for privacy_audit.json and privacy_audit.md", required=True)
    run: str = option("", "run folder of the receiver's denoiser, trained on the released pairs (optional)")
    outsider_run: str = option(
        "", "run folder of a denoiser trained only on OTHER data (another source or split; optional)"
    )
    noise: NoiseSpec = option(NoiseSpec(), "the released obfuscation (fixed noise)")
    levels: list[float] = levels_option()
    split: str = option(
        "test", "split whose images are the obfuscated queries", choices=("train", "val", "test", "all")
    )
    gallery_size: int = option(
        0, "clean images in the matcher's gallery, always including the queries' originals; 0 = the whole set"
    )
    max_queries: int = option(1000, "audit at most this many query images (seeded sample); 0 = all")
    seed: int = seed_option()  # the query and gallery sampling
    device: str = option("auto", "device for matching and denoising: auto, cpu, cuda, cuda:N")
    batch_size: int = option(32, "images per batch when obfuscating and denoising")
    matcher_size: int = option(32, "side of the matcher's downsampled image, in pixels")
    matcher_blur: float = option(
        1.0, "Gaussian blur sigma of the matcher, in pixels of the downsampled image"
    )
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()
    membership: bool = option(
        False,
        "also attack the --run model (best and last checkpoints): membership inference by offline LiRA "
        "(reference models) beside the loss threshold",
    )
    reference_models: int = option(
        4,
        "membership: LiRA reference models trained like the run on the reference split (0: loss attack only)",
    )
    reference_epochs: int = option(0, "membership: epochs of each reference model (0: as the run)")
    reference_split: str = option(
        "val",
        "membership: split the reference models train on (patients apart from both sets)",
        choices=("train", "val", "test"),
    )
    nonmember_split: str = option(
        "test", "membership: split of the non-members (held-out patients)", choices=("train", "val", "test")
    )
    membership_images: int = option(500, "membership: at most this many members and non-members (0: all)")

    def check(self) -> None:
        check_levels(self.levels)
        check_levels([self.noise.std], "noise.std")
        if not -1.0 < self.noise.mean < 1.0:
            raise ConfigError(f"noise.mean must be in (-1, 1); got {self.noise.mean}", "noise.mean")
        for name in ("gallery_size", "max_queries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0", name)
        for name, value, low in (("batch_size", self.batch_size, 1), ("matcher_size", self.matcher_size, 2)):
            if value < low:
                raise ConfigError(f"{name} must be >= {low}; got {value}", name)
        if self.matcher_blur < 0:
            raise ConfigError(f"matcher_blur must be >= 0; got {self.matcher_blur}", "matcher_blur")
        if self.membership and not self.run:
            raise ConfigError("membership attacks a trained model: give its run folder in run", "run")
        for name in ("reference_models", "reference_epochs", "membership_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0", name)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "privacy-audit",
        help="measure what noise obfuscation hides: distortion, linkage, re-identification, reversal",
        description=(
            "For each noise level: distortion of the released image, linkage of obfuscated images to their"
            " originals by a simple matcher, re-identification of the patient across images, and how much a"
            " denoiser restores. Prints a table; writes OUT/privacy_audit.json and OUT/privacy_audit.md."
        ),
    )
    add_config_arguments(parser, PrivacyAuditConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = command_config(PrivacyAuditConfig, args, with_levels)
    from meddenoise.fileio import ensure_writable_dir
    from meddenoise.privacy.audit import run_audit
    from meddenoise.privacy.matcher import Matcher
    from meddenoise.privacy.verdict import format_table, markdown_section
    from meddenoise.reprodir import write_privacy_audit

    for option_name in ("run", "outsider_run"):
        folder = getattr(config, option_name)
        if folder and not Path(folder).exists():
            raise ConfigError(f"--{option_name.replace('_', '-')} {folder} does not exist; give a run folder")
    out_dir = ensure_writable_dir(config.out, what="output folder (--out)")
    result = run_audit(
        config.data,
        noise=config.noise,
        levels=list(config.levels),
        split=config.split,
        gallery_size=config.gallery_size,
        max_queries=config.max_queries,
        seed=config.seed,
        run_dir=config.run or None,
        outsider_run_dir=config.outsider_run or None,
        device=config.device,
        batch_size=config.batch_size,
        matcher=Matcher(feature_size=config.matcher_size, blur_sigma=config.matcher_blur),
        quiet=config.quiet,
    )
    text = markdown_section(result)
    if config.membership:
        from meddenoise.privacy.membership import markdown_lines, run_membership_audit

        result["membership"] = run_membership_audit(
            config.run,
            data_dir=config.data,
            out=out_dir / "membership",
            reference_models=config.reference_models,
            reference_epochs=config.reference_epochs,
            reference_split=config.reference_split,
            nonmember_split=config.nonmember_split,
            max_images=config.membership_images,
            seed=config.seed,
            device=config.device,
            batch_size=config.batch_size,
        )
        text += (
            "\n## Membership inference on the trained model\n\n"
            + "\n".join(markdown_lines(result["membership"]))
            + "\n"
        )
    result["config"] = config_to_dict(config)
    save_config(config, out_dir / "config.json")
    json_path, markdown_path = write_privacy_audit(out_dir, result, text)
    print(format_table(result))
    if config.membership:
        print("\n".join(markdown_lines(result["membership"])))
    for level in result["levels"]:
        reid = level["reidentification"]
        if "skipped" in reid:
            print(f"re-identification skipped: {reid['skipped']}")
            break
    print(f"wrote {json_path} and {markdown_path}")
    return 0
