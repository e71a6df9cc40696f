"""A trained run as a shareable model folder, the way model hubs expect it (`meddenoise export-model`).

    OUT/model.safetensors   the run's best weights with their metadata (model, noise, target, input profile)
    OUT/config.json         what the model is and how it was trained, as plain JSON
    OUT/README.md           a model card: data, noise, metrics with intervals, privacy, intended use, limits

`load_trained_model(OUT)` and `meddenoise denoise --run OUT` read the folder like a run folder. The card
states only what the run's own files record; a figure the run does not hold is written as "not recorded".
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meddenoise.errors import MeddenoiseError

if TYPE_CHECKING:
    from meddenoise.engine.checkpoint import CheckpointMetadata

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


ONNX_FILE = "model.onnx"


def export_model(run: str | Path, out: str | Path, *, onnx: bool = False) -> Path:
    """Write the export folder of `run` (a run folder) to `out` (created; refused when it holds files);
    with `onnx`, also `model.onnx` for deployment (fixed input size: the training images')."""
    from meddenoise.engine.checkpoint import read_checkpoint, resolve_checkpoint
    from meddenoise.fileio import atomic_open, atomic_write_json, atomic_write_text, ensure_writable_dir
    from meddenoise.rundir import RunDir

    run = Path(run)
    if not run.is_dir():
        raise MeddenoiseError(f"run folder {run} not found (export-model takes a folder written by train)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MeddenoiseError(f"{out} is not empty; export into a new folder")
    checkpoint = resolve_checkpoint(run)
    _, metadata = read_checkpoint(checkpoint)
    ensure_writable_dir(out, what="export folder")
    with checkpoint.open("rb") as source, atomic_open(out / WEIGHTS_FILE, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    run_dir = RunDir(run)
    summary = run_dir.read_summary()
    description = describe(metadata, summary, _test_rows(run), _data_record(metadata))
    if onnx:
        size = (
            description["data"].get("size") or (description["input"].get("profile") or {}).get("size", [0])[0]
        )
        description["onnx"] = export_onnx(out / WEIGHTS_FILE, out / ONNX_FILE, int(size or 0))
    atomic_write_json(out / CONFIG_FILE, description)
    atomic_write_text(out / CARD_FILE, model_card(description))
    return out


def export_onnx(weights: Path, target: Path, size: int) -> dict[str, Any]:
    """`model.onnx` of the exported weights for a (1, 1, size, size) input in [0, 1], checked against the
    PyTorch model with onnxruntime when it is installed. Needs the `onnx` package (`pip install onnx
    onnxruntime`). The size is fixed: the network pads inputs to its multiple with Python-side logic that
    tracing freezes, so other sizes go through `meddenoise denoise` (which tiles) instead."""
    import importlib.util
    import io

    import numpy as np
    import torch

    from meddenoise.engine.checkpoint import load_trained_model
    from meddenoise.fileio import atomic_write_bytes

    if importlib.util.find_spec("onnx") is None:
        raise MeddenoiseError("ONNX export needs the onnx package: pip install onnx onnxruntime")
    if size < 8:
        raise MeddenoiseError(f"ONNX export needs the training image size; {weights} does not record one")
    model, _ = load_trained_model(weights, "cpu")
    example = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about the size-dependent padding: the size is fixed
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, input_names=["noisy"], output_names=["denoised"]
        )
    atomic_write_bytes(target, buffer.getvalue())
    record: dict[str, Any] = {"file": ONNX_FILE, "input": [1, 1, size, size], "checked_with": None}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {"noisy": example.numpy()})
        with torch.no_grad():
            expected = model(example).numpy()
        difference = float(np.abs(output - expected).max())
        if difference > 1e-3:
            raise MeddenoiseError(f"ONNX export of {weights} differs from PyTorch by {difference:.2e}")
        record.update(checked_with=f"onnxruntime {onnxruntime.__version__}", max_abs_difference=difference)
    return record


def _test_rows(run: Path) -> list[dict[str, str]]:
    from meddenoise.rundir import read_rows

    path = run / "test_metrics.csv"
    return read_rows(path, "test metrics") if path.is_file() else []


def _data_record(metadata: CheckpointMetadata) -> dict[str, Any]:
    """The training data's prepare.json (source, counts, patients), when the folder is still there."""
    folder = metadata.config.get("data")
    path = Path(folder) / "prepare.json" if folder else None
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def describe(
    metadata: CheckpointMetadata,
    summary: dict[str, str],
    test_rows: list[dict[str, str]],
    data: dict[str, Any],
) -> dict[str, Any]:
    """config.json's content: the model, its training, its data, its test metrics and its privacy mode."""
    from meddenoise import __version__

    config = metadata.config
    privacy: dict[str, Any] = {"mode": "none", "formal_guarantee": False}
    if summary.get("dp_epsilon"):
        privacy = {
            "mode": "dp-sgd",
            "formal_guarantee": True,
            "epsilon": float(summary["dp_epsilon"]),
            "delta": float(summary["dp_delta"]),
            "unit": summary.get("dp_unit") or "patient",
        }
    elif (metadata.strategy or "").startswith("federated") or config.get("sites"):
        privacy = {"mode": "federated", "formal_guarantee": False}
    target = metadata.target
    if target != "clean":
        privacy["clean_images_at_training_site"] = False
    return {
        "library": "meddenoise",
        "library_version": __version__,
        "model": metadata.model_name,
        "model_spec": metadata.model_spec.to_dict(),
        "weights": metadata.weights,
        "noise": metadata.noise.to_dict(),
        "target": target,
        "input": {"channels": 1, "value_range": [0.0, 1.0], "profile": metadata.input_profile},
        "training": {
            "epoch": metadata.epoch,
            "global_step": metadata.global_step,
            "strategy": metadata.strategy or config.get("strategy"),
            "epochs": config.get("epochs"),
            "batch_size": config.get("batch_size"),
            "lr": config.get("lr"),
            "seed": config.get("seed"),
            "val_loss": metadata.val_loss,
        },
        "data": {
            "source": (data.get("params") or {}).get("source") or data.get("source"),
            "size": (data.get("params") or {}).get("size") or (data.get("shape") or [None])[-1],
            "counts": data.get("counts"),
            "patients": data.get("groups") or data.get("patients"),
            "split_by": data.get("split_by") or (data.get("params") or {}).get("split_by"),
        },
        "test_metrics": _test_metrics(test_rows),
        "privacy": privacy,
    }


def _test_metrics(rows: list[dict[str, str]]) -> dict[str, Any] | None:
    """Mean PSNR / SSIM on the run's test split with cluster-aware 95% intervals (by patient)."""
    if not rows:
        return None
    from meddenoise.metrics.clustered import group_interval

    groups = [r.get("group") or r.get("patient_id") or r["image_id"] for r in rows]
    result: dict[str, Any] = {"images": len(rows), "patients": len(set(groups))}
    for metric in ("psnr", "ssim", "noisy_psnr"):
        values = [float(r[metric]) for r in rows if r.get(metric) not in (None, "")]
        if len(values) != len(rows):
            continue
        interval = group_interval(values, groups)
        result[metric] = {
            "mean": interval.mean,
            "low": interval.low,
            "high": interval.high,
            "method": interval.method,
        }
    return result


def _metric_text(entry: dict[str, Any] | None, digits: int) -> str:
    if not entry:
        return "not recorded"
    text = f"{entry['mean']:.{digits}f}"
    if math.isfinite(entry["low"]) and math.isfinite(entry["high"]):
        text += f" [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"
    return text


def _spec_text(spec: dict[str, Any]) -> str:
    parts = [
        f"{key.replace('_', ' ')} {value}" for key, value in spec.items() if key not in ("name", "options")
    ]
    parts += [f"{key}={value}" for key, value in (spec.get("options") or {}).items()]
    return ", ".join(parts) or "default options"


def model_card(description: dict[str, Any]) -> str:
    """README.md of the export folder (YAML front matter, then the card)."""
    noise = description.get("noise") or {}
    data = description["data"]
    privacy = description["privacy"]
    metrics = description.get("test_metrics")
    spec = description.get("model_spec") or {}
    training = description["training"]
    noise_text = (
        f"{noise.get('kind', 'gaussian')} noise, mean {noise.get('mean')}, std {noise.get('std')}"
        + (", clamped to [0, 1]" if noise.get("clamp", True) else "")
    )
    if privacy["mode"] == "dp-sgd":
        privacy_text = (
            f"DP-SGD: (epsilon {privacy['epsilon']:.2f}, delta {privacy['delta']:g}) per {privacy['unit']}. "
            "The guarantee covers what the weights reveal about any one training unit; it assumes the "
            "accounting settings recorded in config.json."
        )
    elif privacy["mode"] == "federated":
        privacy_text = (
            "Federated training: images stayed at their sites, but the weights carry no formal privacy "
            "guarantee (membership inference may succeed)."
        )
    else:
        privacy_text = (
            "No formal privacy guarantee: the weights may reveal whether an image was in the training set "
            "(run `meddenoise privacy-audit --membership` on the run to measure it)."
        )
    if privacy.get("clean_images_at_training_site") is False:
        privacy_text += f" Trained without clean images ({description['target']} target)."
    counts = data.get("counts") or {}
    patients = data.get("patients") or {}
    data_text = (
        f"source `{data.get('source') or 'not recorded'}`, {data.get('size') or '?'} pixels square, split by "
        f"{data.get('split_by') or 'not recorded'}; "
        + ", ".join(f"{name} {counts[name]} images ({patients.get(name, '?')} patients)" for name in counts)
        if counts
        else "not recorded (the training data folder was not found when exporting)"
    )
    metrics_text = (
        f"On the run's test split ({metrics['images']} images, {metrics['patients']} patients; 95% "
        "intervals resample patients): PSNR "
        f"{_metric_text(metrics.get('psnr'), 2)} dB (noisy input "
        f"{_metric_text(metrics.get('noisy_psnr'), 2)} dB), SSIM {_metric_text(metrics.get('ssim'), 4)}."
        if metrics
        else "Not recorded: the run has no test_metrics.csv (trained with --no-evaluate-test)."
    )
    front = [
        "---",
        "library_name: meddenoise",
        "tags: [image-denoising, medical-imaging, chest-x-ray, privacy]",
        "pipeline_tag: image-to-image",
        "---",
        "",
    ]
    body = [
        f"# {description['model']} denoiser ({description['target']} target"
        + (f", DP-SGD epsilon {privacy['epsilon']:.2g}" if privacy["mode"] == "dp-sgd" else "")
        + ")",
        "",
        "## Model",
        f"`{description['model']}` ({_spec_text(spec)}), weights "
        f"`{WEIGHTS_FILE}` ({description['weights']}), trained with meddenoise "
        f"{description['library_version']} (epoch {training.get('epoch')}, step "
        f"{training.get('global_step')}).",
        "",
        "## Data and noise",
        f"Trained on {data_text}. Inputs: one channel, values in [0, 1], obfuscated with {noise_text}.",
        "",
        "## Evaluation",
        metrics_text,
        "",
        "## Privacy",
        privacy_text,
        "",
        "## Intended use and limits",
        "Research on denoising and on the privacy of noise-obfuscated chest X-rays. Not a medical device: "
        "not for diagnosis or any clinical decision. The figures above hold for images like the training "
        "data (same size, noise level and source); other sites, sizes or noise levels need their own "
        "evaluation (`meddenoise evaluate`). `meddenoise denoise` warns when inputs differ from the training "
        "profile recorded in the weights.",
        "",
        "## Use",
        "```python",
        "from meddenoise import load_trained_model",
        "",
        'model, metadata = load_trained_model("THIS_FOLDER")  # eval mode, CPU',
        "```",
        "or `meddenoise denoise --run THIS_FOLDER INPUT_FOLDER --out OUTPUT_FOLDER`.",
        "",
    ]
    exported = description.get("onnx")
    if exported:
        checked = (
            f"; checked against PyTorch with {exported['checked_with']} (largest difference "
            f"{exported['max_abs_difference']:.1e})"
            if exported.get("checked_with")
            else "; not checked (onnxruntime is not installed)"
        )
        shape = "x".join(str(n) for n in exported["input"])
        body += [
            f"`{exported['file']}`: input `noisy` of shape {shape} (values in [0, 1]), output `denoised`; "
            f"the input size is fixed (other sizes: `meddenoise denoise`, which tiles){checked}.",
            "",
        ]
    return "\n".join(front + body)
