"""Score any denoiser (a trained network or a classical baseline, one `denoise(noisy)` call) on a split of a
prepared folder with fixed noise, and write the evaluation folder described in `meddenoise.evaluation.files`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddenoise.console import progress
from meddenoise.evaluation import files

# The per-image table also scores the noisy input itself: the floor a denoiser must beat, per image.
NOISY_METRICS = ("noisy_psnr", "noisy_ssim")
Denoise = Callable[[torch.Tensor], torch.Tensor]  # (B, 1, H, W) noisy in [0, 1] -> (B, 1, H, W)


@dataclasses.dataclass
class EvaluationTarget:
    """The images an evaluation runs on, and the noise that makes their inputs."""

    data: Any  # meddenoise.data.cache.PreparedData
    split: str
    indices: np.ndarray  # (n,) int64 rows of the prepared folder
    noise_op: Any  # meddenoise.noise.NoiseOperator
    noise_seed: int
    noise: dict[str, Any]  # kind, mean, std, clamp, seed (recorded in evaluation.json)
    device: torch.device

    @property
    def count(self) -> int:
        return int(self.indices.size)


def sample_positions(target: EvaluationTarget, count: int) -> np.ndarray:
    """Positions (into `target.indices`) of the images kept for figures: the `count` smallest image keys.

    Keys depend on image ids alone, so every method evaluated on the same split keeps the same images.
    """
    keys = target.data.image_keys[target.indices]
    return np.sort(np.argsort(keys, kind="stable")[: min(count, keys.size)])


def iterate_batches(target: EvaluationTarget, batch_size: int):
    """Yield (positions (b,), clean (b, 1, H, W) float32 on the device, noisy (b, 1, H, W))."""
    for start in range(0, target.count, batch_size):
        positions = np.arange(start, min(start + batch_size, target.count))
        rows = target.indices[positions]
        pixels = np.ascontiguousarray(target.data.images[rows])  # (b, H, W) uint8|uint16 from the memmap
        clean = torch.from_numpy(pixels.astype(np.float32) / float(target.data.max_value)).unsqueeze(1)
        clean = clean.to(target.device)  # (b, H, W) -> (b, 1, H, W)
        keys = torch.from_numpy(target.data.image_keys[rows].astype(np.int64)).to(target.device)
        noisy = target.noise_op(clean, keys, seed=target.noise_seed, mode="fixed")
        yield positions, clean, noisy


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Scores:
    """Per-image metrics of one denoiser on one target, in image order, plus kept samples and timing."""

    values: dict[str, np.ndarray]  # metric -> (n,) float64; lpips NaN when unavailable
    denoise_seconds: float
    samples: dict[str, np.ndarray]  # clean / noisy / denoised: (k, H, W) float32

    @property
    def images_per_second(self) -> float:
        count = len(next(iter(self.values.values())))
        return count / self.denoise_seconds if self.denoise_seconds > 0 else math.nan


def score_denoiser(
    denoise: Denoise,
    target: EvaluationTarget,
    *,
    batch_size: int = 16,
    lpips_model: Any = None,
    keep_samples: int = 0,
    quiet: bool = True,
) -> Scores:
    """Run `denoise` over the target's images and compute PSNR, SSIM, SSIM (win 3) and LPIPS per image.

    Outputs are clamped to [0, 1] before scoring, as a viewer would see them. Only the `denoise` calls
    are timed.
    """
    from meddenoise.metrics import psnr, ssim, ssim_win3

    keep = set(sample_positions(target, keep_samples).tolist()) if keep_samples else set()
    parts: dict[str, list[np.ndarray]] = {metric: [] for metric in (*files.METRICS, *NOISY_METRICS)}
    kept: dict[str, list[np.ndarray]] = {"clean": [], "noisy": [], "denoised": []}
    seconds = 0.0
    with torch.no_grad():
        batches = iterate_batches(target, batch_size)
        total = math.ceil(target.count / batch_size)
        for positions, clean, noisy in progress(
            batches, quiet=quiet, desc="evaluate", unit="batch", total=total
        ):
            _synchronize(target.device)
            started = time.perf_counter()
            output = denoise(noisy)
            _synchronize(target.device)
            seconds += time.perf_counter() - started
            output = output.float().clamp(0.0, 1.0)
            parts["psnr"].append(psnr(output, clean).double().cpu().numpy())
            parts["ssim"].append(ssim(output, clean).double().cpu().numpy())
            parts["ssim_win3"].append(ssim_win3(output, clean).double().cpu().numpy())
            noisy_view = noisy.float().clamp(0.0, 1.0)
            parts["noisy_psnr"].append(psnr(noisy_view, clean).double().cpu().numpy())
            parts["noisy_ssim"].append(ssim(noisy_view, clean).double().cpu().numpy())
            if lpips_model is not None:
                parts["lpips"].append(lpips_model(output, clean).double().cpu().numpy())
            else:
                parts["lpips"].append(np.full(len(positions), math.nan))
            for offset, position in enumerate(positions.tolist()):
                if position in keep:
                    kept["clean"].append(clean[offset, 0].cpu().numpy())
                    kept["noisy"].append(noisy[offset, 0].float().cpu().numpy())
                    kept["denoised"].append(output[offset, 0].cpu().numpy())
    values = {metric: np.concatenate(chunks) for metric, chunks in parts.items()}
    samples = {
        name: np.stack(images) if images else np.zeros((0, 1, 1), np.float32) for name, images in kept.items()
    }
    return Scores(values=values, denoise_seconds=seconds, samples=samples)


def summarise(values: np.ndarray, groups: Sequence[str], unit: str = "patient") -> dict[str, Any]:
    """Mean and cluster-aware 95% interval of one metric (`meddenoise.metrics.clustered`)."""
    from meddenoise.metrics.clustered import group_interval

    return group_interval(values, groups, unit=unit).to_dict()


def per_image_rows(
    target: EvaluationTarget, scores: Scores, labels: dict[str, Any], head: str = ""
) -> list[dict[str, Any]]:
    records = target.data.records
    rows = []
    for position, row_index in enumerate(target.indices.tolist()):
        record = records[row_index]
        rows.append(
            {
                "image_id": record["image_id"],
                "patient_id": record["patient_id"],
                "group": record.get("group") or record["patient_id"],
                "split": target.split,
                "noise_kind": target.noise.get("kind", "gaussian"),
                "noise_mean": target.noise.get("mean"),
                "noise_std": target.noise.get("std"),
                "method": labels["method"],
                "model": labels.get("model", labels["method"]),
                "strategy": labels.get("strategy", ""),
                "seed": labels.get("seed"),
                "head": head,
                **{
                    metric: float(scores.values[metric][position])
                    for metric in (*files.METRICS, *NOISY_METRICS)
                },
            }
        )
    return rows


def write_evaluation(
    out_dir: Path,
    target: EvaluationTarget,
    scores: Scores,
    info: dict[str, Any],
    *,
    head_rows: list[dict[str, Any]] | None = None,
) -> Path:
    """Write per_image.csv, summary.csv, samples.npz, per_head.csv and, last, evaluation.json.

    The files are written into a hidden staging folder beside `out_dir`, which replaces `out_dir` only once
    all of them are written: a failed write (a full disk) leaves no partial evaluation folder, and an earlier
    evaluation there stays as it was.
    """
    import os
    import shutil

    from meddenoise.errors import DiskFullError
    from meddenoise.fileio import is_space_error

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write_evaluation_files(staging, target, scores, info, head_rows)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not is_space_error(exc):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        kept = "the earlier evaluation there is kept" if out_dir.exists() else "nothing was written"
        raise DiskFullError(
            f"writing the evaluation {out_dir} failed: {exc.strerror or exc}{where}; {kept}; free some space "
            "and evaluate again"
        ) from None
    if out_dir.exists():
        previous = out_dir.parent / f".{out_dir.name}.previous-{os.getpid()}"
        out_dir.rename(previous)
        staging.rename(out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        staging.rename(out_dir)
    return out_dir


def _write_evaluation_files(
    out_dir: Path,
    target: EvaluationTarget,
    scores: Scores,
    info: dict[str, Any],
    head_rows: list[dict[str, Any]] | None,
) -> None:
    rows = per_image_rows(target, scores, info)
    files.write_rows(out_dir / files.PER_IMAGE_FILE, files.PER_IMAGE_COLUMNS, rows)
    patient_ids = [row["patient_id"] for row in rows]
    group_ids = [row["group"] for row in rows]
    unit = "pose group" if info.get("data", {}).get("source") == "default" else "patient"
    summary = {}
    summary_rows = []
    for metric in files.METRICS:
        result = summarise(scores.values[metric], group_ids, unit)
        summary[metric] = result
        t_interval = summarise(scores.values[metric], None)  # images as if independent, for reference
        summary_rows.append(
            {
                "metric": metric,
                "n": result["n"],
                "mean": result["mean"],
                "ci_low": result["low"],
                "ci_high": result["high"],
                "ci_method": result["method"],
                "ci_note": result["note"],
                "t_low": t_interval["low"],
                "t_high": t_interval["high"],
                "groups": result["groups"],
                "patients": len(set(patient_ids)),
            }
        )
    files.write_rows(out_dir / files.SUMMARY_FILE, files.SUMMARY_COLUMNS, summary_rows)
    if head_rows:
        files.write_rows(out_dir / files.PER_HEAD_FILE, files.PER_IMAGE_COLUMNS, head_rows)
    sample_ids = []
    if len(scores.samples["clean"]):
        positions = sample_positions(target, len(scores.samples["clean"]))
        sample_ids = [target.data.records[int(target.indices[p])]["image_id"] for p in positions]
        files.write_samples(out_dir / files.SAMPLES_FILE, sample_ids, **scores.samples)
    files.write_info(
        out_dir,
        {
            **info,
            "split": target.split,
            "images": target.count,
            "noise": target.noise,
            "summary": summary,
            "timing": {
                "denoise_seconds": scores.denoise_seconds,
                "images_per_second": scores.images_per_second,
                "device": str(target.device),
            },
            "samples": sample_ids,
        },
    )
