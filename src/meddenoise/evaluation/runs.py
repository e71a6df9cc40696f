"""Evaluate a trained run (any run, on its own data or another prepared folder) and a classical baseline on
the same images, writing evaluation folders (see `meddenoise.evaluation.files`)."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from meddenoise.errors import MeddenoiseError
from meddenoise.evaluation.core import EvaluationTarget, score_denoiser, write_evaluation
from meddenoise.evaluation.environment import describe_environment
from meddenoise.noise.spec import NoiseSpec
from meddenoise.rundir import RunDir, recorded_folder

if TYPE_CHECKING:
    from meddenoise.engine.checkpoint import CheckpointMetadata


def describe_data(data: Any) -> dict[str, Any]:
    """What the report says about the data: source, size, split policy, counts (from prepare.json)."""
    info, params = data.info, data.params
    return {
        "folder": str(data.folder),
        "source": params.get("source", ""),
        "split_by": params.get("split_by", ""),
        "patient_id_origin": params.get("patient_id_origin"),
        "split_unit": params.get("split_unit", ""),
        "dtype": info.get("dtype"),
        "height": int(data.images.shape[1]),
        "width": int(data.images.shape[2]),
        "counts": info.get("counts", {}),
        "patients": info.get("patients", {}),
        "groups": info.get("groups", {}),
        "sources": sorted({row["source"] for row in data.records}),
    }


def make_target(
    data_dir: str | Path,
    split: str,
    noise: NoiseSpec,
    device: torch.device,
    *,
    limit: int = 0,
) -> EvaluationTarget:
    """The images of `split` and their fixed-noise inputs (whatever mode the run trained with)."""
    from meddenoise.data.cache import load_prepared

    data = load_prepared(data_dir)
    indices = data.indices(split)
    if indices.size == 0:
        raise MeddenoiseError(
            f"{data_dir} has no images in split {split!r}; choose another split", parameter="split"
        )
    if 0 < limit < indices.size:
        # The `limit` smallest image keys: a subset that always holds the images kept as samples (also the
        # smallest keys), so a baseline run on a subset still appears in the report's figures.
        smallest = np.argsort(data.image_keys[indices], kind="stable")[:limit]
        indices = np.sort(indices[smallest])
    recorded = {key: getattr(noise, key) for key in ("kind", "mean", "std", "clamp", "dose", "seed")}
    return EvaluationTarget(data, split, indices, noise.build(), noise.seed, recorded, device)


def lpips_scorer(device: torch.device, weights: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(module (pred, target) -> (B,), or None; status {available, and where the weights are or why not}).

    `weights` is the AlexNet backbone file; without it the metrics module looks in the torch hub cache."""
    from meddenoise.metrics.perceptual import load_lpips_or_reason

    module, text = load_lpips_or_reason(backbone_path=weights, device=device)
    if module is None:
        return None, {"available": False, "reason": text}
    return module.eval(), {"available": True, "weights": text}


DP_SGD_SUFFIX = "+dp-sgd"


def strategy_name(strategy: str, amp: str, train_config: dict | None = None) -> str:
    """The setup label of a run: strategy, "+amp", and "+dp-sgd" for a DP-SGD run, whose quality the paper's
    tables must never pool with non-private runs of the same model and seed."""
    name = strategy if amp in ("", "off", None) else f"{strategy}+amp"
    config = train_config or {}
    if float(config.get("dp_epsilon") or 0) > 0 or float(config.get("dp_noise_multiplier") or 0) > 0:
        name += DP_SGD_SUFFIX
    return name


def _network_denoiser(model: torch.nn.Module, device: torch.device):
    def denoise(noisy: torch.Tensor) -> torch.Tensor:
        output = model(noisy.to(device))
        return output[-1] if isinstance(output, (list, tuple)) else output

    return denoise


