"""The one place that decides where and how training runs: device, rank, precision, loss scaling, wrapping.

Everything else asks the `Runtime`: the loop calls `runtime.autocast()` (a no-op when AMP is off), uses
`runtime.scaler` (a no-op unless fp16), and trains `runtime.wrap(model)` (DataParallel / DDP applied last,
after channels_last, SyncBatchNorm and torch.compile). Checkpoints hold `unwrap(model)`, the plain module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import torch
from torch import nn

from meddenoise.engine import distributed
from meddenoise.errors import ConfigError, MeddenoiseError

STRATEGIES = ("single", "dp", "ddp")
AMP_CHOICES = ("auto", "off", "fp16", "bf16")
# Opacus's wrappers (matched by name: opacus is an optional extra and is imported only for DP-SGD).
_OPACUS_WRAPPERS = ("GradSampleModule", "DifferentiallyPrivateDistributedDataParallel")
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclasses.dataclass
class Runtime:
    device: torch.device
    strategy: str = "single"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    amp: str = "off"  # resolved: off | fp16 | bf16
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    dp_device_ids: list[int] = dataclasses.field(default_factory=list)
    scaler: Any = None

    def __post_init__(self) -> None:
        if self.scaler is None:
            # Loss scaling only matters for fp16 (bf16 has fp32's exponent range); else a pass-through.
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def replicas_per_process(self) -> int:
        """How many devices one process feeds: the GPUs of DataParallel, else 1."""
        return max(1, len(self.dp_device_ids)) if self.strategy == "dp" else 1

    @property
    def data_parallel_width(self) -> int:
        """Devices that each take `batch_size` images per step (the global batch is batch_size x this)."""
        return self.world_size * self.replicas_per_process

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.amp])

    def to_device_batch(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def place(self, model: nn.Module) -> nn.Module:
        """The plain module on the device, in its memory format, with SyncBatchNorm if asked (unwrapped)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.sync_bn and self.strategy == "ddp":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def wrap(self, model: nn.Module, private: bool = False) -> nn.Module:
        """What the loop calls: compile, then DataParallel / DDP last. Checkpoints use `unwrap(...)` of it.

        `private` (DP-SGD): Opacus's per-sample-gradient module instead, over its DDP wrapper (which only
        broadcasts the initial weights: its optimizer sums the clipped, noised gradients over ranks)."""
        if private:
            from opacus import GradSampleModule
            from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

            if self.strategy == "ddp":
                model = DifferentiallyPrivateDistributedDataParallel(model)
            return GradSampleModule(model, loss_reduction="mean")
        if self.compile:
            model = torch.compile(model)
        if self.strategy == "dp":
            return nn.DataParallel(model, device_ids=self.dp_device_ids or None)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # A pruned U-Net++ leaves parameters without gradients; DDP must then look for them every step.
            every_parameter_used = getattr(unwrap(model), "trains_all_parameters", True)
            # Bigger gradient buckets mean fewer all-reduce launches (25 MB is torch's default).
            return DistributedDataParallel(
                model,
                device_ids=device_ids,
                bucket_cap_mb=50,
                find_unused_parameters=not every_parameter_used,
            )
        return model

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_mb(self) -> float:
        """Peak CUDA memory allocated since the last reset, or the process's peak resident memory on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        except (ImportError, OSError):  # pragma: no cover - non-POSIX
            return float("nan")

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        parts = [f"device={self.device}", f"strategy={self.strategy}", f"amp={self.amp}"]
        if self.strategy == "ddp":
            parts.append(f"rank={self.rank}/{self.world_size}")
        if self.strategy == "dp":
            parts.append(f"dp_devices={self.replicas_per_process}")
        return " ".join(parts)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DataParallel / DDP and torch.compile (whose state dicts carry prefixes)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ in _OPACUS_WRAPPERS:
            model = model._module if hasattr(model, "_module") else model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` (DP/DDP) and `_orig_mod.` (compile) prefixes a wrapped module's state dict has."""
    cleaned = {}
    for key, value in state.items():
        while key.startswith(("module.", "_orig_mod.", "_module.")):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N", "device"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name}: CUDA is not available here; use device cpu", "device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible", "device"
            )
    return device


def resolve_amp(amp: str, device: torch.device) -> str:
    if amp == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "off"
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("amp bf16: this GPU has no bf16 support; use amp fp16 (with loss scaling)", "amp")
    return amp


def build_runtime(
    *,
    strategy: str = "single",
    device: str = "auto",
    amp: str = "off",
    channels_last: bool = False,
    compile: bool = False,
    sync_bn: bool = False,
    dist_timeout: float = distributed.DEFAULT_TIMEOUT_SECONDS,
) -> Runtime:
    """Decide the runtime from the options; under `ddp` this joins the process group (torchrun env), waiting
    at most `dist_timeout` seconds for it and for each later collective."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}", "strategy")
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_CHOICES)}; got {amp!r}", "amp")
    chosen = resolve_device(device)
    options = {"compile": compile, "sync_bn": sync_bn and strategy == "ddp"}
    if strategy == "ddp":
        place = distributed.place_from_env()
        if chosen.type == "cuda":
            if place.local_rank >= torch.cuda.device_count():
                raise MeddenoiseError(
                    f"LOCAL_RANK={place.local_rank} but only {torch.cuda.device_count()} GPU(s) are "
                    "visible on this node; use torchrun's `--nproc_per_node` (or nproc) at most the number "
                    "of GPUs",
                    parameter="nproc",
                )
            chosen = torch.device("cuda", place.local_rank)
            torch.cuda.set_device(chosen)
        elif sync_bn:
            raise ConfigError(
                "sync_bn needs CUDA devices (SyncBatchNorm does not run on CPU); turn sync_bn off", "sync_bn"
            )
        distributed.init_process_group(chosen, place, dist_timeout)
        return Runtime(
            chosen,
            "ddp",
            place.rank,
            place.local_rank,
            place.world_size,
            resolve_amp(amp, chosen),
            channels_last=channels_last and chosen.type == "cuda",
            **options,
        )
    dp_ids: list[int] = []
    if strategy == "dp" and chosen.type == "cuda":
        dp_ids = list(range(torch.cuda.device_count()))
        if len(dp_ids) < 2:
            raise MeddenoiseError(
                f"the dp strategy needs at least 2 visible GPUs, found {len(dp_ids)}; use strategy single",
                parameter="strategy",
            )
        chosen = torch.device("cuda", dp_ids[0])  # DataParallel keeps the master copy on the first device
    return Runtime(
        chosen,
        strategy,
        amp=resolve_amp(amp, chosen),
        channels_last=channels_last and chosen.type == "cuda",
        dp_device_ids=dp_ids,
        **options,
    )


def default_process_count(device: str) -> int:
    """DDP processes to launch on this node when --nproc is 0: one per visible GPU, else 2 CPU processes."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2


def set_cpu_threads_from_env() -> None:
    """Respect OMP_NUM_THREADS for torch's intra-op pool (torchrun workers default to one thread each)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
