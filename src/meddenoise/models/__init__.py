"""Denoisers as pure modules, built by name: `build_model("unet", base_channels=64, **options)`.

Every model maps (B, 1, H, W) in [0, 1] to (B, 1, H, W), for any H and W. Importing this package registers
the built-in models (U-Net, U-Net++, DnCNN).
"""

from meddenoise.models import dncnn as _dncnn  # noqa: F401  (registers "dncnn")
from meddenoise.models import unet as _unet  # noqa: F401  (registers "unet")
from meddenoise.models import unetpp as _unetpp  # noqa: F401  (registers "unetpp")
from meddenoise.models.layers import Denoiser, count_parameters, pad_to_multiple
from meddenoise.models.registry import build_model, get_model_entry, list_models, register_model
from meddenoise.models.summary import model_summary
from meddenoise.models.tiling import denoise_tiled
from meddenoise.models.unetpp import mean_loss_over_heads

__all__ = [
    "Denoiser",
    "build_model",
    "count_parameters",
    "denoise_tiled",
    "get_model_entry",
    "list_models",
    "mean_loss_over_heads",
    "model_summary",
    "pad_to_multiple",
    "register_model",
]
