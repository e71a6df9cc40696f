"""LPIPS (AlexNet trunk, version 0.1), computed exactly as the reference `lpips` package computes it.

    d(x, y) = sum over layers l of  mean over (h, w) of  sum over channels c of  w_lc (x^_lhwc - y^_lhwc)^2

where x^_l are AlexNet's relu1..relu5 activations of the input, each unit-normalised along channels (`f /
(||f||_2 + 1e-10)`), and w_l are the package's non-negative 1x1 "lin" weights. Inputs in [0, 1] are scaled to
[-1, 1], grayscale is repeated to three channels, then the package's ScalingLayer maps them to ImageNet
statistics.

Two weight files are needed and neither can be downloaded here:
- the AlexNet backbone (torchvision's `alexnet-owt-7be5be79.pth`): argument `backbone_path`, else the
  environment variable MEDDENOISE_LPIPS_BACKBONE, else
  `torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth`;
- the lin weights (`lpips/weights/v0.1/alex.pth`, shipped inside the `lpips` package): argument `lin_path`,
  else MEDDENOISE_LPIPS_LIN, else the installed `lpips` package's data, located without importing it
  (importing lpips imports torchvision).

When a file is missing, `lpips_status()` returns (False, reason) and `LPIPS.from_pretrained` raises
`MetricUnavailable(reason)`: evaluation must then report LPIPS as unavailable with that reason, never a
number.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from meddenoise.errors import MeddenoiseError
from meddenoise.metrics.alexnet import TAP_CHANNELS, AlexNetFeatures

BACKBONE_FILENAME = "alexnet-owt-7be5be79.pth"
BACKBONE_ENV = "MEDDENOISE_LPIPS_BACKBONE"
LIN_ENV = "MEDDENOISE_LPIPS_LIN"
# The lpips package's ScalingLayer: (x - shift) / scale turns [-1, 1] inputs into ImageNet-normalised ones.
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
NORMALIZE_EPS = 1e-10
# Smallest side for which AlexNet's second max-pool still has a full 3 x 3 input.
MIN_SIDE = 31


class MetricUnavailable(MeddenoiseError):
    """A metric cannot be computed here (e.g. missing weights); the message is the reason to report."""


def default_backbone_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILENAME


def packaged_lin_path() -> Path | None:
    """`lpips/weights/v0.1/alex.pth` of the installed lpips package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "alex.pth"


BACKBONE_HINT = (
    f"get {BACKBONE_FILENAME} from https://download.pytorch.org/models/ (SHA-256 starts with 7be5be79) and "
    "run `meddenoise doctor --place-lpips FILE`, or pass --lpips-weights FILE"
)


def _resolve(
    explicit: str | os.PathLike | None, env_var: str, fallback: Path | None, what: str, hint: str = ""
) -> Path:
    if explicit is not None:
        path, origin = Path(explicit), "given path"
    elif os.environ.get(env_var):
        path, origin = Path(os.environ[env_var]), f"${env_var}"
    elif fallback is not None:
        path, origin = fallback, "default location"
    else:
        raise MetricUnavailable(f"LPIPS unavailable: no {what} found; set {env_var} to its path")
    if not path.is_file():
        raise MetricUnavailable(
            f"LPIPS unavailable: {what} not found at {path} ({origin}); "
            f"place the file there or set {env_var} to its path" + (f"; {hint}" if hint else "")
        )
    return path


