"""Validation and test evaluation on the device: per-image loss, PSNR and SSIM, reduced as sums and counts.

Each rank evaluates its contiguous shard; the means are `all-reduced sums / all-reduced counts`, which is the
metric of the whole set even when shards differ in size (a mean of per-rank means would not be). Inputs are
always made with the `fixed` noise mode: every epoch and every method sees the same noisy images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from meddenoise.data.loader import DeviceBatches
from meddenoise.data.streaming import StreamBatches
from meddenoise.engine import distributed
from meddenoise.engine.losses import per_image_loss
from meddenoise.engine.placement import make_batches
from meddenoise.engine.runtime import Runtime

METRIC_NAMES = ("loss", "psnr", "ssim")


@dataclasses.dataclass
class PerImage:
    """Per-image results of one shard, on the device: `positions` index the DeviceBatches' images."""

    positions: torch.Tensor  # (n,) int64
    values: dict[str, torch.Tensor]  # name -> (n,) float


def _final_output(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[-1]


@torch.no_grad()
def evaluate_batches(
    model: nn.Module | None,
    batches: DeviceBatches | StreamBatches,
    noise_op: Any,
    runtime: Runtime,
    *,
    noise_seed: int,
    loss_name: str = "l1",
) -> PerImage:
    """Denoise this rank's shard of `batches` and score it; `model=None` scores the noisy input itself."""
    from meddenoise.metrics import psnr, ssim

    if model is not None:
        model.eval()
    positions, values = [], {name: [] for name in METRIC_NAMES}
    for batch in batches.shard():
        noisy = noise_op(batch.clean, batch.image_keys, seed=noise_seed, mode="fixed")  # (b, 1, H, W)
        if model is None:
            prediction = noisy
        else:
            with runtime.autocast():
                prediction = _final_output(model(runtime.to_device_batch(noisy)))
        prediction = prediction.float()
        values["loss"].append(per_image_loss(loss_name, prediction, batch.clean))
        shown = prediction.clamp(0.0, 1.0)  # what a viewer sees; PSNR/SSIM are defined on the [0, 1] range
        values["psnr"].append(psnr(shown, batch.clean).double())
        values["ssim"].append(ssim(shown, batch.clean).double())
        positions.append(batch.positions)
    device = batches.device
    empty = torch.zeros(0, device=device)
    return PerImage(
        positions=torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int64, device=device),
        values={name: torch.cat(parts) if parts else empty for name, parts in values.items()},
    )


def reduce_means(result: PerImage) -> dict[str, float]:
    """Means over every rank's images: one all-reduce of [sum per metric..., count], one host read."""
    sums = [result.values[name].double().sum() for name in METRIC_NAMES]
    count = torch.tensor(float(result.positions.numel()), dtype=torch.float64, device=result.positions.device)
    totals = distributed.all_reduce_sum(torch.stack([*sums, count])).tolist()
    images = totals[-1]
    means = {name: (total / images if images else float("nan")) for name, total in zip(METRIC_NAMES, totals)}
    means["images"] = int(images)
    return means


def evaluate_split(
    model: nn.Module,
    data: Any,
    split: str,
    noise_op: Any,
    runtime: Runtime,
    *,
    noise_seed: int = 0,
    batch_size: int = 64,
    limit: int = 0,
    loss_name: str = "l1",
    placement: str = "device",
) -> dict[str, np.ndarray]:
    """Per-image results of `model` on a whole split of a prepared folder, in this process (not sharded).

    Returns numpy arrays of equal length: `row` (manifest row), `image_id`, `patient_id`, `loss`, `psnr`,
    `ssim`, plus `noisy_psnr` and `noisy_ssim` (the same metrics of the noisy input). `placement`: `device`
    (the split copied to the device once) or `stream` (read from disk batch by batch; same results).
    """
    batches = make_batches(data, split, runtime.device, batch_size, placement, limit=limit, shuffle=False)
    denoised = evaluate_batches(model, batches, noise_op, runtime, noise_seed=noise_seed, loss_name=loss_name)
    noisy = evaluate_batches(None, batches, noise_op, runtime, noise_seed=noise_seed, loss_name=loss_name)
    rows = batches.rows[denoised.positions.cpu().numpy()]
    records = data.records
    result = {
        "row": rows,
        "image_id": np.array([records[r]["image_id"] for r in rows]),
        "patient_id": np.array([records[r]["patient_id"] for r in rows]),
    }
    result.update({name: values.cpu().numpy() for name, values in denoised.values.items()})
    result.update({f"noisy_{name}": noisy.values[name].cpu().numpy() for name in ("psnr", "ssim")})
    return result
