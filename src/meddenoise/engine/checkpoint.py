"""Checkpoints that never unpickle code: weights in safetensors, training state via torch.save + weights_only.

    checkpoints/last.safetensors   weights used for evaluation (the EMA when enabled) + metadata
    checkpoints/last.state.pt      everything needed to resume: raw weights, optimizer, scaler, EMA, RNG
                                   states, epoch and step in it, best metric, the unfinished epoch's sums
    checkpoints/best.safetensors   the weights with the lowest validation loss so far

Each file is written atomically. The state file holds its own copy of the raw weights, so resuming reads one
file: a kill between writing the two `last` files can never pair weights and optimizer state of two steps.

A weights file's metadata is a `CheckpointMetadata`, built by `CheckpointMetadata.for_run` for both
`meddenoise train` and the federated server, and stored as its `to_dict()` (JSON).
"""

from __future__ import annotations

import dataclasses
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

from meddenoise.config import config_to_dict
from meddenoise.engine.runtime import strip_wrapper_prefixes, unwrap
from meddenoise.errors import DiskFullError, MeddenoiseError
from meddenoise.fileio import atomic_write_bytes, is_space_error, require_free_space
from meddenoise.models.spec import ModelSpec
from meddenoise.noise.spec import NoiseSpec
from meddenoise.rundir import RunDir

