"""One-off cross-check: meddenoise's LPIPS vs the reference `lpips` package, same random AlexNet backbone.

The ImageNet backbone cannot be downloaded here, so both sides use the backbone torchvision initialises at
random (`lpips.LPIPS(pnet_rand=True)`), copied into our module, and the real v0.1 lin weights shipped with
lpips. That checks every step of the formula (scaling, layer taps, normalisation, lin layers, averaging); only
the backbone numbers differ from production. Needs torchvision and lpips, so run it from a side environment:

    python3 -m venv /tmp/venv-tv && /tmp/venv-tv/bin/pip install torch torchvision lpips numpy
    PYTHONPATH=src /tmp/venv-tv/bin/python benchmarks/lpips_crosscheck.py

Writes benchmarks/results/lpips_crosscheck.json.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from meddenoise import __version__
from meddenoise.fileio import atomic_write_json
from meddenoise.metrics.perceptual import LPIPS, packaged_lin_path

RESULTS = Path(__file__).resolve().parent / "results"


def image_pairs(generator: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Named (pred, target) batches in [0, 1]: noise, smooth + obfuscation noise, near-identical, odd size."""
    grid = torch.linspace(0, 1, 96)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    smooth = (0.5 + 0.35 * torch.sin(9 * cols) * torch.cos(6 * rows)).expand(4, 1, 96, 96)
    noisy = (smooth + 0.1 + 0.2 * torch.randn(smooth.shape, generator=generator)).clamp(0, 1)
    uniform = torch.rand(4, 1, 64, 80, generator=generator)
    odd = torch.rand(2, 1, 131, 77, generator=generator)
    return {
        "smooth_vs_obfuscated_96": (noisy, smooth.clone()),
        "uniform_noise_64x80": (uniform, torch.rand(uniform.shape, generator=generator)),
        "near_identical_96": (
            smooth + 0.001 * torch.randn(smooth.shape, generator=generator),
            smooth.clone(),
        ),
        "odd_size_131x77": (odd, (odd + 0.05 * torch.randn(odd.shape, generator=generator)).clamp(0, 1)),
    }


def main() -> None:
    import lpips
    import torchvision

    torch.manual_seed(0)
    reference = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    backbone_state = {}
    for slice_index in range(1, 6):
        for key, value in getattr(reference.net, f"slice{slice_index}").state_dict().items():
            backbone_state[f"features.{key}"] = value  # slice keys keep torchvision's feature indices
    ours = LPIPS()
    ours.backbone.load_torchvision_state(backbone_state, "reference backbone")
    lin_path = packaged_lin_path()
    ours.load_lin_state(torch.load(lin_path, map_location="cpu", weights_only=True), str(lin_path))

    generator = torch.Generator().manual_seed(1)
    cases = {}
    worst_abs = worst_rel = 0.0
    with torch.no_grad():
        for name, (pred, target) in image_pairs(generator).items():
            expected = reference(pred, target, normalize=True).view(-1)
            got = ours(pred, target)
            abs_diff = float((got - expected).abs().max())
            rel_diff = float(((got - expected).abs() / expected.abs().clamp_min(1e-12)).max())
            worst_abs, worst_rel = max(worst_abs, abs_diff), max(worst_rel, rel_diff)
            cases[name] = {
                "images": int(pred.shape[0]),
                "shape": list(pred.shape[1:]),
                "reference": [float(v) for v in expected],
                "meddenoise": [float(v) for v in got],
                "max_abs_diff": abs_diff,
                "max_rel_diff": rel_diff,
            }
            print(f"{name:<28} max |diff| {abs_diff:.2e}  max rel {rel_diff:.2e}  values {expected.tolist()}")
    tolerance = {"abs": 1e-6, "rel": 1e-5}
    passed = worst_abs <= tolerance["abs"] or worst_rel <= tolerance["rel"]
    payload = {
        "check": "lpips_crosscheck",
        "what": "meddenoise LPIPS vs lpips.LPIPS(net='alex', version='0.1') with the same random AlexNet "
        "backbone (pnet_rand=True, seed 0) and the packaged v0.1 lin weights; inputs in [0, 1] "
        "(reference called with normalize=True)",
        "cases": cases,
        "max_abs_diff": worst_abs,
        "max_rel_diff": worst_rel,
        "tolerance": tolerance,
        "passed": passed,
        "versions": {
            "meddenoise": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lpips": getattr(lpips, "__version__", "unknown"),
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = RESULTS / "lpips_crosscheck.json"
    atomic_write_json(out, payload)
    print(
        f"{'PASSED' if passed else 'FAILED'}: worst abs {worst_abs:.2e}, worst rel {worst_rel:.2e}; "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
