"""A learned patient-similarity embedding: a small CNN trained so that images of one patient lie close.

The pixel matcher (`privacy.matcher.Matcher`) compares images as pictures; two studies of one patient taken
months apart differ in pose, exposure and devices, so it finds few of them. Packhaeuser et al. 2022 (Sci Rep
12:14851) re-identify ChestX-ray14 patients with a siamese network (verification AUC 0.994 with ~30,000
patients). This module is the same idea at the size this toolkit ships: a ~170k-parameter CNN on 64 x 64
inputs, trained with a supervised contrastive loss (SupCon, Khosla et al. 2020) on images with known patient
ids, with the paper's obfuscation (mean 0.1, std 0.1..0.3, clamped) among its augmentations so that it also
matches released (noisy) images.

`LearnedMatcher.features` has the matcher's signature ((B, 1, H, W) -> (B, D) unit vectors), so linkage,
re-identification, `data leaks` and `prepare --group-similar` use either matcher unchanged. The shipped
weights (`weights/reid_nih64.safetensors`) were fitted on the embedded NIH sample's patients with an EVEN
patient id only; every figure measured on the sample uses the other patients (`fitted_rows`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meddenoise.errors import ConfigError

INPUT_SIZE = 64
EMBEDDING_DIM = 64
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "reid_nih64.safetensors"
METADATA_KEY = "meddenoise_reid"
# Patient ids of these sources are NIH ChestX-ray14 ids: the shipped weights' fitting patients may be in them.
NIH_SOURCES = ("nih-sample", "nih")
MATCHER_CHOICES_HELP = (
    "auto (learned when its weights are installed, else pixel), learned, pixel, or a .safetensors file"
)


class EmbeddingNet(nn.Module):
    """(B, 1, H, W) images in [0, 1] -> (B, EMBEDDING_DIM) unit vectors. A pure module (no I/O, no device)."""

    def __init__(self, width: int = 16, dim: int = EMBEDDING_DIM) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            return [conv, nn.GroupNorm(4, cout), nn.ReLU(inplace=True)]

        w = width
        self.body = nn.Sequential(
            *block(1, w, 2),  # 64 -> 32 (a strided first layer: CPU-trainable in minutes)
            *block(w, 2 * w, 2),  # 32 -> 16
            *block(2 * w, 2 * w, 1),
            *block(2 * w, 4 * w, 2),  # 16 -> 8
            *block(4 * w, 4 * w, 1),
            *block(4 * w, 4 * w, 2),  # 8 -> 4
        )
        # Flattening the 4 x 4 map (not global pooling) keeps where anatomy lies, which identifies a patient.
        self.head = nn.Linear(4 * w * 16, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = standardise(resize_input(images.float()))  # (B, 1, 64, 64), zero mean, unit std per image
        x = self.body(x).flatten(1)  # (B, 4w, 4, 4) -> (B, 16 * 4w)
        return F.normalize(self.head(x), dim=1)


def resize_input(images: torch.Tensor) -> torch.Tensor:
    """Any (B, 1, H, W) -> (B, 1, 64, 64): area averaging when larger (it also averages noise away)."""
    if images.shape[-2:] == (INPUT_SIZE, INPUT_SIZE):
        return images
    if min(images.shape[-2:]) >= INPUT_SIZE:
        return F.adaptive_avg_pool2d(images, (INPUT_SIZE, INPUT_SIZE))
    return F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


def standardise(images: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean and unit std: exposure, the noise's mean 0.1 and gain do not identify anyone."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (images - mean) / std


@dataclasses.dataclass
class LearnedMatcher:
    """The embedding as a matcher: `features` maps (B, 1, H, W) images to (B, D) unit vectors."""

    net: EmbeddingNet
    metadata: dict[str, Any]
    path: str = ""
    kind: str = "learned"

    @property
    def dim(self) -> int:
        return int(self.net.head.out_features)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"matcher expects (B, 1, H, W) images, got {tuple(images.shape)}")
        self.net.to(images.device).eval()
        with torch.inference_mode():
            return self.net(images).clone()

    @property
    def fitting_patients(self) -> set[str]:
        return {str(p) for p in self.metadata.get("fitting", {}).get("patients", [])}

    def describe(self) -> dict[str, Any]:
        fitting = self.metadata.get("fitting", {})
        return {
            "kind": "learned patient embedding (small CNN, supervised contrastive)",
            "weights": self.path,
            "fitting_source": fitting.get("source", ""),
            "fitting_rule": fitting.get("rule", ""),
            "fitting_patients": len(fitting.get("patients", [])),
            "measured": self.metadata.get("measured", {}),
        }


def fitted_rows(matcher: Any, records: Sequence[dict], source: str = "") -> np.ndarray:
    """(N,) bool: rows whose patient the learned matcher was fitted on, so scoring them would flatter it.

    Only ids of the same id space count: the shipped weights were fitted on NIH ChestX-ray14 ids, so rows of
    the NIH sources with those ids are flagged; a user's fitted file records its own source.
    """
    fitting = getattr(matcher, "fitting_patients", set())
    if not fitting:
        return np.zeros(len(records), dtype=bool)
    fit_source = str(getattr(matcher, "metadata", {}).get("fitting", {}).get("source", ""))
    same_space = (source in NIH_SOURCES and fit_source in NIH_SOURCES) or (source == fit_source)
    if not same_space:
        return np.zeros(len(records), dtype=bool)
    return np.array([str(row["patient_id"]) in fitting for row in records], dtype=bool)


def resolve_matcher(spec: str = "auto", *, pixel: Any = None) -> Any:
    """'pixel' -> the pixel matcher; 'learned' -> the shipped weights; a path -> that file; 'auto' -> learned
    when the shipped weights are installed, else pixel."""
    from meddenoise.privacy.matcher import Matcher

    pixel = pixel or Matcher()
    if spec == "pixel":
        return pixel
    if spec == "auto":
        return load_matcher(SHIPPED_WEIGHTS) if SHIPPED_WEIGHTS.is_file() else pixel
    if spec == "learned":
        if not SHIPPED_WEIGHTS.is_file():
            raise ConfigError(
                f"the learned matcher's weights are not installed ({SHIPPED_WEIGHTS}); fit your own with "
                "`meddenoise data fit-matcher DIR --out FILE` and pass FILE, or use pixel"
            )
        return load_matcher(SHIPPED_WEIGHTS)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"matcher {spec!r} is neither {MATCHER_CHOICES_HELP} nor an existing file")
    return load_matcher(path)


def matcher_info(matcher: Any) -> dict[str, Any]:
    if isinstance(matcher, LearnedMatcher):
        return matcher.describe()
    return {"kind": "pixel: area-downsample + gaussian blur + NCC", **dataclasses.asdict(matcher)}


def matcher_name(matcher: Any) -> str:
    return "learned" if isinstance(matcher, LearnedMatcher) else "pixel"


# --- weights on disk --------------------------------------------------------------------------------------


def save_matcher(matcher: LearnedMatcher, path: str | Path) -> Path:
    from safetensors.torch import save

    from meddenoise.fileio import atomic_open

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # float16 halves the file (~340 KB); the embedding's cosines change by < 1e-3
    state = matcher.net.state_dict()
    tensors = {key: value.detach().cpu().to(torch.float16).contiguous() for key, value in state.items()}
    metadata = {METADATA_KEY: json.dumps(matcher.metadata, sort_keys=True)}
    with atomic_open(path, "wb") as handle:
        handle.write(save(tensors, metadata=metadata))
    return path


def load_matcher(path: str | Path) -> LearnedMatcher:
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
            state = {key: handle.get_tensor(key).float() for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # a corrupt or foreign file: say which and what to do
        raise ConfigError(
            f"{path} is not a meddenoise matcher file ({error}); fit one with `meddenoise data fit-matcher`"
        ) from error
    if not metadata:
        raise ConfigError(
            f"{path} has no '{METADATA_KEY}' metadata: not written by `meddenoise data fit-matcher`"
        )
    arch = metadata.get("architecture", {})
    net = EmbeddingNet(width=int(arch.get("width", 16)), dim=int(arch.get("dim", EMBEDDING_DIM)))
    net.load_state_dict(state)
    net.eval()
    return LearnedMatcher(net=net, metadata=metadata, path=str(path))


# --- fitting ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitSettings:
    steps: int = 1500
    patients_per_batch: int = 48
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    noise_probability: float = 0.6  # share of views obfuscated (mean 0.1, std U(0.1, 0.3), clamped)
    noise_mean: float = 0.1
    noise_std_range: tuple[float, float] = (0.1, 0.3)
    max_shift: float = 0.06  # of the image side
    seed: int = 0
    width: int = 16


def augment(images: torch.Tensor, settings: FitSettings, generator: torch.Generator) -> torch.Tensor:
    """Small shift / scale / rotation, gain and gamma, then (with `noise_probability`) the obfuscation.

    No left-right flips: the heart's side identifies the orientation, and real studies are never mirrored.
    """
    b = images.shape[0]

    def uniform(low: float, high: float, shape=(b,)) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    angle = uniform(-0.08, 0.08)  # radians (about +-5 degrees)
    scale = uniform(0.92, 1.08)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = uniform(-2 * settings.max_shift, 2 * settings.max_shift, (b, 2))
    rows = [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)]
    theta = torch.stack(rows, 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, padding_mode="border", align_corners=False)  # (B, 1, H, W)
    gamma = torch.exp(uniform(-0.25, 0.25)).view(b, 1, 1, 1)
    gain = uniform(0.85, 1.15).view(b, 1, 1, 1)
    out = (out.clamp(0, 1) ** gamma * gain + uniform(-0.05, 0.05).view(b, 1, 1, 1)).clamp(0, 1)
    noisy = torch.rand(b, generator=generator) < settings.noise_probability
    std = uniform(*settings.noise_std_range).view(b, 1, 1, 1)
    noise = settings.noise_mean + std * torch.randn(out.shape, generator=generator)
    return torch.where(noisy.view(b, 1, 1, 1), (out + noise).clamp(0, 1), out)


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss of (B, D) unit vectors: each view's positives are the other views of the
    same patient, all other views are negatives."""
    logits = embeddings @ embeddings.t() / temperature  # (B, B)
    eye = torch.eye(len(labels), dtype=torch.bool)
    logits = logits.masked_fill(eye, -1e9)
    positive = (labels.view(-1, 1) == labels.view(1, -1)) & ~eye
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = (log_prob * positive).sum(1) / positive.sum(1).clamp_min(1)
    return -per_anchor[positive.any(1)].mean()