FORMAT_VERSION = 1
# Room left for the small files written beside a checkpoint (metrics, log, summary).
CHECKPOINT_SPACE_MARGIN = 1 << 20
METADATA_KEY = "meddenoise"
# The keys of a weights file's metadata, in the order they have always been written (readers ignore the
# order; it is kept so that files stay byte-identical to those of earlier versions).
TRAINER_METADATA_KEYS = (
    "format_version", "kind", "model", "model_spec", "model_options", "noise", "target", "weights", "epoch",
    "epochs_from", "global_step", "step_in_epoch", "val_loss", "strategy", "config", "input_profile",
)  # fmt: skip
FEDERATED_METADATA_KEYS = (
    "format_version", "kind", "model", "model_spec", "model_options", "epochs_from", "noise", "target",
    "weights", "epoch", "round", "global_step", "val_loss", "strategy", "config", "federated",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CheckpointMetadata:
    """What a weights file says about its network and the run that trained it.

    Written by `for_run` only; `to_dict()` is the JSON stored in the file and `from_dict()` reads it back,
    including files written before the model spec (`model` + `model_options`) or before epochs were
    counted from 1 (no `epochs_from`). `checkpoint` (the file it was read from) is never written.
    """

    model_spec: ModelSpec
    noise: NoiseSpec = NoiseSpec()
    format_version: int | None = FORMAT_VERSION
    kind: str | None = None  # "best" or "last"
    target: str = "clean"
    weights: str = "raw"  # "ema" when the file holds the weight average
    epoch: int | None = None
    epochs_from: int | None = 1  # None: an older file counting epochs from 0
    global_step: int | None = None
    step_in_epoch: int | None = None
    val_loss: float | None = None
    strategy: str | None = None  # single, dp, ddp, ..., or federated-<strategy>
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # the training config
    input_profile: dict[str, Any] | None = None  # what `denoise` compares new inputs with
    round: int | None = None  # federated runs: the server round (their epoch)
    federated: dict[str, Any] | None = None  # federated runs: the federation config
    checkpoint: str | None = None

    @classmethod
    def for_run(
        cls,
        kind: str,
        config: Any,
        *,
        epoch: int,
        global_step: int,
        val_loss: float | None,
        strategy: str,
        weights: str = "raw",
        step_in_epoch: int | None = None,
        input_profile: dict[str, Any] | None = None,
        federated: Any = None,
    ) -> CheckpointMetadata:
        """The metadata of a checkpoint of a run trained with `config` (a TrainConfig); `federated` (a
        FederatedConfig) for the federated server, whose rounds stand for epochs."""
        return cls(
            model_spec=config.model_spec(),
            noise=config.noise,
            kind=kind,
            target=config.target,
            weights=weights,
            epoch=epoch,
            global_step=global_step,
            step_in_epoch=step_in_epoch,
            val_loss=val_loss,
            strategy=strategy,
            config=config_to_dict(config),
            input_profile=input_profile,
            round=epoch if federated is not None else None,
            federated=config_to_dict(federated) if federated is not None else None,
        )

    @property
    def is_federated(self) -> bool:
        return self.federated is not None

    @property
    def model_name(self) -> str:
        return self.model_spec.name

    @property
    def model_options(self) -> dict[str, Any]:
        """What `build_model` gets (`ModelSpec.build_options()`)."""
        return self.model_spec.build_options()

    @property
    def target_options(self) -> list[str]:
        return list(self.config.get("target_options") or [])

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored in the weights file. Trainer and federated files differ in their run keys:
        `step_in_epoch` and `input_profile` for the trainer, `round` and `federated` for the server."""
        values = {
            "format_version": self.format_version,
            "kind": self.kind,
            "model": self.model_name,
            "model_spec": self.model_spec.to_dict(),
            "model_options": self.model_options,
            "noise": self.noise.to_dict(),
            "target": self.target,
            "weights": self.weights,
            "epoch": self.epoch,
            "epochs_from": self.epochs_from,
            "global_step": self.global_step,
            "step_in_epoch": self.step_in_epoch,
            "val_loss": self.val_loss,
            "strategy": self.strategy,
            "config": self.config,
            "input_profile": self.input_profile,
            "round": self.round,
            "federated": self.federated,
        }
        keys = FEDERATED_METADATA_KEYS if self.is_federated else TRAINER_METADATA_KEYS
        return {key: values[key] for key in keys}

    @classmethod
    def from_dict(cls, values: dict[str, Any], checkpoint: str | Path | None = None) -> CheckpointMetadata:
        """From `to_dict()` output or an older file's metadata (missing keys take their defaults)."""
        return cls(
            model_spec=ModelSpec.from_metadata(values),
            # files without noise settings: the defaults, as readers have always assumed
            noise=NoiseSpec.from_dict(values.get("noise") or {}),
            format_version=values.get("format_version"),
            kind=values.get("kind"),
            target=values.get("target") or "clean",
            weights=values.get("weights") or "raw",
            epoch=values.get("epoch"),
            epochs_from=values.get("epochs_from"),
            global_step=values.get("global_step"),
            step_in_epoch=values.get("step_in_epoch"),
            val_loss=values.get("val_loss"),
            strategy=values.get("strategy"),
            config=dict(values.get("config") or {}),
            input_profile=values.get("input_profile"),
            round=values.get("round"),
            federated=values.get("federated"),
            checkpoint=str(checkpoint) if checkpoint is not None else None,
        )

    def counted_from_one(self) -> CheckpointMetadata:
        """The same metadata with `epoch` counted from 1, as every reader expects."""
        if self.epochs_from == 1 or not isinstance(self.epoch, int):
            return self
        # files written before epochs were counted from 1
        return dataclasses.replace(self, epoch=self.epoch + 1, epochs_from=1)


def checkpoint_paths(run_dir: str | Path) -> dict[str, Path]:
    run = RunDir(run_dir)
    return {"last_weights": run.last_weights, "last_state": run.last_state, "best_weights": run.best_weights}


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous copies of the plain module's tensors (no DDP / compile prefixes)."""
    state = strip_wrapper_prefixes(unwrap(model).state_dict())
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}


def weights_payload(model: nn.Module, metadata: CheckpointMetadata | dict[str, Any]) -> bytes:
    """The bytes of a weights file (safetensors) of `model` with `metadata` (a plain dict only to write
    files other programs could have written, as tests do)."""
    from safetensors.torch import save

    if isinstance(metadata, CheckpointMetadata):
        metadata = metadata.to_dict()
    return save(plain_state_dict(model), metadata={METADATA_KEY: json.dumps(metadata, default=str)})


def save_weights(path: str | Path, model: nn.Module, metadata: CheckpointMetadata | dict[str, Any]) -> None:
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


