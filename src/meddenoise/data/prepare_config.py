"""The options of `meddenoise prepare` (and of `cache.prepare`), kept free of heavy imports so that building
the command-line parser stays fast."""

from __future__ import annotations

import dataclasses

from meddenoise.config import option, print_config_option, quiet_option, seed_option
from meddenoise.data.decode import DEFAULT_MAX_PIXELS
from meddenoise.errors import ConfigError

SOURCE_CHOICES = ("default", "nih-sample", "nih", "folder")
SPLIT_BY_CHOICES = ("patient", "image")
DEFAULT_FRACTIONS = (0.50, 0.33, 0.17)
FIT_CHOICES = ("crop", "pad", "stretch")
RESIZE_FILTERS = ("lanczos", "box", "bilinear")
NORMALIZE_CHOICES = ("type", "minmax")
PATIENT_FROM_CHOICES = ("auto", "folder", "file")
# Fields that do not change the prepared images, so changing them never forces a rebuild.
RUN_ONLY_FIELDS = (
    "out",
    "strict",
    "workers",
    "quiet",
    "print_config",
    "force",
    "device",
    "allow_empty_split",
)


@dataclasses.dataclass
class PrepareConfig:
    source: str = option(
        "default",
        "where images come from: default (rendered from one public CT, no patient ids), nih-sample (real NIH "
        "ChestX-ray14 patients embedded in the package), nih (--root: the NIH release), folder (--root)",
        choices=SOURCE_CHOICES,
    )
    root: str = option("", "folder holding the images (required for nih and folder)")
    out: str = option("", "output folder for the prepared cache", required=True)
    count: int = option(0, "number of images to use, chosen with --seed (0: all; default source: 2000)")
    size: int = option(256, "side of the square output images, in pixels")
    split_by: str = option(
        "patient",
        "keep whole patients (or pose groups) in one split, or split images independently like the paper",
        choices=SPLIT_BY_CHOICES,
    )
    fractions: list[float] = option(list(DEFAULT_FRACTIONS), "train, val, test fractions (sum to 1)")
    seed: int = seed_option()  # image selection, splits and the rendered default
    fit: str = option(
        "crop",
        "how non-square images become square: centre crop, pad with black, or stretch",
        choices=FIT_CHOICES,
    )
    resize_filter: str = option("lanczos", "antialiasing filter for the resize", choices=RESIZE_FILTERS)
    normalize: str = option(
        "type",
        "intensity scaling of PNG/JPEG/TIFF: by the type's maximum (255, 65535) or "
        "stretched to each image's min..max (DICOM always uses its window)",
        choices=NORMALIZE_CHOICES,
    )
    view_position: str = option(
        "any", "NIH and nih-sample only: keep one view position", choices=("any", "PA", "AP")
    )
    nih_folders: int = option(0, "NIH only: use the first K images_0NN folders (paper: 2; 0: all)")
    csv: str = option("", "NIH only: metadata CSV (default: Data_Entry_2017[_v2020].csv in --root)")
    patient_from: str = option(
        "auto",
        "folder only: patient id from DICOM tag / NIH-style name (auto), the "
        "first sub-folder (folder) or none (file)",
        choices=PATIENT_FROM_CHOICES,
    )
    group_similar: float = option(
        0.0,
        "keep images whose matcher score reaches this threshold in one split (likely the same patient when "
        "ids are unknown; calibrate it with `meddenoise data leaks --calibrate`); 0: off",
    )
    similar_matcher: str = option(
        "auto",
        "--group-similar's matcher: auto (learned when its weights are installed, else pixel), learned, "
        "pixel, or a .safetensors file from `meddenoise data fit-matcher`; use the one the threshold was "
        "calibrated with",
    )
    similar_margin: float = option(
        0.1,
        "--group-similar also keeps pairs scoring up to this far below its threshold in one split where the "
        "train/val/test shares allow (each within 1 point of --fractions, or no further off than the joined "
        "groups left it); 0: only the joined groups move",
    )
    similar_max_shift: float = option(
        0.05,
        "--group-similar refuses when moving the joined groups would put a split's share of images further "
        "than this from --fractions",
    )
    render_option: list[str] = option([], "default source only: KEY=VALUE options of the renderer")
    device: str = option("auto", "device for rendering the default source (auto: cuda if available)")
    workers: int = option(0, "decoding processes (0: all available cores)")
    strict: bool = option(False, "fail when any image cannot be read, instead of skipping it")
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "skip images with more pixels than this, checked before decoding (Pillow's default limit; 0: none)",
    )
    allow_empty_split: bool = option(
        False, "accept a val or test split left empty (too few images or patients); train never may be"
    )
    force: bool = option(False, "rebuild even if an up-to-date cache exists")
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        if not 16 <= self.size <= 8192:
            raise ConfigError(f"size must be between 16 and 8192 pixels; got {self.size}", "size")
        for name in ("count", "workers", "nih_folders", "max_pixels"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} cannot be negative; got {getattr(self, name)}", name)
        from meddenoise.data.splits import check_fractions

        self.fractions = list(check_fractions(self.fractions))
        if self.source != "nih":
            for name, default in (("nih_folders", 0), ("csv", "")):
                if getattr(self, name) != default:
                    raise ConfigError(f"{name} applies to the nih source only", name)
        if self.source not in ("nih", "nih-sample") and self.view_position != "any":
            raise ConfigError(
                "view_position applies to the nih source only (and the embedded nih-sample)", "view_position"
            )
        if self.source in ("default", "nih-sample") and self.root:
            raise ConfigError(
                f"root does not apply to the {self.source} source: its images come with meddenoise "
                "(use the nih or folder source for images of your own)",
                "root",
            )
        if self.source != "folder" and self.patient_from != "auto":
            raise ConfigError("patient_from applies to the folder source only", "patient_from")
        if not 0.0 <= self.group_similar <= 1.0:
            raise ConfigError(
                f"group_similar is a matcher score in (0, 1]; got {self.group_similar}", "group_similar"
            )
        if not 0.0 < self.similar_max_shift <= 1.0:
            raise ConfigError(
                f"similar_max_shift must be in (0, 1]; got {self.similar_max_shift}", "similar_max_shift"
            )
        if not 0.0 <= self.similar_margin <= 1.0:
            raise ConfigError(
                f"similar_margin is a score difference in [0, 1]; got {self.similar_margin}", "similar_margin"
            )
        if self.group_similar and self.split_by == "image":
            raise ConfigError("group_similar groups images, so it needs split_by patient", "group_similar")
        if self.source != "default" and self.render_option:
            raise ConfigError("render_option applies to the default source only", "render_option")
        if self.source in ("nih", "folder") and not self.root:
            raise ConfigError(
                f"root is required for the {self.source} source: the folder that holds the images", "root"
            )
