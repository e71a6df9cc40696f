"""Checkpoints that never unpickle code: weights in safetensors, training state via torch.save + weights_only.

    checkpoints/last.safetensors   weights used for evaluation (the EMA when enabled) + metadata
    checkpoints/last.state.pt      everything needed to resume: raw weights, optimizer, scaler, EMA, RNG
                                   states, epoch and step in it, best metric, the unfinished epoch's sums
    checkpoints/best.safetensors   the weights with the lowest validation loss so far

Each file is written atomically. The state file holds its own copy of the raw weights, so resuming reads one
file: a kill between writing the two `last` files can never pair weights and optimizer state of two steps.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meddenoise.engine.runtime import strip_wrapper_prefixes, unwrap
from meddenoise.errors import DiskFullError, MeddenoiseError
from meddenoise.fileio import atomic_write_bytes, is_space_error, require_free_space
from meddenoise.rundir import RunDir

FORMAT_VERSION = 1
# Room left for the small files written beside a checkpoint (metrics, log, summary).
CHECKPOINT_SPACE_MARGIN = 1 << 20
METADATA_KEY = "meddenoise"


def checkpoint_paths(run_dir: str | Path) -> dict[str, Path]:
    run = RunDir(run_dir)
    return {"last_weights": run.last_weights, "last_state": run.last_state, "best_weights": run.best_weights}


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous copies of the plain module's tensors (no DDP / compile prefixes)."""
    state = strip_wrapper_prefixes(unwrap(model).state_dict())
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}


def weights_payload(model: nn.Module, metadata: dict[str, Any]) -> bytes:
    """The bytes of a weights file (safetensors) of `model` with `metadata`."""
    from safetensors.torch import save

    return save(plain_state_dict(model), metadata={METADATA_KEY: json.dumps(metadata, default=str)})


