"""What every training benchmark shares: the machine record, result files, tables, timers, FLOPs, test data.

Result files are `<results>/<benchmark>_<device kind>.json` (kind: `cpu`, `h100`, `h200`, ...), each with the
device name, torch / CUDA versions, CPU count, load averages, the settings, the date and the git commit, so a
figure can always be traced to the machine and code that produced it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# Dense (no sparsity) tensor-core peaks from the vendors' data sheets, FLOP/s: (bf16/fp16, tf32, fp32 FMA).
GPU_PEAKS = {
    "h100 sxm": (989.4e12, 494.7e12, 66.9e12),
    "h100 hbm3": (989.4e12, 494.7e12, 66.9e12),
    "h100 pcie": (756.0e12, 378.0e12, 51.2e12),
    "h100 nvl": (835.0e12, 417.0e12, 60.0e12),
    "h200": (989.4e12, 494.7e12, 66.9e12),
    "a100": (312.0e12, 156.0e12, 19.5e12),
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from meddenoise.evaluation.environment import describe_environment

    return f"CPU: {describe_environment()['cpu']}"


def device_kind(device: torch.device) -> str:
    """Short name for result files: `cpu`, `h100`, `h200`, `a100`, else the GPU name in lower case."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    match = re.search(r"\b([a-z]\d{2,4})\b", name.replace("nvidia", ""))
    return match.group(1) if match else re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def git_commit() -> str:
    """HEAD of the checkout, `+dirty` when tracked files differ from it; `unknown` without git (a copy)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if status.strip() else "")


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software a figure was measured on (hardware and versions from meddenoise's evaluation
    record, plus the device, the code version and the load at the start)."""
    from meddenoise.evaluation.environment import describe_environment

    machine = describe_environment()
    record = {
        "device": device_name(device),
        "device_kind": device_kind(device),
        "cpu": machine["cpu"],
        "cpu_count": os.cpu_count(),
        "usable_cpus": machine["cpu_cores"],
        "torch_threads": machine["torch_threads"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": machine["platform"],
        "versions": machine["versions"],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "load_average_start": [round(value, 2) for value in os.getloadavg()],
    }
    if device.type == "cuda":
        record["gpu_count"] = torch.cuda.device_count()
    return record


def write_result(
    name: str, payload: dict[str, Any], device: torch.device, out_dir: Path | None = None
) -> Path:
    """Write `<out_dir>/<name>_<device kind>.json` (atomically) with the load average at the end added."""
    from meddenoise.fileio import atomic_write_json

    payload.setdefault("environment", environment(device))
    payload["environment"]["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    path = Path(out_dir or RESULTS) / f"{name}_{device_kind(device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, payload)
    return path


def load_warning(environment_record: dict[str, Any]) -> str | None:
    """A note when other processes were using the cores (the 1-minute load above the usable CPU count)."""
    load = max(
        environment_record["load_average_start"][0], environment_record.get("load_average_end", [0])[0]
    )
    if load > environment_record["usable_cpus"]:
        return (
            f"load average {load:.1f} on {environment_record['usable_cpus']} usable CPUs: other processes "
            "shared the cores, so CPU timings are pessimistic and noisy"
        )
    return None


def settings_record(args: Any, data: str) -> dict[str, Any]:
    """A benchmark's command-line settings for its result file (paths as text, the output folder left out)."""
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    settings.pop("out_dir", None)
    settings["data"] = data
    return settings


def data_description(args: Any) -> str:
    """What a benchmark trained on: the prepared folder given, or the synthetic images it made."""
    return str(args.data) if args.data else f"synthetic {args.size}x{args.size} uint8"


def finish(
    name: str, payload: dict[str, Any], device: torch.device, out_dir: Path | None, note: str = ""
) -> Path:
    """Write the result file, say where it went, and warn when other processes shared the CPU."""
    path = write_result(name, payload, device, out_dir)
    print(f"{note}wrote {path}", flush=True)
    warning = load_warning(payload["environment"])
    if warning:
        print(f"note: {warning}", flush=True)
    return path


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain text table; `columns` are (key, heading). Floats get 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
        return "-" if value is None else str(value)

    texts = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(heading)] + [len(t[i]) for t in texts]) for i, (_, heading) in enumerate(columns)]
    lines = ["  ".join(heading.ljust(width) for (_, heading), width in zip(columns, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(text.ljust(width) for text, width in zip(row, widths)) for row in texts]
    return "\n".join(lines)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DeviceTimer:
    """Elapsed seconds of a region: CUDA events on a GPU (device time, no host round trip inside the region),
    `perf_counter` on the CPU. `stop()` waits for the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._started = time.perf_counter()

    def stop(self) -> float:
        if self.device.type == "cuda":
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1000.0
        return time.perf_counter() - self._started


def peak_flops(device: torch.device) -> dict[str, Any]:
    """The bf16 tensor-core peak of a known GPU (data sheet), or a measured fp32 matmul rate on the CPU.

    MFU is always reported against the bf16 peak on GPUs (the yardstick: 1,400 U-Net images/s is about
    half of it); on the CPU, where there is no data-sheet figure, against the measured rate of an fp32 matmul
    with the current thread count (bf16 or compiled models can exceed it: it is a yardstick, not a ceiling).
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for key, (bf16, tf32, fp32) in GPU_PEAKS.items():
            if all(part in name for part in key.split()):
                return {
                    "flops": bf16,
                    "what": f"bf16 dense tensor-core peak of the {key.upper()} data sheet",
                    "tf32": tf32,
                    "fp32": fp32,
                }
        return {"flops": measured_matmul_flops(device, torch.bfloat16), "what": "measured bf16 4096^3 matmul"}
    return {
        "flops": measured_matmul_flops(device, torch.float32),
        "what": "measured fp32 1024^3 matmul (CPU)",
    }


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, trials: int = 5) -> float:
    """The best of `trials` timings of a square matmul (the best: other processes only ever slow it down)."""
    side = 4096 if device.type == "cuda" else 1024
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    timer, repeats, best = DeviceTimer(device), 3, 0.0
    for _ in range(trials):
        timer.start()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * side**3 * repeats / timer.stop())
    return best


