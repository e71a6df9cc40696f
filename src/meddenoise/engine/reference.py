"""The seed repository's way of feeding and validating a model, to measure ours against it on one machine.

`--pipeline reference`. The paper's code (github.com/Suadey/medical-image-denoising-ddp) trains
like most PyTorch denoising code does; this module reproduces those habits:

- the dataset is a `torch.utils.data.Dataset` over float32 clean AND noisy images held in host memory, the
  noise added on the host once, up front (with our noise operator in `fixed` mode, so the noisy pairs are
  exactly the ones the fast path makes on the device);
- a `DataLoader` with worker processes (4 in the paper's) and pinned memory collates each batch on the host,
  and the loop copies it to the device every step;
- the loop reads `loss.item()` every step (a host synchronisation; `Pipeline.keep_loss`);
- precision is fp32, or fp16 autocast + GradScaler for the seed's DDP+AMP mode (no bf16, channels_last or
  torch.compile; `TrainConfig.check` enforces it);
- validation runs the model batch by batch, then copies every output to the CPU and scores it one image at a
  time with scikit-image.

Kept the same as the fast path, so that only the pipeline differs: model, loss, optimizer, seed; the batches
(the epoch permutation and rank shards of `DeviceBatches`, given to the DataLoader as its batch sampler); the
SSIM definition (scikit-image with the Gaussian 11 x 11 window, i.e. `metrics.ssim`; the paper's code's 3 x 3
variant costs about the same per image). Not reproduced: the engine uses fused Adam on CUDA where the seed
code uses the default (foreach) kernel, a difference of well under a millisecond per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from meddenoise.data.loader import CleanBatch, epoch_order, global_batch_bounds, rank_part, split_rows
from meddenoise.errors import ConfigError

SEED_CODE_WORKERS = 4
# Images per noise-operator call while building the host dataset (bounds the generator's temporary memory).
NOISE_CHUNK = 256


@dataclasses.dataclass
class ReferenceBatch(CleanBatch):
    """A reference training batch: the clean batch plus the noisy copy made on the host up front."""

    noisy: torch.Tensor  # (b, 1, H, W) float32, on the device


class HostNoisyDataset(Dataset):
    """Per item `(noisy, clean, image_key, position)`: float32 (1, H, W) images from tensors in host memory.

    `position` is the image's row in the split (numbered as in `DeviceBatches`), for the coverage checks.
    """

    def __init__(self, noisy: torch.Tensor, clean: torch.Tensor, image_keys: torch.Tensor) -> None:
        if not (noisy.shape == clean.shape and noisy.shape[0] == image_keys.shape[0]):
            raise ValueError(f"noisy {tuple(noisy.shape)}, clean {tuple(clean.shape)} and keys differ")
        self.noisy, self.clean, self.image_keys = noisy, clean, image_keys

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        return self.noisy[index], self.clean[index], self.image_keys[index], index


def build_host_dataset(
    data: Any, split: str, noise_op: Any, *, noise_seed: int, limit: int = 0
) -> HostNoisyDataset:
    """Decode a split of a prepared folder to float32 in host memory and obfuscate it once, on the CPU.

    The clean conversion is the fast path's (`integer.float() / max_value`) and the noise is the operator's
    `fixed` mode with `noise_seed`, so every (noisy, clean) pair equals the one the fast path makes.
    """
    rows = split_rows(data, split, limit)
    stored = torch.from_numpy(np.ascontiguousarray(data.images[rows]))
    stored = stored.unsqueeze(1)  # (n, H, W) -> (n, 1, H, W)
    clean = stored.float().div_(float(data.max_value))
    image_keys = torch.from_numpy(data.image_keys[rows].copy())
    noisy = torch.empty_like(clean)
    for start in range(0, len(rows), NOISE_CHUNK):
        part = slice(start, start + NOISE_CHUNK)
        noisy[part] = noise_op(clean[part], image_keys[part], seed=noise_seed, mode="fixed")
    return HostNoisyDataset(noisy, clean, image_keys)


class ReferenceBatches:
    """Training batches through a `DataLoader`: worker processes, pinned memory, a device copy every step.

    The batch plan (epoch permutation, global batches, rank parts) is that of `DeviceBatches`, handed to the
    DataLoader as its batch sampler, so both pipelines train on the same images in the same order.
    """

    def __init__(
        self,
        dataset: HostNoisyDataset,
        batch_size: int,
        device: torch.device | str,
        *,
        workers: int = SEED_CODE_WORKERS,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        pin_memory: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1; got {batch_size}")
        if workers < 0:
            raise ValueError(f"DataLoader workers must be >= 0; got {workers}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.workers = workers
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.shuffle = shuffle
        # Pinned (page-locked) host memory only means something for copies to a GPU.
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def steps_per_epoch(self) -> int:
        return len(global_batch_bounds(len(self), self.batch_size * self.world_size, self.world_size))

    def plan(self, epoch: int, start_step: int = 0) -> list[tuple[list[int], int]]:
        """This rank's (dataset indices, global batch size) per step of `epoch`, from `start_step` on."""
        count = len(self)
        order = epoch_order(count, self.seed, epoch) if self.shuffle else np.arange(count, dtype=np.int64)
        steps = []
        bounds = global_batch_bounds(count, self.batch_size * self.world_size, self.world_size)
        for start, end in bounds[start_step:]:
            lo, hi = rank_part(start, end, self.rank, self.world_size)
            steps.append((order[lo:hi].tolist(), end - start))
        return steps

    def loader(self, batch_indices: list[list[int]]) -> DataLoader:
        # A new loader (and new worker processes) every epoch, as the paper's non-persistent loader does.
        return DataLoader(
            self.dataset, batch_sampler=batch_indices, num_workers=self.workers, pin_memory=self.pin_memory
        )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[ReferenceBatch]:
        steps = self.plan(epoch, start_step)
        loader = self.loader([indices for indices, _ in steps])
        for (noisy, clean, image_keys, positions), (_, global_size) in zip(loader, steps):
            move = self.pin_memory  # non-blocking copies need pinned sources to overlap with compute
            yield ReferenceBatch(
                clean=clean.to(self.device, non_blocking=move),
                image_keys=image_keys.to(self.device, non_blocking=move),
                positions=positions.to(self.device, non_blocking=move),
                global_size=global_size,
                noisy=noisy.to(self.device, non_blocking=move),
            )


