"""`meddenoise prepare`: decode a source once into the preprocessing cache (images.npy + manifest.csv)."""

from __future__ import annotations

import argparse
from pathlib import Path

from meddenoise.config import (
    add_config_arguments,
    command_config,
    save_config,
)
from meddenoise.data.prepare_config import PrepareConfig
from meddenoise.fileio import ensure_writable_dir
from meddenoise.locking import folder_lock

MAX_LISTED_SKIPS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="decode, resize and split a dataset into the preprocessing cache",
        description="Read images from a source (the rendered default, NIH ChestX-ray14 or any folder of "
        "PNG/JPEG/TIFF/DICOM), convert them to one channel, resize them to SIZE x SIZE (antialiased), store "
        "them as uint8 (uint16 for 16-bit sources) in OUT/images.npy with OUT/manifest.csv, and assign "
        "train/val/test splits (patient-level by default). An up-to-date cache is reused. Unreadable images "
        "are skipped and listed in OUT/skipped.csv unless --strict.",
    )
    add_config_arguments(parser, PrepareConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddenoise.data.cache import prepare
    from meddenoise.data.sources import build_source

    config = command_config(PrepareConfig, args)
    if config.source == "default":
        from meddenoise.engine.runtime import resolve_device

        resolve_device(config.device)  # an unusable --device fails here, not deep inside the renderer
    source = build_source(config)
    out = ensure_writable_dir(config.out, what="output folder (--out)")
    with folder_lock(out):  # held until config.json is written too
        result = prepare(source, config)
        # a folder whose grouping was refused is reused without it: try the grouping again, never skip it
        grouped = (Path(result.folder) / "similar_groups.json").is_file()
        if config.group_similar and not (result.reused and grouped):
            _group_similar(result, config)
        save_config(config, Path(result.folder) / "config.json")
    print(format_summary(result, config))
    return 0


def _group_similar(result, config: PrepareConfig) -> None:
    """Keep the images the matcher joins at --group-similar in one split each, and linked ones together
    where the shares allow (privacy.grouping)."""
    from meddenoise.data.manifest import read_prepare_info
    from meddenoise.errors import DataError
    from meddenoise.privacy.grouping import regroup_prepared
    from meddenoise.privacy.reid_embedding import matcher_name, resolve_matcher

    matcher = resolve_matcher(config.similar_matcher)
    try:
        regrouped = regroup_prepared(
            result.folder,
            config.group_similar,
            fractions=config.fractions,
            margin=config.similar_margin,
            matcher=matcher,
            max_shift=config.similar_max_shift,
        )
    except DataError as error:
        raise DataError(
            f"{error} It holds the prepared images with the ordinary split, not grouped; running prepare "
            "again tries the grouping again.",
            parameter=error.parameter,
        ) from error
    result.info = read_prepare_info(result.folder) or result.info
    shares = " / ".join(f"{value:.2f}" for value in regrouped["fractions_after"])
    linked = (
        f"links then changed the split of {regrouped['images_moved_by_links']} image(s) to keep weaker pairs "
        f"(scores down to {config.group_similar - config.similar_margin:g}) together or to make room for "
        f"them; {regrouped['images_moved_to_another_split']} image(s) in all left their ordinary split; "
        if config.similar_margin
        else "no other image moved (--similar-margin 0); "
    )
    before = " / ".join(f"{value:.2f}" for value in regrouped["fractions_before"])
    result.notes.append(
        f"--group-similar {config.group_similar:g} ({matcher_name(matcher)} matcher): "
        f"{regrouped['joined_components']} group(s) of similar images "
        f"({regrouped['images_in_joined_components']} images) kept in one split each (suspected patients "
        f"with several images; the largest group holds {regrouped['largest_component']}); "
        f"{regrouped['images_moved_with_joined_groups']} image(s) of {regrouped['components_moved']} "
        f"suspected patient(s) moved with their group; {linked}train/val/test shares {before} -> {shares}"
    )


def format_summary(result, config: PrepareConfig) -> str:
    from meddenoise.data.splits import SPLIT_NAMES

    info = result.info
    count, height, width = info["shape"]
    bits = 16 if info["dtype"] == "uint16" else 8
    if result.reused:
        lines = [f"prepared folder {result.folder} is up to date (same inputs and parameters): reused"]
    else:
        rate = count / result.seconds if result.seconds > 0 else 0.0
        lines = [
            f"prepared {result.folder} in {result.seconds:.1f} s "
            f"({rate:.1f} images/s, {result.workers} worker(s))"
        ]
    lines.append(f"  source: {config.source}" + (f" ({config.root})" if config.root else ""))
    lines.append(f"  images: {count} of {width}x{height} {info['dtype']} ({bits}-bit)")
    # what the split really keeps together (a split "by patient" without patient ids is a split by image)
    unit = (info.get("params") or {}).get("split_unit") or config.split_by
    lines.append(f"  split by: {unit}, seed {config.seed}")
    groups = info.get("groups", info["patients"])
    lines.append(f"  {'split':<6} {'images':>8} {'patients':>9} {'groups':>7}")
    for split in SPLIT_NAMES:
        lines.append(
            f"  {split:<6} {info['counts'][split]:>8} {info['patients'][split]:>9} {groups[split]:>7}"
        )
    empty = [split for split in SPLIT_NAMES if info["counts"][split] == 0]
    if empty:
        lines.append(
            f"  warning: empty split(s) {', '.join(empty)}: too few images or patients for the fractions"
        )
    lines.append(f"  skipped: {len(result.skipped)}")
    for path, reason in result.skipped[:MAX_LISTED_SKIPS]:
        lines.append(f"    {reason}" if path in reason else f"    {path}: {reason}")
    if len(result.skipped) > MAX_LISTED_SKIPS:
        lines.append(f"    ... {len(result.skipped) - MAX_LISTED_SKIPS} more")
    if result.skipped:
        lines.append(f"    (all listed in {Path(result.folder) / 'skipped.csv'})")
    for note in result.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