def read_checkpoint(path: str | Path, what: str = "") -> tuple[dict[str, torch.Tensor], CheckpointMetadata]:
    """(tensors, metadata) of a weights file, refused unless its metadata describes a meddenoise model.
    `what` starts the error messages (e.g. "init_from RUN: ")."""
    tensors, values = load_weights(path)
    if "model" not in values:
        raise MeddenoiseError(
            f"{what}{path} has no meddenoise metadata; was it written by `meddenoise train`?"
        )
    try:
        metadata = CheckpointMetadata.from_dict(values, path)
    except (MeddenoiseError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MeddenoiseError(
            f"{what}{path} was refused before building its model: its metadata does not describe a model "
            f"({exc})"
        ) from None
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
    require_free_space(
        folder,
        needed,
        what="the checkpoint",
        advice=f"training stopped; {_kept(run_dir)}",
        parameter=_resume_parameter(run_dir),
    )
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
    advice = _kept(run_dir)
    return DiskFullError(f"{reason}; training stopped; {advice}", parameter=_resume_parameter(run_dir))


def _resume_parameter(run_dir: str | Path) -> str | None:
    """The option that continues the run once there is space, when a checkpoint is there to continue from."""
    return "resume" if checkpoint_paths(run_dir)["last_state"].is_file() else None


def _kept(run_dir: str | Path) -> str:
    state = checkpoint_paths(run_dir)["last_state"]
    if state.is_file():
        kept = (
            f"the previous checkpoint in {state.parent} is intact: free some space, then continue the run "
            "with resume (yes or auto)"
        )
    else:
        kept = "no checkpoint had been written yet: free some space, then start the run again"
    return kept


def load_training_state(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    from meddenoise.safe_load import load_plain

    path = Path(path)
    if not path.is_file():
        raise MeddenoiseError(
            f"no training state to resume at {path}; start without resume", parameter="resume"
        )
    state = load_plain(path, "training state", map_location="cpu")
    if isinstance(state, dict) and "sha256" in state and "payload" in state:
        data = state["payload"].numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != state["sha256"]:
            raise MeddenoiseError(
                f"training state {path} is damaged: its content no longer matches the checksum written "
                "with it, so the run is not resumed from it; restore the file from a backup, or start the "
                "run again in another output folder",
                parameter="out",
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
) -> tuple[nn.Module, CheckpointMetadata]:
    """(model in eval mode on `device`, its `CheckpointMetadata`) from a run folder (best checkpoint) or a
    checkpoint file; the metadata's `epoch` is counted from 1 and `checkpoint` names the file read.

    The model is rebuilt by the registry's `build_model` from `metadata.model_spec`. With `inference`
    (default) the model is wrapped as its training method prescribes for denoising (`inference_model`).
    """
    checkpoint = resolve_checkpoint(path)
    tensors, metadata = read_checkpoint(checkpoint)
    model = build_checked_model(metadata, tensors, checkpoint)
    load_state_into(model, tensors, checkpoint)
    metadata = metadata.counted_from_one()
    if inference:
        model = inference_model(model, metadata)
    return model.to(device).eval(), metadata


def inference_model(model: nn.Module, metadata: CheckpointMetadata) -> nn.Module:
    """The denoiser the run's training method prescribes at test time (R2R: an average over
    re-corruptions, `--target-options samples=K`); the plain model for the others."""
    if metadata.target == "clean":
        return model
    from meddenoise.engine.config import parse_options
    from meddenoise.engine.targets import build_target

    options = parse_options(metadata.target_options)
    seed = int(metadata.config.get("seed", 0))
    target = build_target(metadata.target, metadata.noise.build(), seed=seed, **options)
    return target.inference_model(model)


def build_checked_model(
    metadata: CheckpointMetadata, tensors: dict[str, torch.Tensor], source: str | Path
) -> nn.Module:
    """The model the metadata describes, built only after its shapes were checked against the file's tensors.

    The metadata is text anyone can edit: options asking for a huge model would otherwise allocate gigabytes
    before `load_state_dict` notices. The model is first built on the "meta" device (shapes, no memory), with
    every integer option capped by what the file holds, and must have exactly the file's tensor names and
    shapes.
    """
    refuse = f"{source} was refused before building its model"
    spec = metadata.model_spec
    try:
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
    checkpoint = resolve_checkpoint(source)
    tensors, metadata = read_checkpoint(checkpoint, what=f"init_from {source}: ")
    theirs = metadata.model_spec.to_dict()
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
    return model.state_dict(), f"{checkpoint} (epoch {metadata.epoch}, {metadata.weights} weights)"
