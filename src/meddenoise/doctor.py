"""What this installation can do: devices, optional packages, LPIPS weights, free disk (`meddenoise doctor`).

Each check is a `Check(name, ok, detail)`; a failed optional check is not an error, it says which feature is
unavailable and how to enable it. `place_lpips_backbone(file)` puts torchvision's AlexNet weights where LPIPS
looks for them, after checking the file against the SHA-256 prefix that torchvision's file name carries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from meddenoise.errors import MeddenoiseError

# torchvision names its checkpoints <name>-<first 8 hex digits of the file's SHA-256>.pth
LPIPS_BACKBONE_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_BACKBONE_SHA256_PREFIX = "7be5be79"
LOW_DISK_BYTES = 2 * 1024**3

# (import name, what needs it, how to get it)
OPTIONAL_PACKAGES = (
    ("opacus", "DP-SGD (train --dp-epsilon)", "pip install opacus==1.6.0"),
    ("flwr", "federated training (meddenoise federated)", "pip install 'flwr[simulation]==1.42.0'"),
    ("ray", "federated simulation on one machine", "installed with flwr[simulation]"),
    ("bm3d", "the BM3D baseline", "pip install bm3d"),
    ("lpips", "LPIPS lin weights (alex.pth ships inside the package)", "pip install lpips"),
    ("pydicom", "DICOM input", "pip install pydicom"),
    ("matplotlib", "report figures", "pip install matplotlib"),
)


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def device_checks() -> list[Check]:
    import torch

    checks = [Check("torch", True, f"torch {torch.__version__}")]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        checks.append(Check("GPU", True, f"{len(names)} CUDA device(s): {', '.join(names)}"))
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        checks.append(
            Check(
                "GPU",
                False,
                f"no CUDA device: training runs on the CPU ({cores} usable cores, {torch.get_num_threads()} "
                "torch threads); paper-sized networks take hours per epoch there",
            )
        )
    return checks


def package_checks() -> list[Check]:
    checks = []
    for module, needed_by, how in OPTIONAL_PACKAGES:
        found = importlib.util.find_spec(module) is not None
        checks.append(Check(module, found, needed_by if found else f"missing: no {needed_by} ({how})"))
    return checks


def lpips_check() -> Check:
    from meddenoise.metrics.perceptual import lpips_status

    ok, detail = lpips_status()
    return Check("LPIPS weights", ok, detail)


def disk_checks() -> list[Check]:
    import torch

    places = {"working folder": Path.cwd(), "temporary folder": Path(tempfile.gettempdir())}
    places["torch hub cache"] = Path(torch.hub.get_dir())
    checks = []
    for label, path in places.items():
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        checks.append(
            Check(
                f"disk ({label})",
                free >= LOW_DISK_BYTES,
                f"{free / 1024**3:.1f} GiB free at {existing}"
                + ("" if free >= LOW_DISK_BYTES else " (under 2 GiB: caches and checkpoints may not fit)"),
            )
        )
    return checks


def all_checks() -> list[Check]:
    return [*device_checks(), lpips_check(), *package_checks(), *disk_checks()]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def place_lpips_backbone(
    source: str | os.PathLike, expected_prefix: str = LPIPS_BACKBONE_SHA256_PREFIX
) -> Path:
    """Copy torchvision's AlexNet weights into the torch hub cache (atomically), refusing a file whose
    SHA-256 does not start with `expected_prefix`. Returns where the file now is."""
    from meddenoise.fileio import atomic_open
    from meddenoise.metrics.perceptual import default_backbone_path

    path = Path(source)
    if not path.is_file():
        raise MeddenoiseError(f"LPIPS backbone {path}: no such file")
    digest = sha256_of(path)
    if not digest.startswith(expected_prefix):
        raise MeddenoiseError(
            f"LPIPS backbone {path}: SHA-256 {digest[:16]}... does not start with {expected_prefix}, so it "
            f"is not torchvision's {LPIPS_BACKBONE_URL.rsplit('/', 1)[-1]}; nothing was copied"
        )
    target = default_backbone_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with path.open("rb") as source_file, atomic_open(target, "wb") as target_file:
        shutil.copyfileobj(source_file, target_file, 1 << 20)
    return target
