"""`meddenoise denoise`: run a trained denoiser over image files or folders (PNG 8/16-bit, JPEG, TIFF,
DICOM)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, ClassVar

from meddenoise.config import (
    add_config_arguments,
    command_config,
    config_to_dict,
    option,
    print_config_option,
    quiet_option,
    run_option,
    save_config,
)
from meddenoise.data.decode import DEFAULT_MAX_PIXELS
from meddenoise.errors import ConfigError, DataError, MeddenoiseError

DESCRIPTION = """Denoise obfuscated images with a trained model and write them with the same bit depth.

Inputs are files or folders (walked recursively; the folder structure is kept under --out). PNG/JPEG/TIFF come
out as PNG of the same bit depth (8 or 16); DICOM comes out as DICOM with all tags kept (rescale and window
included) and a new SOP Instance UID. Images of any size are processed in overlapping tiles, so memory depends
on --tile, not on the image; images above --max-pixels are refused from their header, before decoding.

A file that fails (unreadable, too large, a DICOM that cannot be handled, an output that cannot be written)
is listed with its reason and the batch goes on; the list is printed at the end and kept in
denoise_summary.json. Exit status: 0 when every file was denoised, 1 when some failed, 2 when none could be
(or on a usage error)."""


@dataclasses.dataclass
class DenoiseConfig:
    LEGACY_KEYS: ClassVar[dict[str, str]] = {"checkpoint": "run"}

    run: str = run_option(
        "run folder written by `meddenoise train` (its best checkpoint) or a .safetensors file"
    )
    out: str = option("", "output folder", required=True)
    inputs: list[str] = option([], "image files and/or folders", cli=False)
    device: str = option("auto", "device: auto (CUDA if present), cpu, cuda or cuda:N")
    tile: int = option(512, "tile side in pixels for tiled inference")
    overlap: int = option(64, "overlap between tiles in pixels (blended with a cosine window)")
    batch_tiles: int = option(4, "tiles per forward pass")
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "refuse images with more pixels than this, before decoding them (Pillow's default limit; 0: none)",
    )
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        if not self.inputs:
            raise ConfigError("give at least one input file or folder")
        if self.tile < 8 or not 0 <= self.overlap < self.tile or self.batch_tiles < 1:
            raise ConfigError("--tile must be >= 8, --overlap in [0, tile) and --batch-tiles >= 1")
        if self.max_pixels < 0:
            raise ConfigError(f"--max-pixels cannot be negative; got {self.max_pixels}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "denoise",
        help="denoise image files or folders with a trained model (same bit depth out)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files (PNG, JPEG, TIFF, DICOM) or folders"
    )
    add_config_arguments(parser, DenoiseConfig)
    parser.set_defaults(func=run)


def collect_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to the output folder's root) for every input file; folders are walked."""
    from meddenoise.imageio import is_image_candidate

    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path)
                hidden = any(part.startswith(".") for part in relative.parts)
                if file.is_file() and not hidden and is_image_candidate(file):
                    found.append((file, relative))
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise DataError(f"input {path} does not exist; give image files or folders")
    if not found:
        raise DataError(f"no image files (PNG, JPEG, TIFF, DICOM) found in {', '.join(inputs)}")
    return found


