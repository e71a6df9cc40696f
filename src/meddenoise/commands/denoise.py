"""`meddenoise denoise`: run a trained denoiser over image files or folders (PNG 8/16-bit, JPEG, TIFF,
DICOM). The work is `meddenoise.inference.denoise_files`; this command parses, calls it and prints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meddenoise.config import add_config_arguments, command_config
from meddenoise.errors import MeddenoiseError
from meddenoise.inference import DenoiseConfig

__all__ = ["DenoiseConfig", "register", "run"]

DESCRIPTION = """Denoise obfuscated images with a trained model and write them with the same bit depth.

Inputs are files or folders (walked recursively; the folder structure is kept under --out). PNG/JPEG/TIFF come
out as PNG of the same bit depth (8 or 16); DICOM comes out as DICOM with all tags kept (rescale and window
included) and a new SOP Instance UID. Images of any size are processed in overlapping tiles, so memory depends
on --tile, not on the image; images above --max-pixels are refused from their header, before decoding.

A file that fails (unreadable, too large, a DICOM that cannot be handled, an output that cannot be written)
is listed with its reason and the batch goes on; the list is printed at the end and kept in
denoise_summary.json. Exit status: 0 when every file was denoised, 1 when some failed, 2 when none could be
(or on a usage error)."""


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


def run(args: argparse.Namespace) -> int:
    from meddenoise.inference import denoise_files

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