def per_image_skimage_scores(prediction: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(b, 1, H, W) float32 host arrays -> PSNR and SSIM per image, float64 (b,), by scikit-image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr_values, ssim_values = [], []
    for predicted_image, clean_image in zip(prediction[:, 0], clean[:, 0]):
        with np.errstate(divide="ignore"):  # identical images: PSNR is +inf, which is what log10(1 / 0) gives
            psnr_values.append(peak_signal_noise_ratio(clean_image, predicted_image, data_range=1.0))
        ssim_values.append(
            structural_similarity(
                predicted_image,
                clean_image,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
        )
    return np.asarray(psnr_values, dtype=np.float64), np.asarray(ssim_values, dtype=np.float64)


class ReferenceValidation:
    """The paper's validation: model on the device batch by batch, then per-image PSNR / SSIM on the CPU.

    Call with the (plain or wrapped) model; returns the same dictionary as `validation.reduce_means`
    (`loss`, `psnr`, `ssim`, `images`), reduced over DDP ranks as sums and counts.
    """

    def __init__(
        self,
        dataset: HostNoisyDataset,
        batch_size: int,
        runtime: Any,
        *,
        loss_name: str = "l1",
        workers: int = SEED_CODE_WORKERS,
    ) -> None:
        self.batches = ReferenceBatches(
            dataset,
            batch_size,
            runtime.device,
            workers=workers,
            rank=runtime.rank,
            world_size=runtime.world_size,
            shuffle=False,
        )
        self.runtime = runtime
        self.loss_name = loss_name

    def shard_plan(self) -> list[list[int]]:
        """This rank's contiguous shard in batches of at most `batch_size` (as `DeviceBatches.shard`)."""
        lo, hi = rank_part(0, len(self.batches), self.batches.rank, self.batches.world_size)
        step = self.batches.batch_size
        return [list(range(start, min(start + step, hi))) for start in range(lo, hi, step)]

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        from meddenoise.engine.losses import per_image_loss
        from meddenoise.engine.validation import PerImage, reduce_means

        model.eval()
        device = self.batches.device
        positions, losses, psnr_values, ssim_values = [], [], [], []
        for noisy, clean, _, batch_positions in self.batches.loader(self.shard_plan()):
            with self.runtime.autocast():
                output = model(noisy.to(device, non_blocking=self.batches.pin_memory))
            prediction = (output if isinstance(output, torch.Tensor) else output[-1]).float()
            losses.append(per_image_loss(self.loss_name, prediction, clean.to(device)))
            shown = prediction.clamp(0.0, 1.0).cpu().numpy()  # (b, 1, H, W): a host copy and a sync per batch
            batch_psnr, batch_ssim = per_image_skimage_scores(shown, clean.numpy())
            psnr_values.append(torch.from_numpy(batch_psnr))
            ssim_values.append(torch.from_numpy(batch_ssim))
            positions.append(batch_positions)
        if not positions:  # a rank with an empty shard still joins the all-reduce
            empty = torch.zeros(0, dtype=torch.float64)
            positions = [torch.zeros(0, dtype=torch.int64)]
            losses, psnr_values, ssim_values = [empty], [empty], [empty]
        result = PerImage(
            positions=torch.cat(positions).to(device),
            values={
                "loss": torch.cat(losses).to(device),
                "psnr": torch.cat(psnr_values).to(device),
                "ssim": torch.cat(ssim_values).to(device),
            },
        )
        return reduce_means(result)


# -- `--pipeline reference`: engine.train calls these with the prepared data, the config and the runtime ----


def check_reference_config(config: Any) -> None:
    """The paper's code trains one noisy copy per image (fixed noise) against the clean image only."""
    if config.noise.mode != "fixed":
        raise ConfigError(
            "the reference pipeline adds the noise once, up front, like the paper's: use noise.mode fixed "
            "(or the fast pipeline for fresh noise)",
            "noise.mode",
        )
    if config.target != "clean":
        raise ConfigError(
            f"the reference pipeline trains the supervised 'clean' target only (the paper's); got target "
            f"{config.target}: use the fast pipeline",
            "target",
        )


def make_train_batches(data: Any, config: Any, runtime: Any, placement: str = "") -> ReferenceBatches:
    # `placement` does not apply: the paper's code's pipeline always builds a host dataset
    check_reference_config(config)
    dataset = build_host_dataset(
        data,
        config.train_split,
        config.noise.build(),
        noise_seed=config.noise.seed,
        limit=config.limit_train,
    )
    return ReferenceBatches(
        dataset,
        config.batch_size * runtime.replicas_per_process,
        runtime.device,
        workers=config.loader_workers,
        rank=runtime.rank,
        world_size=runtime.world_size,
        seed=config.seed,
    )


def make_validation(data: Any, config: Any, runtime: Any) -> Callable[[nn.Module], dict[str, float]]:
    dataset = build_host_dataset(
        data, config.val_split, config.noise.build(), noise_seed=config.noise.seed, limit=config.limit_val
    )
    return ReferenceValidation(
        dataset, config.val_batch_size, runtime, loss_name=config.loss, workers=config.loader_workers
    )