def denoise_files(config: DenoiseConfig) -> dict[str, Any]:
    """Denoise every input; returns the summary (also written to OUT/denoise_summary.json)."""
    import torch

    from meddenoise.console import progress
    from meddenoise.engine.checkpoint import load_trained_model
    from meddenoise.engine.runtime import resolve_device
    from meddenoise.fileio import atomic_write_json, ensure_writable_dir
    from meddenoise.imageio import output_name, read_image, write_image
    from meddenoise.models.tiling import denoise_tiled

    inputs = collect_inputs(config.inputs)
    out_dir = ensure_writable_dir(config.out, what="output folder (--out)")
    device = resolve_device(config.device)
    model, metadata = load_trained_model(config.run, device)
    description = (
        f"denoised by meddenoise ({metadata.get('model')}, trained with noise "
        f"{metadata.get('noise', {}).get('kind', '')} std {metadata.get('noise', {}).get('std')}) "
        f"from {Path(metadata['checkpoint']).name}"
    )
    from meddenoise.engine.input_profile import compare

    profile = metadata.get("input_profile")
    written, failed, notes, targets, unlike = [], [], [], set(), []
    for path, relative in progress(inputs, quiet=config.quiet, desc="denoise", unit="image"):
        stage = "read"
        try:
            image = read_image(path, config.max_pixels)
            target = out_dir / relative.parent / output_name(relative, image.kind)
            if target.resolve() == path.resolve():
                raise DataError(f"{path}: the output would overwrite the input; choose another --out")
            if target in targets:
                raise DataError(f"{path}: another input already wrote {target} (same name, other extension)")
            stage = "check"
            reasons = compare(profile, image.pixels)
            if reasons:
                unlike.append({"file": str(path), "reasons": reasons})
            stage = "denoise"
            pixels = torch.from_numpy(image.pixels)[None, None]  # (H, W) -> (1, 1, H, W), stays on the host
            output = denoise_tiled(
                model,
                pixels,
                tile=config.tile,
                overlap=config.overlap,
                batch_tiles=config.batch_tiles,
                device=device,
            )
            stage = "write"
            result_path, note = write_image(image, output[0, 0].clamp(0, 1).numpy(), target, description)
        except Exception as exc:  # one bad file must not stop the batch: list it and go on
            failed.append({"file": str(path), "stage": stage, "reason": _reason(exc, path, stage)})
            continue
        targets.add(target)
        written.append({"input": str(path), "output": str(result_path), "bit_depth": image.bit_depth})
        if note:
            notes.append({"file": str(path), "note": note})
    summary = {
        "config": config_to_dict(config),
        "checkpoint": metadata["checkpoint"],
        "written": written,
        "failed": failed,
        "notes": notes,
        "unlike_training": unlike,
        "training_input_profile": profile
        or "not recorded in this checkpoint (trained before input profiles were kept): inputs not checked",
    }
    try:
        atomic_write_json(out_dir / "denoise_summary.json", summary)
        save_config(config, out_dir / "config.json")
    except OSError as exc:  # the disk filled after the images: keep them, and say which they are
        from meddenoise.errors import DiskFullError
        from meddenoise.fileio import is_space_error

        if not is_space_error(exc):
            raise
        outputs = [item["output"] for item in written]
        shown = ", ".join(outputs[:10]) + (f" and {len(outputs) - 10} more" if len(outputs) > 10 else "")
        raise DiskFullError(
            f"writing the summary in {out_dir} failed: {exc.strerror or exc} ({exc.filename or 'summary'}); "
            f"the {len(outputs)} denoised image(s) written are kept: {shown or 'none'}"
        ) from None
    return summary


def _reason(exc: Exception, path: Path, stage: str) -> str:
    """One line naming the file: our own errors already do; others get the stage and the exception type."""
    if isinstance(exc, MeddenoiseError):
        return str(exc)
    if isinstance(exc, OSError) and stage == "write":
        where = f": {exc.filename}" if exc.filename else ""
        return f"{path}: cannot write the output ({exc.strerror or exc}{where})"
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{path}: failed to {stage} ({type(exc).__name__}: {first_line})"


def run(args: argparse.Namespace) -> int:
    config = command_config(DenoiseConfig, args)
    summary = denoise_files(config)
    for note in summary["notes"]:
        print(f"note: {note['file']}: {note['note']}")
    for item in summary["unlike_training"]:
        print(f"warning: {item['file']} is unlike the model's training inputs: {'; '.join(item['reasons'])}")
    if summary["unlike_training"]:
        print(
            f"warning: {len(summary['unlike_training'])} input(s) differ from what the model was trained on "
            "(another site, exposure or noise level?); check their outputs closely (listed in "
            "denoise_summary.json)"
        )
    if isinstance(summary["training_input_profile"], str):
        print(f"note: {summary['training_input_profile']}")
    failed = summary["failed"]
    if failed:
        print(f"failed on {len(failed)} file(s):")
        for item in failed:
            print(f"  {item['reason']}")
    print(f"wrote {len(summary['written'])} image(s) to {config.out}")
    if not summary["written"]:
        raise MeddenoiseError(f"no image could be denoised ({len(failed)} failed; reasons above)")
    if failed:
        print(
            f"{len(failed)} of {len(failed) + len(summary['written'])} file(s) failed (listed above and in "
            f"{Path(config.out) / 'denoise_summary.json'}); exit status 1",
            file=sys.stderr,
        )
        return 1
    return 0
