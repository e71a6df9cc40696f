"""What a result was measured on: hardware and library versions, recorded next to every evaluation and
grid."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

LIBRARIES = ("torch", "numpy", "scipy", "scikit-image", "bm3d", "lpips", "pydicom", "matplotlib")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def describe_environment() -> dict[str, Any]:
    """Hardware (CPU, cores, GPUs) and versions of Python, meddenoise and the libraries that shape results."""
    import torch

    from meddenoise import __version__

    versions = {"python": sys.version.split()[0], "meddenoise": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_cores": _usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "versions": versions,
    }


def describe_hardware(environment: dict[str, Any]) -> str:
    gpus = environment.get("gpus") or []
    gpu_text = f"{len(gpus)} GPU(s): {', '.join(gpus)} (CUDA {environment.get('cuda')})" if gpus else "no GPU"
    return (
        f"{environment.get('cpu', 'unknown CPU')}, {environment.get('cpu_cores', '?')} usable cores "
        f"({environment.get('torch_threads', '?')} torch threads), {gpu_text}; "
        f"{environment.get('platform', '')}"
    )
