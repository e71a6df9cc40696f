"""Denoise arrays and image files with a trained run; `meddenoise denoise` is a thin command over it.

`denoise(array, run)` returns the denoised array; `denoise(paths, run, out=FOLDER)` denoises files or
folders (PNG 8/16-bit, JPEG, TIFF, DICOM) into FOLDER with the same bit depth and returns the summary that
is also written to FOLDER/denoise_summary.json. Both go through the same tiles, the same intensity scale and
the same check against the training inputs' profile, so an array and the file written from it agree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from meddenoise.config import (
    config_from_mapping,
    config_to_dict,
    option,
    print_config_option,
    quiet_option,
    run_option,
    save_config,
)
from meddenoise.data.decode import DEFAULT_MAX_PIXELS
from meddenoise.errors import ConfigError, DataError, MeddenoiseError

if TYPE_CHECKING:
    from meddenoise.engine.checkpoint import CheckpointMetadata

NO_PROFILE = "not recorded in this checkpoint (trained before input profiles were kept): inputs not checked"
# full scale of the integer arrays `denoise` accepts, as read from 8- and 16-bit PNGs
INTEGER_SCALES = {"uint8": 255.0, "uint16": 65535.0}


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
            raise ConfigError("give at least one input file or folder", "inputs")
        check_tiling(self.tile, self.overlap, self.batch_tiles)
        if self.max_pixels < 0:
            raise ConfigError(f"max_pixels cannot be negative; got {self.max_pixels}", "max_pixels")


def check_tiling(tile: int, overlap: int, batch_tiles: int) -> None:
    if tile < 8:
        raise ConfigError(f"tile must be >= 8 pixels; got {tile}", "tile")
    if not 0 <= overlap < tile:
        raise ConfigError(f"overlap must be in [0, tile) = [0, {tile}); got {overlap}", "overlap")
    if batch_tiles < 1:
        raise ConfigError(f"batch_tiles must be >= 1; got {batch_tiles}", "batch_tiles")


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """A trained model ready for inference, with what the outputs and checks need from its checkpoint."""

    model: Any  # nn.Module in eval mode on `device`
    device: Any
    checkpoint: str  # the file the weights came from
    description: str  # written into output files (DICOM DerivationDescription)
    input_profile: dict[str, Any] | None  # statistics of the training inputs; None for older checkpoints


def read_checkpoint_metadata(metadata: CheckpointMetadata) -> tuple[str, str, dict[str, Any] | None]:
    """(checkpoint file, description for outputs, training input profile or None)."""
    description = (
        f"denoised by meddenoise ({metadata.model_name}, trained with noise {metadata.noise.kind} std "
        f"{metadata.noise.std}) from {Path(metadata.checkpoint).name}"
    )
    return str(metadata.checkpoint), description, metadata.input_profile or None


def load_denoiser(run: str | os.PathLike, device: str = "auto") -> Denoiser:
    """The trained model of `run` (a run folder: its best checkpoint; or a .safetensors file) on `device`."""
    from meddenoise.engine.checkpoint import load_trained_model
    from meddenoise.engine.runtime import resolve_device

    resolved = resolve_device(device)
    model, metadata = load_trained_model(run, resolved)
    checkpoint, description, profile = read_checkpoint_metadata(metadata)
    return Denoiser(model, resolved, checkpoint, description, profile)


def denoise_image(denoiser: Denoiser, pixels: Any, tile: int, overlap: int, batch_tiles: int) -> Any:
    """(H, W) float32 intensities -> (H, W) float32 denoised in [0, 1], tiled; the image stays on the host."""
    import torch

    from meddenoise.models.tiling import denoise_tiled

    image = torch.from_numpy(pixels)[None, None]  # (H, W) -> (1, 1, H, W)
    output = denoise_tiled(
        denoiser.model, image, tile=tile, overlap=overlap, batch_tiles=batch_tiles, device=denoiser.device
    )
    return output[0, 0].clamp(0, 1).numpy()


def denoise(
    inputs: Any,
    run: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    tile: int = 512,
    overlap: int = 64,
    batch_tiles: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quiet: bool = True,
) -> Any:
    """Denoise with the trained model of `run` (a run folder or a .safetensors file).

    `inputs` a numpy array, (H, W) or (N, H, W): returns the denoised array of the same shape. Floats are
    intensities in [0, 1] (the result is float32 in [0, 1]); uint8 and uint16 arrays are read on their full
    scale, as 8- and 16-bit PNGs are, and come back in their own dtype. Inputs unlike the training inputs
    (un-obfuscated, another noise level or size) raise a `UserWarning` each.

    `inputs` a path or paths (files and folders): the denoised files are written under `out` (same bit depth;
    DICOM stays DICOM) and the summary is returned (`written`: input and output paths; `failed`, `notes`,
    `unlike_training`, ...), as `meddenoise denoise` writes it to `out`/denoise_summary.json.
    """
    import numpy as np

    if isinstance(inputs, np.ndarray):
        if out is not None:
            raise ConfigError("an array is returned, not written: give out only with file inputs", "out")
        check_tiling(tile, overlap, batch_tiles)
        return denoise_array(load_denoiser(run, device), inputs, tile, overlap, batch_tiles)
    if out is None:
        raise ConfigError("give out, the folder the denoised files are written to", "out")
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    options = {"tile": tile, "overlap": overlap, "batch_tiles": batch_tiles, "max_pixels": max_pixels}
    values = {"run": str(run), "out": str(out), "inputs": [str(path) for path in paths], "device": device}
    config = config_from_mapping(DenoiseConfig, {**values, **options, "quiet": quiet}, source="denoise()")
    return denoise_files(config)


def denoise_array(denoiser: Denoiser, images: Any, tile: int, overlap: int, batch_tiles: int) -> Any:
    import warnings

    import numpy as np

    from meddenoise.engine.input_profile import compare

    if images.ndim not in (2, 3):
        raise ConfigError(f"inputs must be an (H, W) or (N, H, W) array; got shape {images.shape}", "inputs")
    scale = INTEGER_SCALES.get(images.dtype.name)
    if scale is None and not np.issubdtype(images.dtype, np.floating):
        raise ConfigError(
            f"inputs of dtype {images.dtype} cannot be read: give uint8, uint16 or floats in [0, 1]", "inputs"
        )
    stack = images[None] if images.ndim == 2 else images
    results = []
    for index, image in enumerate(stack):
        # one image at a time, as files are: the same tiles, so an array and its file agree exactly
        pixels = image.astype(np.float32)  # a copy: torch would share, and warn about, a read-only memmap
        if scale:
            pixels /= scale
        reasons = compare(denoiser.input_profile, pixels)
        if reasons:
            warnings.warn(
                f"image {index} is unlike the model's training inputs: {'; '.join(reasons)}", stacklevel=3
            )
        denoised = denoise_image(denoiser, pixels, tile, overlap, batch_tiles)
        results.append(np.round(denoised * scale).astype(images.dtype) if scale else denoised)
    output = np.stack(results)
    return output[0] if images.ndim == 2 else output


def collect_inputs(inputs: Iterable[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to the output folder's root) for every input file; folders are walked."""
    from meddenoise.imageio import is_image_candidate

    inputs = list(inputs)
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
    """Denoise every input; returns the summary (also written to OUT/denoise_summary.json). A file that fails
    is listed with its reason and the others go on."""
    from meddenoise.console import progress
    from meddenoise.engine.input_profile import compare
    from meddenoise.fileio import atomic_write_json, ensure_writable_dir
    from meddenoise.imageio import output_name, read_image, write_image

    inputs = collect_inputs(config.inputs)
    out_dir = ensure_writable_dir(config.out, what="output folder", parameter="out")
    denoiser = load_denoiser(config.run, config.device)
    profile = denoiser.input_profile
    written, failed, notes, targets, unlike = [], [], [], set(), []
    for path, relative in progress(inputs, quiet=config.quiet, desc="denoise", unit="image"):
        stage = "read"
        try:
            image = read_image(path, config.max_pixels)
            target = out_dir / relative.parent / output_name(relative, image.kind)
            if target.resolve() == path.resolve():
                raise DataError(f"{path}: the output would overwrite the input; choose another output folder")
            if target in targets:
                raise DataError(f"{path}: another input already wrote {target} (same name, other extension)")
            stage = "check"
            reasons = compare(profile, image.pixels)
            if reasons:
                unlike.append({"file": str(path), "reasons": reasons})
            stage = "denoise"
            output = denoise_image(denoiser, image.pixels, config.tile, config.overlap, config.batch_tiles)
            stage = "write"
            result_path, note = write_image(image, output, target, denoiser.description)
        except Exception as exc:  # one bad file must not stop the batch: list it and go on
            failed.append({"file": str(path), "stage": stage, "reason": _reason(exc, path, stage)})
            continue
        targets.add(target)
        written.append({"input": str(path), "output": str(result_path), "bit_depth": image.bit_depth})
        if note:
            notes.append({"file": str(path), "note": note})
    summary = {
        "config": config_to_dict(config),
        "checkpoint": denoiser.checkpoint,
        "written": written,
        "failed": failed,
        "notes": notes,
        "unlike_training": unlike,
        "training_input_profile": profile or NO_PROFILE,
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