def save_weights(path: str | Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    atomic_write_bytes(path, weights_payload(model, metadata))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise MeddenoiseError(f"checkpoint {path} not found")
    try:
        data = path.read_bytes()
        tensors = load(data)
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
        metadata = json.loads((header.get("__metadata__") or {}).get(METADATA_KEY, "{}"))
    except (SafetensorError, ValueError, OSError) as exc:
        raise MeddenoiseError(f"checkpoint {path} is not a readable safetensors file ({exc})") from None
    return tensors, metadata


def rng_states() -> dict[str, Any]:
    """Every global random state a step could touch, as tensors and plain values (weights_only loadable)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position)},
        "numpy_gauss": [int(has_gauss), float(cached)],
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"].cpu())
    numpy_state = states["numpy"]
    has_gauss, cached = states["numpy_gauss"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy_state["position"], has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def training_state_payload(state: dict[str, Any]) -> bytes:
    """The training state file's bytes: the state (torch.save) wrapped with its SHA-256, so a damaged file
    (flipped bytes that still unpickle) is refused on resume instead of continuing from wrong values."""
    inner = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, inner)
    data = inner.getvalue()
    outer = io.BytesIO()
    torch.save(
        {
            "format_version": FORMAT_VERSION,
            "sha256": hashlib.sha256(data).hexdigest(),
            "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8),
        },
        outer,
    )
    return outer.getvalue()


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, training_state_payload(state))


def write_checkpoint_files(run_dir: str | Path, files: list[tuple[Path, bytes]]) -> None:
    """Write checkpoint files in the order given, each atomically, after checking that all of them fit.

    The files are built in memory first, so the space they need is known exactly; each new file exists
    beside the one it replaces until its rename, hence the whole size must be free.
    """
    folder = RunDir(run_dir).checkpoints
    folder.mkdir(parents=True, exist_ok=True)
    needed = sum(len(payload) for _, payload in files) + CHECKPOINT_SPACE_MARGIN
    require_free_space(folder, needed, what="the checkpoint", advice=f"training stopped; {_kept(run_dir)}")
    try:
        for path, payload in files:
            atomic_write_bytes(path, payload)
    except OSError as exc:
        failure = explain_write_failure(exc, run_dir)
        if failure is None:
            raise
        raise failure from None


def explain_write_failure(exc: BaseException, run_dir: str | Path) -> DiskFullError | None:
    """A message for a run-folder write that failed for lack of space (or a refusing file system), saying
    what was kept and how to continue; None for other errors."""
    if not isinstance(exc, OSError) or not (is_space_error(exc) or exc.errno in (errno.EIO, errno.EROFS)):
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    reason = f"writing to the run folder {run_dir} failed: {exc.strerror or exc}{where}"
    return DiskFullError(f"{reason}; training stopped; {_kept(run_dir)}")


def _kept(run_dir: str | Path) -> str:
    state = checkpoint_paths(run_dir)["last_state"]
    if state.is_file():
        kept = (
            f"the previous checkpoint in {state.parent} is intact: free some space, then continue the run "
            "with --resume (or --resume auto)"
        )
    else:
        kept = "no checkpoint had been written yet: free some space, then start the run again"
    return kept


def load_training_state(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    from meddenoise.safe_load import load_plain

    path = Path(path)
    if not path.is_file():
        raise MeddenoiseError(f"no training state to resume at {path}; start without --resume")
    state = load_plain(path, "training state", map_location="cpu")
    if isinstance(state, dict) and "sha256" in state and "payload" in state:
        data = state["payload"].numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != state["sha256"]:
            raise MeddenoiseError(
                f"training state {path} is damaged: its content no longer matches the checksum written "
                "with it, so the run is not resumed from it; restore the file from a backup, or start the "
                "run again in another --out"
            )
        state = load_plain(io.BytesIO(data), f"training state {path}", map_location=device)
    elif isinstance(state, dict) and str(device) != "cpu":  # written before checksums: read it as before
        state = load_plain(path, "training state", map_location=device)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise MeddenoiseError(f"{path} is not a meddenoise training state (format {FORMAT_VERSION})")
    return state


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load weights into the plain module, with a message naming the checkpoint when they do not fit."""
    try:
        unwrap(model).load_state_dict(strip_wrapper_prefixes(state))
    except RuntimeError as exc:
        first_lines = "; ".join(str(exc).splitlines()[:3])
        raise MeddenoiseError(
            f"checkpoint {source} does not fit this model (another model or other options?): {first_lines}"
        ) from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its best checkpoint (its last one if no best was written yet)."""
    path = Path(path)
    if path.is_dir():
        exported = path / "model.safetensors"  # a folder written by `meddenoise export-model`
        if exported.is_file() and not RunDir(path).checkpoints.is_dir():
            return exported
        return RunDir(path).weights_for_inference()
    if not path.is_file():
        raise MeddenoiseError(f"checkpoint {path} not found (give a run folder or a .safetensors file)")
    return path


def load_trained_model(
    path: str | Path, device: torch.device | str = "cpu", *, inference: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on `device`, metadata) from a run folder (best checkpoint) or a checkpoint file.

    Metadata: `model`, `model_spec` (`ModelSpec.to_dict()`), `model_options` (what `build_model` got),
    `noise` (`NoiseSpec.to_dict()`), `target`, `config` (the training config), `epoch` (counted from 1),
    `global_step`, `weights` (raw or ema), `val_loss`. The model is rebuilt by the registry's `build_model`.
    With `inference` (default) the model is wrapped as its training method prescribes for denoising
    (`inference_model`).
    """
    checkpoint = resolve_checkpoint(path)
    tensors, metadata = load_weights(checkpoint)
    if "model" not in metadata:
        raise MeddenoiseError(
            f"{checkpoint} has no meddenoise metadata; was it written by `meddenoise train`?"
        )
    model = build_checked_model(metadata, tensors, checkpoint)
    load_state_into(model, tensors, checkpoint)
    metadata = {**metadata, "checkpoint": str(checkpoint)}
    if metadata.get("epochs_from") != 1 and isinstance(metadata.get("epoch"), int):
        metadata["epoch"] += 1  # checkpoints written before epochs were counted from 1 in files
    if inference:
        model = inference_model(model, metadata)
    return model.to(device).eval(), metadata


def inference_model(model: nn.Module, metadata: dict[str, Any]) -> nn.Module:
    """The denoiser the run's training method prescribes at test time (R2R: an average over
    re-corruptions, `--target-options samples=K`); the plain model for the others."""
    target_name = metadata.get("target") or "clean"
    if target_name == "clean":
        return model
    from meddenoise.engine.config import parse_options
    from meddenoise.engine.targets import build_target
    from meddenoise.noise.spec import NoiseSpec

    config = metadata.get("config") or {}
    options = parse_options(list(config.get("target_options") or []))
    noise_op = NoiseSpec.from_dict(metadata.get("noise") or {}).build()
    target = build_target(target_name, noise_op, seed=int(config.get("seed", 0)), **options)
    return target.inference_model(model)


def build_checked_model(
    metadata: dict[str, Any], tensors: dict[str, torch.Tensor], source: str | Path
) -> nn.Module:
    """The model the metadata describes, built only after its shapes were checked against the file's tensors.

    The metadata is text anyone can edit: options asking for a huge model would otherwise allocate gigabytes
    before `load_state_dict` notices. The model is first built on the "meta" device (shapes, no memory), with
    every integer option capped by what the file holds, and must have exactly the file's tensor names and
    shapes.
    """
    from meddenoise.models.spec import ModelSpec

    refuse = f"{source} was refused before building its model"
    try:
        spec = ModelSpec.from_metadata(metadata)
        name, options = spec.name, spec.build_options()
    except (MeddenoiseError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MeddenoiseError(f"{refuse}: its metadata does not describe a model ({exc})") from None
    # Only tensors that hold values count: a crafted empty tensor of shape [0, 10**7] costs nothing to store
    # and must not lift the cap.
    cap = max([64, len(tensors), *(max(t.shape, default=1) for t in tensors.values() if t.numel() > 0)])
    for key, value in options.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > cap:
            raise MeddenoiseError(
                f"{refuse}: model option {key}={value} is larger than anything its {len(tensors)} tensors "
                f"hold (at most {cap}); the metadata does not describe these weights"
            )
    try:
        with torch.device("meta"):
            skeleton = spec.build()
    except (MeddenoiseError, RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise MeddenoiseError(f"{refuse}: its metadata does not describe a valid model ({exc})") from None
    expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in strip_wrapper_prefixes(tensors).items()}
    if expected != found:
        differences = [
            f"{key}: model {expected.get(key, 'absent')}, file {found.get(key, 'absent')}"
            for key in sorted(set(expected) | set(found))
            if expected.get(key) != found.get(key)
        ]
        raise MeddenoiseError(
            f"{refuse}: its metadata ({name} {options}) does not match its tensors "
            f"({len(differences)} difference(s), e.g. {'; '.join(differences[:3])})"
        )
    return spec.build()


def initial_weights(source: str | Path, spec: Any) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, description) of the checkpoint `--init-from` names, refused unless it holds `spec`'s
    network (a ModelSpec): the same architecture and options, so every tensor fits."""
    from meddenoise.models.spec import ModelSpec

    checkpoint = resolve_checkpoint(source)
    tensors, metadata = load_weights(checkpoint)
    if "model" not in metadata:
        raise MeddenoiseError(
            f"init_from {source}: {checkpoint} has no meddenoise model metadata; was it written by "
            "`meddenoise train`?"
        )
    theirs = ModelSpec.from_metadata(metadata).to_dict()
    ours = spec.to_dict()
    differences = [
        f"{name}: {theirs.get(name)!r} there vs {value!r} here"
        for name, value in ours.items()
        if theirs.get(name) != value
    ]
    if differences:
        raise MeddenoiseError(
            f"init_from {source}: that checkpoint holds another network ({'; '.join(differences)}); "
            "train with the same model options as the run you start from"
        )
    model = build_checked_model(metadata, tensors, checkpoint)  # checks every tensor's shape
    load_state_into(model, tensors, checkpoint)
    epoch = metadata.get("epoch")
    return model.state_dict(), f"{checkpoint} (epoch {epoch}, {metadata.get('weights', 'raw')} weights)"