def _head_results(
    model_name: str,
    metadata: CheckpointMetadata,
    target: EvaluationTarget,
    labels: dict[str, Any],
    batch_size: int,
    device: torch.device,
) -> tuple[list[dict], list[dict]]:
    """U-Net++: each head k as its own pruned network (only nodes with i + j <= k run): quality and speed."""
    from meddenoise.engine.checkpoint import load_weights
    from meddenoise.evaluation.core import per_image_rows
    from meddenoise.models.summary import count_active_parameters

    tensors, _ = load_weights(metadata.checkpoint)
    spec = metadata.model_spec
    spec = dataclasses.replace(spec, options={k: v for k, v in spec.options.items() if k != "head"})
    full = spec.build()
    heads, rows = [], []
    for head in range(1, int(getattr(full, "depth", 5))):
        pruned = spec.build(head=head)
        pruned.load_state_dict(tensors)
        pruned = pruned.to(device).eval()
        sample = target.data.images[target.indices[:1]]
        probe = torch.zeros(1, 1, *sample.shape[1:], device=device)
        scores = score_denoiser(_network_denoiser(pruned, device), target, batch_size=batch_size)
        rows += per_image_rows(target, scores, labels, head=str(head))
        heads.append(
            {
                "head": head,
                "parameters": count_active_parameters(pruned, probe),
                "psnr_mean": float(np.mean(scores.values["psnr"])),
                "ssim_mean": float(np.mean(scores.values["ssim"])),
                "images_per_second": scores.images_per_second,
            }
        )
    return heads, rows


