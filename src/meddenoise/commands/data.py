"""`meddenoise data info DIR`: what a prepared folder holds, and a contact sheet (clean vs obfuscated)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import ClassVar

from meddenoise.config import (
    add_config_arguments,
    command_config,
    option,
    print_config_option,
    quiet_option,
    seed_option,
)
from meddenoise.errors import ConfigError, DataError
from meddenoise.noise.spec import NoiseSpec, levels_option, with_levels


@dataclasses.dataclass
class DataInfoConfig:
    LEGACY_KEYS: ClassVar[dict[str, str]] = {"noise_levels": "levels", "seed": "noise_seed"}

    folder: str = option("", "the prepared folder", required=True, cli=False)
    out: str = option("", "where to write the contact sheet PNG (default: FOLDER/contact_sheet.png)")
    samples: int = option(4, "number of sample images (rows of the contact sheet)")
    split: str = option("test", "split the samples are drawn from", choices=("train", "val", "test", "all"))
    noise: NoiseSpec = option(
        NoiseSpec(), "the obfuscation shown (fixed noise, as a releasing site publishes)"
    )
    levels: list[float] = levels_option()
    sheet: bool = option(True, "write the contact sheet")
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        if self.samples < 1:
            raise ConfigError("samples must be at least 1", "samples")
        if any(level < 0 for level in self.levels):
            raise ConfigError("levels must be non-negative noise standard deviations", "levels")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect prepared data", description="Inspect prepared data.")
    data_commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    info = data_commands.add_parser(
        "info",
        help="counts, patients per split, image size and a contact sheet of a prepared folder",
        description="Print the counts, patients per split, image size and dtype of a prepared folder, and "
        "write a contact sheet PNG: sample images clean and obfuscated at each noise level (fixed noise).",
    )
    info.add_argument("folder", help="the prepared folder (written by `meddenoise prepare`)")
    add_config_arguments(info, DataInfoConfig)
    info.set_defaults(func=run_info)
    leaks = data_commands.add_parser(
        "leaks",
        help="likely same-patient image pairs across splits (for folders without patient ids)",
        description="Score every clean image against the images of the other splits with the privacy "
        "audit's matcher and list likely same-patient pairs: their count (with a threshold calibrated on a "
        "prepared folder with known patient ids, --calibrate, or given, --threshold) and a contact sheet of "
        "the top pairs. Without a threshold the pairs are ranked for inspection and no count is claimed. "
        "Writes FOLDER/leaks.json and FOLDER/leaks_sheet.png (or under --out).",
    )
    leaks.add_argument("folder", help="the prepared folder (written by `meddenoise prepare`)")
    add_config_arguments(leaks, DataLeaksConfig)
    leaks.set_defaults(func=run_leaks)
    fit = data_commands.add_parser(
        "fit-matcher",
        help="fit (or fine-tune) the learned patient matcher on a prepared folder with patient ids",
        description="Fit the learned patient-similarity embedding (privacy/reid_embedding.py) on the images "
        "of a prepared folder whose patient ids are known, or fine-tune the shipped weights "
        "(--start learned), and write it as one .safetensors file (weights, how and on whom it was "
        "fitted, and its re-id@1 on held-out patients when --holdout > 0). Use the file with "
        "`data leaks --matcher FILE`, `prepare --similar-matcher FILE` and "
        "`privacy-audit --learned-matcher FILE`.",
    )
    fit.add_argument("folder", help="prepared folder with known patient ids (repeat studies)")
    add_config_arguments(fit, FitMatcherConfig)
    fit.set_defaults(func=run_fit_matcher)


@dataclasses.dataclass
class DataLeaksConfig:
    folder: str = option("", "the prepared folder", required=True, cli=False)
    calibrate: str = option(
        "", "prepared folder with known patient ids (repeat studies) to calibrate the threshold on"
    )
    threshold: float = option(0.0, "matcher score at or above which a pair is a suspect (0: calibrate)")
    precision: float = option(0.9, "calibration: share of pairs above the threshold that must be one patient")
    top: int = option(8, "pairs shown in the contact sheet")
    out: str = option("", "output folder for leaks.json and leaks_sheet.png (default: FOLDER)")
    device: str = option("cpu", "device for the matcher")
    matcher: str = option(
        "auto",
        "auto (the learned patient matcher when its weights are installed, else pixel), learned, pixel, or "
        "a .safetensors file from `data fit-matcher`",
    )
    seed: int = seed_option()  # calibration: the random image-level splits of the --calibrate folder
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        if not 0.0 < self.precision <= 1.0:
            raise ConfigError(f"--precision must be in (0, 1]; got {self.precision}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--threshold is a correlation in [-1, 1]; got {self.threshold}")
        if self.top < 0:
            raise ConfigError("--top must be >= 0")


def run_leaks(args: argparse.Namespace) -> int:
    from meddenoise.data.cache import load_prepared
    from meddenoise.fileio import atomic_write_json, ensure_writable_dir
    from meddenoise.privacy.leaks import find_leaks
    from meddenoise.privacy.reid_embedding import resolve_matcher

    config = command_config(DataLeaksConfig, args)
    data = load_prepared(config.folder)
    calibration = load_prepared(config.calibrate) if config.calibrate and not config.threshold else None
    result = find_leaks(
        data,
        threshold=config.threshold or None,
        calibration_data=calibration,
        precision=config.precision,
        device=config.device,
        matcher=resolve_matcher(config.matcher),
        seed=config.seed,
    )
    out = ensure_writable_dir(config.out or data.folder, what="output folder (--out)")
    atomic_write_json(out / "leaks.json", result)
    print(describe_leaks(result))
    if config.top and result["pairs"]:
        _save_pairs(data, result["pairs"][: config.top], out / "leaks_sheet.png")
        print(
            f"contact sheet of the top {min(config.top, len(result['pairs']))} pairs: "
            f"{out / 'leaks_sheet.png'}"
        )
    print(f"wrote {out / 'leaks.json'}")
    return 0


def describe_leaks(result: dict) -> str:
    calibration = result.get("calibration") or {}
    if result["threshold"] is None:
        if not calibration:
            reason = "no --calibrate folder with known patient ids and no --threshold"
        elif calibration["patients"] >= calibration["images"]:
            reason = (
                f"the --calibrate folder {calibration['source']} has no patient with more than one image "
                "(patient ids unknown, or no repeat studies), so it cannot calibrate a threshold"
            )
        else:
            reason = f"the calibration data gave no threshold reaching precision {calibration['precision']:g}"
        return (
            f"{result['folder']}: no calibrated threshold ({reason}); the {len(result['pairs'])} most "
            "similar cross-split pairs are listed for inspection, and no count of same-patient pairs is "
            "claimed"
        )
    how = result["threshold_source"]
    kind = "learned" if str(result["matcher"].get("kind", "")).startswith("learned") else "pixel"
    if calibration:
        how += (
            f" with the same candidate scheme, {calibration['images']} images of {calibration['patients']} "
            f"patients: estimated precision {calibration['achieved_precision']:.2f}, recall "
            f"{calibration['recall']:.2f} of cross-split same-patient pairs, "
            f"{calibration['image_recall']:.2f} of images that have one"
        )
    excluded = result.get("excluded_fitting_images", 0)
    lines = [
        f"{result['folder']}: {result['suspects']} likely same-patient pair(s) across splits at {kind} "
        f"matcher score >= {result['threshold']:.4f} ({how})."
    ]
    if (result.get("score") or {}).get("shift_px") is not None:
        lines.append(f"  Score: {result['score']['score']}.")
    if excluded:
        lines.append(
            f"  {excluded} image(s) of the learned matcher's own fitting patients were left out (scoring "
            "them would flatter it)."
        )
    if result.get("estimated_pairs") is not None:
        lines.append(
            f"  This is a lower bound: at the estimated recall {calibration['recall']:.2f}, about "
            f"{result['estimated_pairs']:.0f} such pair(s) may exist."
        )
    else:
        lines.append("  This is a lower bound (the threshold was given, so the matcher's recall is unknown).")
    tests = result["suspect_images_in_test"]
    if result.get("estimated_test_images") is not None:
        lines.append(
            f"  {tests} test image(s) sit in a suspect pair; the list is not complete: at the estimated "
            f"image recall {calibration['image_recall']:.2f}, about "
            f"{result['estimated_test_images']:.0f} test image(s) may have an image of the same patient "
            "in train or val."
        )
    else:
        lines.append(f"  {tests} test image(s) sit in a suspect pair (at least; the list is not complete).")
    if result["suspects"]:
        grouping = result.get("group_similar_threshold") or result["threshold"]
        why = (
            f" (its threshold is calibrated at precision {result['group_similar_precision']:g}: a wrong "
            "join costs split balance, and prepare refuses when the shares would move too far; a missed one "
            "leaves a patient in two splits)"
            if result.get("group_similar_precision") is not None and grouping != result["threshold"]
            else ""
        )
        lines.append(
            f"  Test scores on such images may be optimistic; `meddenoise prepare --group-similar "
            f"{grouping:.4f} --similar-matcher {kind}` keeps likely same-patient images in one split{why}."
        )
    return "\n".join(lines)


@dataclasses.dataclass
class FitMatcherConfig:
    folder: str = option("", "the prepared folder with patient ids", required=True, cli=False)
    out: str = option("", "the .safetensors file to write", required=True)
    start: str = option(
        "", "fine-tune from: learned (the shipped weights) or a .safetensors file; empty: fit anew"
    )
    steps: int = option(1500, "optimisation steps (about 0.3 s each on 2 CPU cores at 64 x 64)")
    holdout: float = option(
        0.25, "share of patients (seeded) kept out of fitting to measure re-id@1 on; 0: fit on all"
    )
    seed: int = seed_option()  # fitting randomness and the held-out patients
    device: str = option("cpu", "device to fit on: cpu, cuda, cuda:N")
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        if self.steps < 1:
            raise ConfigError("--steps must be >= 1")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"--holdout must be in [0, 1); got {self.holdout}")


def run_fit_matcher(args: argparse.Namespace) -> int:
    import numpy as np

    from meddenoise.data.cache import load_prepared
    from meddenoise.privacy.reid_embedding import (
        FitSettings,
        fit_matcher,
        reid_at_1,
        resolve_matcher,
        save_matcher,
    )

    config = command_config(FitMatcherConfig, args)
    data = load_prepared(config.folder)
    patients = [row["patient_id"] for row in data.records]
    names = sorted(set(patients))
    if len(names) >= len(patients):
        raise DataError(
            f"{data.folder} has no patient with more than one image (ids unknown, or no repeat studies): "
            "a patient matcher learns from images of one patient; prepare a folder with patient ids"
        )
    rng = np.random.default_rng(config.seed)
    held = set(rng.choice(names, size=int(round(config.holdout * len(names))), replace=False).tolist())
    fit_rows = np.array([i for i, p in enumerate(patients) if p not in held])
    start = resolve_matcher(config.start) if config.start else None
    if start is not None and not hasattr(start, "net"):
        raise ConfigError("--start must be learned or a .safetensors file of a learned matcher")
    images = np.asarray(data.images[fit_rows], dtype=np.float32) / data.max_value
    matcher = fit_matcher(
        images,
        [patients[i] for i in fit_rows],
        settings=FitSettings(steps=config.steps, seed=config.seed),
        start=start,
        fitting={"source": str(data.params.get("source", "")), "folder": str(data.folder),
                 "rule": f"all patients but a seeded {config.holdout:g} held out (seed {config.seed})"},
        log=None if config.quiet else print,
        device=config.device,
    )  # fmt: skip
    if held:
        import torch

        rows = np.array([i for i, p in enumerate(patients) if p in held])
        pixels = torch.from_numpy(np.asarray(data.images[rows], dtype=np.float32) / data.max_value)
        rate, count = reid_at_1(matcher.features(pixels.unsqueeze(1)), [patients[i] for i in rows])
        matcher.metadata["measured"] = {
            "held_out_patients": len(held),
            "reid_at_1_clean": rate,
            "queries": count,
        }
        print(f"re-id@1 of {count} held-out images ({len(held)} patients, clean): {rate:.3f}")
    out = save_matcher(matcher, config.out)
    print(f"wrote {out}")
    return 0


def _save_pairs(data, pairs, out: Path) -> None:
    """Two columns (image a, image b) per listed pair, a row each, labelled with splits and score."""
    import numpy as np
    from PIL import Image, ImageDraw

    from meddenoise.fileio import atomic_open

    height, width = data.images.shape[1:]
    label, gap = 14, 4
    sheet = Image.new("L", (2 * width + gap, len(pairs) * (height + label + gap)), color=0)
    draw = ImageDraw.Draw(sheet)
    for row, pair in enumerate(pairs):
        top = row * (height + label + gap)
        draw.text((2, top), f"{pair['split_a']}/{pair['split_b']} {pair['score']:.3f}", fill=255)
        for column, key in enumerate(("row_a", "row_b")):
            pixels = np.asarray(data.images[pair[key]], dtype=np.float64) / data.max_value
            image = Image.fromarray((pixels * 255 + 0.5).astype(np.uint8), "L")
            sheet.paste(image, (column * (width + gap), top + label))
    with atomic_open(out, "wb") as handle:
        sheet.save(handle, format="PNG")


def run_info(args: argparse.Namespace) -> int:
    from meddenoise.data.cache import load_prepared

    config = command_config(DataInfoConfig, args, with_levels)
    data = load_prepared(config.folder)
    print(describe(data))
    if config.sheet:
        out = Path(config.out) if config.out else data.folder / "contact_sheet.png"
        print(write_contact_sheet(data, config, out))
    return 0


def describe(data) -> str:
    info = data.info
    count, height, width = data.images.shape
    patients_total = len({row["patient_id"] for row in data.records})
    groups_total = len({row["group"] for row in data.records})
    params = data.params
    from meddenoise.data import split_claims

    unit = params.get("split_unit") or split_claims.effective_split_unit(
        str(params.get("split_by", "")), params.get("patient_id_origin"), str(params.get("source", ""))
    )
    patients = (
        f"unknown ({patients_total} images, each counted as its own patient)"
        if unit == split_claims.UNIT_IMAGE_UNKNOWN
        else str(patients_total)
    )
    lines = [
        f"{data.folder}: {count} images of {width}x{height} {data.images.dtype} (max value {data.max_value})",
        f"  source: {params.get('source', '?')}, split by {unit or params.get('split_by', '?')}, "
        f"seed {params.get('seed', '?')}, created {info.get('created', '?')}",
        f"  patient ids from: {split_claims.origins_text(params.get('patient_id_origin'))}",
        f"  patients: {patients}, groups (kept whole by the split): {groups_total}",
        f"  {'split':<6} {'images':>8} {'patients':>9} {'groups':>7}",
    ]
    for split in ("train", "val", "test"):
        rows = [row for row in data.records if row["split"] == split]
        patients, groups = len({row["patient_id"] for row in rows}), len({row["group"] for row in rows})
        lines.append(f"  {split:<6} {len(rows):>8} {patients:>9} {groups:>7}")
    similar = data.folder / "similar_groups.json"
    if similar.is_file():
        import json

        found = json.loads(similar.read_text(encoding="utf-8"))
        linked = (
            f"; links (down to {found['threshold'] - found['link_margin']:g}) changed the split of "
            f"{found['images_moved_by_links']} image(s)"
            if found.get("link_margin")
            else ""
        )
        lines.append(
            f"  similar images grouped (--group-similar {found['threshold']:g}): "
            f"{found['joined_components']} group(s), {found['images_in_joined_components']} images kept "
            f"together{linked}"
        )
    if split_claims.optimistic(unit):
        lines.append("  note: " + split_claims.split_sentence({**params, "split_unit": unit}))
    return "\n".join(lines)


def write_contact_sheet(data, config: DataInfoConfig, out: Path) -> str:
    """Rows: samples; columns: clean, then each noise level. Returns a line for the user."""
    import numpy as np
    import torch

    indices = data.indices(config.split)
    if len(indices) == 0:
        raise DataError(f"split {config.split!r} of {data.folder} is empty; choose another with --split")
    chosen = indices[np.linspace(0, len(indices) - 1, min(config.samples, len(indices))).astype(int)]
    clean = torch.from_numpy(np.ascontiguousarray(data.images[chosen])).unsqueeze(1).float() / data.max_value
    keys = torch.from_numpy(data.image_keys[chosen])
    columns = [("clean", clean)]
    for level in config.levels:
        operator = config.noise.with_std(level).build()
        columns.append((f"std {level:g}", operator(clean, keys, seed=config.noise.seed, mode="fixed")))
    _save_grid(columns, out)
    return f"contact sheet: {out} ({len(chosen)} {config.split} images x {len(columns)} columns)"


def _save_grid(columns, out: Path) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    from meddenoise.fileio import atomic_open

    label_height, gap = 14, 2
    count, _, height, width = columns[0][1].shape
    sheet_width = len(columns) * (width + gap) - gap
    sheet = Image.new("L", (sheet_width, label_height + count * (height + gap) - gap), color=0)
    draw = ImageDraw.Draw(sheet)
    for column, (label, batch) in enumerate(columns):
        left = column * (width + gap)
        draw.text((left + 2, 1), label, fill=255)
        pixels = (batch.clamp(0, 1).squeeze(1).numpy() * 255 + 0.5).astype(np.uint8)  # (B, H, W)
        for row in range(count):
            sheet.paste(Image.fromarray(pixels[row], "L"), (left, label_height + row * (height + gap)))
    with atomic_open(out, "wb") as handle:
        sheet.save(handle, format="PNG")
