"""The prepared-folder format: write_prepared / load_prepared; incomplete or altered folders are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meddenoise.data.cache import load_prepared, write_prepared
from meddenoise.data.manifest import MANIFEST_COLUMNS, PreparedWriter
from meddenoise.data.records import ImageRecord, image_key
from meddenoise.errors import DataError


def test_fixture_folder_round_trips(make_prepared):
    folder = make_prepared(n=24, size=32, patients=8)
    data = load_prepared(folder)
    assert data.images.shape == (24, 32, 32) and data.images.dtype == np.uint8
    assert isinstance(data.images, np.memmap)
    assert list(data.records[0])[: len(MANIFEST_COLUMNS)] == list(MANIFEST_COLUMNS)
    assert data.max_value == 255
    all_indices = np.concatenate([data.indices(s) for s in ("train", "val", "test")])
    assert sorted(all_indices.tolist()) == list(range(24))
    for split in ("train", "val", "test"):
        patients = {data.records[i]["patient_id"] for i in data.indices(split)}
        others = {data.records[i]["patient_id"] for i in data.indices("all") if data.splits[i] != split}
        assert not patients & others
    assert data.image_keys.dtype == np.int64
    assert data.image_keys[5] == image_key(data.records[5]["image_id"])


def test_tensor_keeps_stored_integer_dtype(make_prepared):
    data = load_prepared(make_prepared(n=12, size=16, patients=12))
    train = data.tensor("train", "cpu")
    assert train.shape == (len(data.indices("train")), 1, 16, 16) and train.dtype == torch.uint8
    assert torch.equal(train[:, 0], torch.from_numpy(np.asarray(data.images[data.indices("train")])))
    as_float = data.to_float(train)
    assert as_float.dtype == torch.float32 and float(as_float.min()) >= 0.0 and float(as_float.max()) <= 1.0


def test_uint16_folder(make_prepared):
    data = load_prepared(make_prepared(n=6, size=16, patients=3, dtype="uint16"))
    assert data.max_value == 65535 and data.images.dtype == np.uint16
    assert data.tensor("all").dtype == torch.uint16
    assert float(data.to_float(data.tensor("all")).max()) == pytest.approx(1.0)


def test_unknown_split_is_an_error(make_prepared):
    with pytest.raises(DataError, match="unknown split"):
        load_prepared(make_prepared(n=6, size=16)).indices("training")


@pytest.mark.parametrize(
    "damage", ["no_marker", "truncated_images", "edited_manifest", "bad_marker", "no_folder"]
)
def test_incomplete_or_altered_folders_are_refused(make_prepared, damage):
    folder = make_prepared(n=8, size=16, patients=4)
    if damage == "no_marker":
        (folder / "prepare.json").unlink()
    elif damage == "truncated_images":
        data = (folder / "images.npy").read_bytes()
        (folder / "images.npy").write_bytes(data[:-100])
    elif damage == "edited_manifest":
        text = (folder / "manifest.csv").read_text()
        (folder / "manifest.csv").write_text(text.replace(",train,", ",test,", 1))
    elif damage == "bad_marker":
        (folder / "prepare.json").write_text("{not json")
    else:
        folder = folder / "missing"
    with pytest.raises(DataError) as caught:
        load_prepared(folder)
    assert str(folder) in str(caught.value)


def test_writer_refuses_duplicate_ids_and_bad_arrays(tmp_path):
    records = [ImageRecord("same", "p", "s", ""), ImageRecord("same", "q", "s", "")]
    with pytest.raises(DataError, match="duplicate image_id"):
        write_prepared(tmp_path / "a", np.zeros((2, 16, 16), np.uint8), records, ["train", "test"], {})
    with pytest.raises(DataError, match="uint8 or uint16"):
        write_prepared(tmp_path / "b", np.zeros((2, 16, 16), np.float32), records, ["train", "test"], {})
    assert not (tmp_path / "a" / "prepare.json").exists()


def test_promotion_to_uint16_is_exact(tmp_path):
    writer = PreparedWriter(tmp_path / "p", 2, 16, 16, "uint8")
    eight_bit = np.arange(256, dtype=np.uint8).reshape(16, 16)
    writer.put(0, eight_bit)
    writer.put(1, np.full((16, 16), 65535, np.uint16))
    records = [ImageRecord(f"i{i}", f"p{i}", "s", "") for i in range(2)]
    writer.commit(records, ["train", "val"], {"size": 16})
    data = load_prepared(tmp_path / "p")
    assert data.images.dtype == np.uint16
    np.testing.assert_array_equal(data.images[0] / 65535.0, eight_bit / 255.0)
    assert data.info["counts"] == {"train": 1, "val": 1, "test": 0}
    assert json.loads((tmp_path / "p" / "prepare.json").read_text())["params"] == {"size": 16}


def test_commit_drops_rows_that_were_not_kept(tmp_path):
    writer = PreparedWriter(tmp_path / "p", 3, 16, 16, "uint8")
    for index in range(3):
        writer.put(index, np.full((16, 16), index * 10, np.uint8))
    records = [ImageRecord(f"i{i}", f"p{i}", "s", "") for i in range(3)]
    writer.commit(records, ["train", "val", "test"], {}, keep=np.array([True, False, True]))
    data = load_prepared(tmp_path / "p")
    assert [row["image_id"] for row in data.records] == ["i0", "i2"]
    assert data.images[1].max() == 20 and not list(tmp_path.joinpath("p").glob(".images.npy.partial-*"))