def evaluate_run(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    split: str = "test",
    device: str = "auto",
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    keep_samples: int = 3,
    heads: bool = True,
    lpips_weights: str | None = None,
    limit: int = 0,
    quiet: bool = True,
    noise_std: float | None = None,
) -> Path:
    """Evaluate the run's best checkpoint on `split` of its own data (or `data_dir`) with the run's
    fixed noise, or at another noise std (`noise_std`: robustness; same mean, clamp and fixed seed).

    Writes `RUN/evaluation/<split>[-std<s>][-<data folder name>]/` unless `out_dir` is given; returns that
    folder. An evaluation at another level records `trained_noise_std`, and reports keep it out of the
    tables of trained levels.
    """
    from meddenoise.engine.checkpoint import load_trained_model
    from meddenoise.engine.runtime import resolve_device

    run_dir = Path(run_dir)
    torch_device = resolve_device(device)
    model, metadata = load_trained_model(run_dir, torch_device)
    train_config = metadata.config
    own_data = train_config.get("data")
    if own_data:
        own_data = str(recorded_folder(own_data, run_dir, train_config.get("out", "")))
    data_dir = Path(data_dir) if data_dir else Path(own_data) if own_data else None
    if data_dir is None:
        raise MeddenoiseError(
            f"{run_dir} does not record its prepared folder; give the prepared folder to use",
            parameter="data",
        )
    if not data_dir.is_dir():
        raise MeddenoiseError(
            f"prepared folder {data_dir} (recorded by the run) is gone; give the prepared folder to use",
            parameter="data",
        )
    noise = metadata.noise
    trained_std = noise.std
    if noise_std is not None and not math.isclose(noise_std, trained_std):
        noise = dataclasses.replace(noise, std=float(noise_std))
    other_level = not math.isclose(noise.std, trained_std)
    target = make_target(data_dir, split, noise, torch_device, limit=limit)
    if out_dir is None:
        same_data = own_data and Path(own_data).resolve() == data_dir.resolve()
        name = split + (f"-std{noise.std:g}" if other_level else "")
        name += "" if same_data else f"-{data_dir.resolve().name}"
        out_dir = RunDir(run_dir if run_dir.is_dir() else run_dir.parent).evaluation_dir(name)
    out_dir = Path(out_dir)

    run_summary = RunDir(run_dir).read_summary() if run_dir.is_dir() else {}
    target_name = metadata.target
    model_name = metadata.model_name
    labels = {
        "kind": "network",
        "method": model_name if target_name == "clean" else f"{model_name}+{target_name}",
        "model": model_name,
        "strategy": strategy_name(metadata.strategy or "single", run_summary.get("amp", "off"), train_config),
        "seed": train_config.get("seed"),
    }
    lpips_model, lpips_status = lpips_scorer(torch_device, lpips_weights)
    scores = score_denoiser(
        _network_denoiser(model, torch_device),
        target,
        quiet=quiet,
        batch_size=batch_size,
        lpips_model=lpips_model,
        keep_samples=keep_samples,
    )
    head_table, head_rows = [], []
    if heads and model_name == "unetpp":
        head_table, head_rows = _head_results(model_name, metadata, target, labels, batch_size, torch_device)
    info = {
        **labels,
        "target": target_name,
        **_target_traits(target_name, noise, train_config.get("target_options") or []),
        "amp": run_summary.get("amp", ""),
        "world_size": int(run_summary["world_size"]) if run_summary.get("world_size") else None,
        "run_dir_relative": os.path.relpath(run_dir if run_dir.is_dir() else run_dir.parent, out_dir),
        "checkpoint": metadata.checkpoint,
        "best_epoch": metadata.epoch,
        "model_options": metadata.model_options,
        "data": describe_data(target.data),
        "lpips": lpips_status,
        "environment": describe_environment(),
        "heads": head_table,
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if other_level:
        info["trained_noise_std"] = trained_std
    return write_evaluation(out_dir, target, scores, info, head_rows=head_rows)


def evaluate_baseline(
    name: str,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    noise: NoiseSpec,
    split: str = "test",
    tune_split: str = "val",
    device: str = "cpu",
    batch_size: int = 16,
    keep_samples: int = 3,
    lpips_weights: str | None = None,
    limit: int = 0,
    tune_limit: int = 16,
    params: dict[str, Any] | None = None,
    quiet: bool = True,
) -> Path:
    """Evaluate a classical baseline (noisy, gaussian, nlm, bm3d) on the same images and noise as the
    networks.

    Parameters are tuned on `tune_split` (at most `tune_limit` images) unless given in `params`. Unless
    `quiet`, each stage is announced on its own line (a log shows progress too, not only a terminal's bar).
    """

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    from meddenoise.baselines.classical import DEFAULT_GRIDS, build_baseline, tune_baseline
    from meddenoise.engine.runtime import resolve_device

    torch_device = resolve_device(device)
    target = make_target(data_dir, split, noise, torch_device, limit=limit)
    tuned: dict[str, Any] = dict(params or {})
    tuning: Any = None
    if params is None and not DEFAULT_GRIDS.get(name):
        tuning = "nothing to tune (fixed parameters)"
    elif params is None:
        from meddenoise.evaluation.core import iterate_batches

        tune_target = make_target(data_dir, tune_split, noise, torch_device, limit=tune_limit)
        _, clean, noisy = next(iterate_batches(tune_target, tune_target.count))  # (n, 1, H, W) each
        settings = math.prod(len(values) for values in DEFAULT_GRIDS[name].values())
        say(
            f"{name} at noise std {noise.std:g}: tuning {settings} setting(s) on {tune_target.count} "
            f"{tune_split} images"
        )
        started = time.perf_counter()
        tuned, tuning = tune_baseline(name, noisy, clean, noise.mean, noise.std, max_images=None, quiet=quiet)
        chosen = ", ".join(f"{key} {value}" for key, value in tuned.items())
        say(f"  tuned in {time.perf_counter() - started:.1f} s: {chosen}")
    baseline = build_baseline(name, noise.mean, noise.std, **tuned)
    say(f"{name} at noise std {noise.std:g}: denoising {target.count} {split} images")
    lpips_model, lpips_status = lpips_scorer(torch_device, lpips_weights)
    scores = score_denoiser(
        baseline.denoise,
        target,
        batch_size=batch_size,
        lpips_model=lpips_model,
        keep_samples=keep_samples,
        quiet=quiet,
    )
    info = {
        "kind": "baseline",
        "method": name,
        "model": name,
        "strategy": "",
        "seed": None,
        "params": tuned,
        "tuning": tuning,
        "data": describe_data(target.data),
        "lpips": lpips_status,
        "environment": describe_environment(),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return write_evaluation(Path(out_dir), target, scores, info)


def _target_traits(name: str, noise: NoiseSpec, options: list[str]) -> dict[str, Any]:
    """What the receiving site needed to train this run: obfuscated copies per image and whether clean
    images entered training (read from the registered target, so the report need not guess)."""
    from meddenoise.engine.targets import build_target

    try:
        target = build_target(name, noise.build())
    except MeddenoiseError:
        return {"target_options": list(options)}  # a target not registered here: leave the traits out
    return {
        "target_copies": int(target.copies),
        "target_needs_clean": bool(target.needs_clean),
        "target_options": list(options),
    }