def training_flops_per_image(model: torch.nn.Module, loss_fn, size: int, device: torch.device) -> float:
    """Forward + backward FLOPs of one training image (torch's FlopCounterMode, batch of 2, fp32).

    Counts what the counter knows (convolutions, matrix products: 2 per multiply-add); the optimizer and
    elementwise work are not counted, as is usual for MFU.
    """
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2
    noisy = torch.rand(batch, 1, size, size, device=device)
    clean = torch.rand(batch, 1, size, size, device=device)
    model.train()
    with FlopCounterMode(display=False) as counter:
        output = model(noisy)
        heads = [output] if isinstance(output, torch.Tensor) else list(output)
        torch.stack([loss_fn(head, clean) for head in heads]).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def smooth_uint8_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """(count, size, size) uint8: a few random low-frequency cosines per image, vectorised (fast).

    Benchmarks use these where content does not matter (throughput) and the default data is not available.
    """
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    images = np.zeros((count, size, size), dtype=np.float32)
    for _ in range(3):
        frequency = rng.uniform(0.3, 2.5, size=(count, 2, 1)).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, size=(count, 1, 1)).astype(np.float32)
        rows = np.cos(2 * np.pi * frequency[:, 0:1] * grid[None, :, None] + phase)  # (count, size, 1)
        cols = np.cos(2 * np.pi * frequency[:, 1:2] * grid[None, None, :])  # (count, 1, size)
        images += rows * cols
    low, high = images.min(axis=(1, 2), keepdims=True), images.max(axis=(1, 2), keepdims=True)
    return np.round((images - low) / np.maximum(high - low, 1e-6) * 220 + 20).astype(np.uint8)


def write_synthetic_prepared(folder: Path, counts: dict[str, int], size: int, seed: int = 0) -> Path:
    """A prepared folder of smooth synthetic images with exactly `counts` images per split."""
    from meddenoise.data.cache import write_prepared
    from meddenoise.data.records import ImageRecord

    splits = [split for split, count in counts.items() for _ in range(count)]
    images = smooth_uint8_images(len(splits), size, seed)
    records = [
        ImageRecord(
            image_id=f"synthetic{i:06d}",
            patient_id=f"p{i:06d}",
            source="synthetic",
            path=f"synthetic/{i:06d}",
            group=f"p{i:06d}",
        )
        for i in range(len(splits))
    ]
    params = {"source": "synthetic-benchmark", "size": size, "seed": seed, "counts": counts}
    return write_prepared(folder, images, records, splits, params)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run a region with `count` intra-op threads (None: unchanged)."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N` -> a device, decided as the engine decides it (engine/runtime.py)."""
    from meddenoise.engine.runtime import resolve_device as engine_resolve_device

    return engine_resolve_device(name)


def print_flush(*parts: Any) -> None:
    print(*parts, flush=True)
    sys.stdout.flush()