def fit_embedding(
    images: np.ndarray,
    patients: Sequence[str],
    settings: FitSettings = FitSettings(),
    *,
    start: LearnedMatcher | None = None,
    log: Any = None,
    device: str | torch.device = "cpu",
) -> EmbeddingNet:
    """Fit (or fine-tune `start`) on clean images (N, H, W) in [0, 1] with their patient ids.

    Each step draws `patients_per_batch` patients (those with several images twice as often), two images of
    each (one image twice for a patient with one image), and one augmented view of each: positives are the
    same patient, everything else in the batch is a negative.
    """
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    pixels = resize_input(torch.as_tensor(np.asarray(images), dtype=torch.float32).unsqueeze(1))
    by_patient: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        by_patient.setdefault(str(patient), []).append(index)
    names = sorted(by_patient)
    if sum(1 for name in names if len(by_patient[name]) > 1) < 2:
        raise ConfigError("fitting a patient matcher needs at least 2 patients with 2 or more images each")
    weight = np.array([2.0 if len(by_patient[name]) > 1 else 1.0 for name in names])
    weight /= weight.sum()
    net = EmbeddingNet(width=settings.width) if start is None else start.net
    net.to(device).train()
    optimiser = torch.optim.AdamW(
        net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    per_batch = min(settings.patients_per_batch, len(names))
    for step in range(settings.steps):
        lr = settings.learning_rate * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        chosen = rng.choice(len(names), size=per_batch, replace=False, p=weight)
        rows, labels = [], []
        for label, patient_index in enumerate(chosen):
            own = by_patient[names[patient_index]]
            pair = rng.choice(own, size=2, replace=len(own) < 2)
            rows.extend(int(r) for r in pair)
            labels.extend([label, label])
        # augmentation draws on the CPU generator, so a fit is the same stream on any device
        batch = augment(pixels[rows], settings, generator).to(device)  # (2P, 1, 64, 64)
        loss = supcon_loss(net(batch).cpu(), torch.tensor(labels), settings.temperature)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if log is not None and (step % 100 == 0 or step == settings.steps - 1):
            log(f"step {step:5d}/{settings.steps}  loss {loss.item():.4f}")
    net.cpu().eval()
    return net


def fit_matcher(
    images: np.ndarray,
    patients: Sequence[str],
    *,
    settings: FitSettings = FitSettings(),
    start: LearnedMatcher | None = None,
    fitting: dict[str, Any] | None = None,
    log: Any = None,
    device: str | torch.device = "cpu",
) -> LearnedMatcher:
    """`fit_embedding` wrapped as a matcher whose metadata says how and on whom it was fitted."""
    started = time.perf_counter()
    net = fit_embedding(images, patients, settings, start=start, log=log, device=device)
    settings_dict = dataclasses.asdict(settings)
    metadata = {
        "format": 1,
        "architecture": {
            "name": "EmbeddingNet",
            "width": settings.width,
            "dim": EMBEDDING_DIM,
            "input": INPUT_SIZE,
        },
        "training": {
            **settings_dict,
            "loss": "supervised contrastive",
            "seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
            "device": str(device),
            "fine_tuned_from": start.path if start is not None else "",
        },
        "fitting": {
            "images": int(len(patients)),
            "patients": sorted({str(p) for p in patients}),
            **(fitting or {}),
        },
        "measured": {},
    }
    return LearnedMatcher(net=net, metadata=metadata)


def reid_at_1(features: torch.Tensor, patients: Sequence[str]) -> tuple[float, int]:
    """Share of images (whose patient has another image) whose nearest other image is the same patient."""
    from meddenoise.privacy.matcher import top_matches

    counts: dict[str, int] = {}
    for p in patients:
        counts[p] = counts.get(p, 0) + 1
    eligible = [i for i, p in enumerate(patients) if counts[p] > 1]
    if not eligible:
        return math.nan, 0
    nearest = top_matches(features, features, 1, exclude=torch.arange(len(patients)))[:, 0].tolist()
    hits = [patients[nearest[i]] == patients[i] for i in eligible]
    return float(np.mean(hits)), len(eligible)