def resolve_weight_paths(
    backbone_path: str | os.PathLike | None = None, lin_path: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """(backbone, lin) weight files, or MetricUnavailable naming the missing one and how to provide it."""
    backbone = _resolve(
        backbone_path,
        BACKBONE_ENV,
        default_backbone_path(),
        f"AlexNet backbone weights ({BACKBONE_FILENAME})",
        BACKBONE_HINT,
    )
    lin = _resolve(lin_path, LIN_ENV, packaged_lin_path(), "LPIPS v0.1 lin weights (lpips package, alex.pth)")
    return backbone, lin


def lpips_status(
    backbone_path: str | os.PathLike | None = None, lin_path: str | os.PathLike | None = None
) -> tuple[bool, str]:
    """(True, where the weights are) or (False, why LPIPS cannot be computed). Cheap: checks files only."""
    try:
        backbone, lin = resolve_weight_paths(backbone_path, lin_path)
    except MetricUnavailable as exc:
        return False, str(exc)
    return True, f"LPIPS (AlexNet, v0.1) with backbone {backbone} and lin weights {lin}"


lpips_available = lpips_status


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    from meddenoise.errors import MeddenoiseError
    from meddenoise.safe_load import load_plain

    try:
        state = load_plain(path, what)
    except MeddenoiseError as exc:  # a corrupt or foreign file
        raise MetricUnavailable(f"LPIPS unavailable: {exc}") from None
    if not isinstance(state, dict):
        raise MetricUnavailable(f"LPIPS unavailable: {what} {path} is not a state dict")
    return state


class LPIPS(nn.Module):
    """LPIPS distance per image: (pred, target) (B, 1 or 3, H, W) in [0, 1] -> (B,) float32.

    Build with `LPIPS.from_pretrained()` for the real metric; `LPIPS()` has random backbone weights and zero
    lin weights, for tests.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = AlexNetFeatures()
        self.lins = nn.ModuleList(
            nn.Conv2d(channels, 1, kernel_size=1, bias=False) for channels in TAP_CHANNELS
        )
        for lin in self.lins:
            nn.init.zeros_(lin.weight)
        self.register_buffer("shift", torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALING_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(
        cls,
        backbone_path: str | os.PathLike | None = None,
        lin_path: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
    ) -> LPIPS:
        backbone_file, lin_file = resolve_weight_paths(backbone_path, lin_path)
        module = cls()
        try:
            module.backbone.load_torchvision_state(_load_state(backbone_file, "backbone"), str(backbone_file))
            module.load_lin_state(_load_state(lin_file, "lin weights"), str(lin_file))
        except ValueError as exc:
            raise MetricUnavailable(f"LPIPS unavailable: {exc}") from None
        return module.to(device) if device is not None else module

    def load_lin_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load the lpips package's `lin{k}.model.1.weight` tensors (k = 0..4); they must be non-negative."""
        for index, lin in enumerate(self.lins):
            key = f"lin{index}.model.1.weight"
            if key not in state:
                raise ValueError(f"{source} is not an LPIPS AlexNet lin file: missing {key}")
            weight = state[key]
            if tuple(weight.shape) != tuple(lin.weight.shape):
                raise ValueError(
                    f"{source}: {key} has shape {tuple(weight.shape)}, expected {tuple(lin.weight.shape)}"
                )
            if bool((weight < 0).any()):
                raise ValueError(
                    f"{source}: {key} has negative weights; LPIPS v0.1 lin weights are non-negative"
                )
            with torch.no_grad():
                lin.weight.copy_(weight)

    def _to_network_input(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS expects (B, 1 or 3, H, W) images, got {tuple(images.shape)}")
        if min(images.shape[-2:]) < MIN_SIDE:
            raise MeddenoiseError(
                f"LPIPS (AlexNet) needs images of at least {MIN_SIDE} x {MIN_SIDE} pixels, "
                f"got {images.shape[-2]} x {images.shape[-1]}"
            )
        images = images.to(self.shift.dtype)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # (B, 1, H, W) -> (B, 3, H, W)
        return (images * 2 - 1 - self.shift) / self.scale

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(
                f"LPIPS: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
            )
        features_pred = self.backbone(self._to_network_input(pred))
        features_target = self.backbone(self._to_network_input(target))
        distance = torch.zeros(pred.shape[0], dtype=self.shift.dtype, device=pred.device)
        for lin, a, b in zip(self.lins, features_pred, features_target):
            difference = (_unit_normalize(a) - _unit_normalize(b)) ** 2  # (B, C_l, h_l, w_l)
            distance = distance + lin(difference).mean(dim=(1, 2, 3))  # (B, 1, h_l, w_l) -> (B,)
        return distance


def _unit_normalize(features: torch.Tensor) -> torch.Tensor:
    norm = torch.sqrt(torch.sum(features**2, dim=1, keepdim=True))
    return features / (norm + NORMALIZE_EPS)


def load_lpips_or_reason(
    backbone_path: str | os.PathLike | None = None,
    lin_path: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> tuple[LPIPS | None, str]:
    """(module, description) when LPIPS can be computed, else (None, reason): for evaluation code."""
    try:
        module = LPIPS.from_pretrained(backbone_path, lin_path, device)
    except MetricUnavailable as exc:
        return None, str(exc)
    return module, lpips_status(backbone_path, lin_path)[1]


__all__ = [
    "LPIPS",
    "MetricUnavailable",
    "default_backbone_path",
    "load_lpips_or_reason",
    "lpips_available",
    "lpips_status",
    "packaged_lin_path",
    "resolve_weight_paths",
]
