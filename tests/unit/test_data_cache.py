"""cache.prepare: decoding into the cache, reuse and invalidation, skipped files, atomicity when killed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddenoise.data.cache import load_prepared, prepare
from meddenoise.data.prepare_config import PrepareConfig
from meddenoise.data.records import ImageRecord
from meddenoise.data.sources.folder import FolderSource
from meddenoise.errors import DataError, MeddenoiseError
from time_limits import ANSWER


def make_folder(root: Path, image_files, count: int = 8, size: int = 40) -> Path:
    images = image_files.smooth(count, size, seed=1)
    for index, image in enumerate(images):
        patient = index // 2
        image_files.png(root / f"{patient:08d}_{index:03d}.png", (image * 255).astype(np.uint8))
    return root


def run_prepare(root: Path, out: Path, **options):
    config = PrepareConfig(source="folder", root=str(root), out=str(out), size=16, workers=1, quiet=True)
    config.allow_empty_split = True  # a handful of images rarely fills three splits
    for key, value in options.items():
        setattr(config, key, value)
    config.check()
    return prepare(FolderSource(config.root, config.count, config.seed, exclude=[config.out]), config)


def test_prepare_folder_writes_a_loadable_cache(tmp_path, image_files):
    root = make_folder(tmp_path / "in", image_files)
    result = run_prepare(root, tmp_path / "out")
    assert not result.reused and result.skipped == []
    data = load_prepared(tmp_path / "out")
    assert data.images.shape == (8, 16, 16) and data.images.dtype == np.uint8
    assert data.params["size"] == 16 and data.params["source"] == "folder"
    assert {row["bit_depth"] for row in data.records} == {"8"}
    assert data.records[0]["original_height"] == "40"
    # the cache holds the same pixels as a plain PIL resize of the file
    first = Image.open(root / data.records[0]["image_id"]).resize((16, 16), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(data.images[0], np.asarray(first))
    patients = {
        split: {r["patient_id"] for r in data.records if r["split"] == split} for split in data.info["counts"]
    }
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])


def test_parallel_workers_give_the_same_cache(tmp_path, image_files):
    root = make_folder(tmp_path / "in", image_files, count=10)
    run_prepare(root, tmp_path / "one", workers=1)
    result = run_prepare(root, tmp_path / "two", workers=2)
    assert result.workers == 2
    np.testing.assert_array_equal(
        load_prepared(tmp_path / "one").images, load_prepared(tmp_path / "two").images
    )
    assert (tmp_path / "one" / "manifest.csv").read_text() == (tmp_path / "two" / "manifest.csv").read_text()


def test_reuse_and_invalidation(tmp_path, image_files):
    root = make_folder(tmp_path / "in", image_files)
    out = tmp_path / "out"
    run_prepare(root, out)
    stamp = (out / "images.npy").stat().st_mtime_ns
    assert run_prepare(root, out, workers=2, quiet=False).reused  # run-only options do not matter
    assert (out / "images.npy").stat().st_mtime_ns == stamp

    assert not run_prepare(root, out, size=24).reused  # a parameter changed
    assert load_prepared(out).images.shape[1:] == (24, 24)
    assert run_prepare(root, out, size=24).reused

    changed = root / "00000000_000.png"
    image_files.png(changed, np.zeros((40, 40), np.uint8))
    os.utime(changed, ns=(1, 1))  # content and mtime differ from the fingerprint
    assert not run_prepare(root, out, size=24).reused
    assert load_prepared(out).images[0].max() == 0

    image_files.png(root / "00000009_050.png", np.zeros((40, 40), np.uint8))  # a new input file
    assert not run_prepare(root, out, size=24).reused
    assert len(load_prepared(out)) == 9
    assert not run_prepare(root, out, size=24, force=True).reused


def write_bad_files(root: Path, image_files) -> dict[str, str]:
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("not a png")
    good = image_files.png(root / "big.png", np.random.default_rng(0).integers(0, 255, (128, 128), np.uint8))
    (root / "truncated.png").write_bytes(good.read_bytes()[:300])
    good.unlink()
    image_files.png(root / "line.png", np.zeros((1, 64), np.uint8))
    frames = [Image.fromarray(np.zeros((20, 20), np.uint8)) for _ in range(2)]
    frames[0].save(root / "stack.tif", save_all=True, append_images=frames[1:])
    (root / "notes.txt").write_text("not an image name: ignored, not skipped")
    return {"zero.png": "empty", "text.png": "not an image", "truncated.png": "truncated",
            "line.png": "at least 16", "stack.tif": "2 frames"}  # fmt: skip


def test_bad_files_are_skipped_and_listed(tmp_path, image_files):
    root = make_folder(tmp_path / "in", image_files, count=4)
    expected = write_bad_files(root, image_files)
    result = run_prepare(root, tmp_path / "out")
    assert len(load_prepared(tmp_path / "out")) == 4
    reasons = {Path(path).name: reason for path, reason in result.skipped}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name] and name in reasons[name]
    listed = (tmp_path / "out" / "skipped.csv").read_text()
    assert all(name in listed for name in expected) and "notes.txt" not in listed
    assert any("notes.txt" in note for note in result.notes)


def test_strict_mode_fails_and_leaves_no_valid_cache(tmp_path, image_files):
    root = make_folder(tmp_path / "in", image_files, count=4)
    run_prepare(root, tmp_path / "out")  # a valid cache from before
    (root / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"strict: 1 of 5 .*zero.png") as refused:
        run_prepare(root, tmp_path / "out", strict=True)
    assert refused.value.parameter == "strict"
    with pytest.raises(DataError):
        load_prepared(tmp_path / "out")
    assert not list((tmp_path / "out").glob(".images.npy.partial-*"))


def test_nothing_readable_is_an_error(tmp_path, image_files):
    root = tmp_path / "in"
    root.mkdir()
    write_bad_files(root, image_files)
    with pytest.raises(DataError, match="none of the 5 image"):
        run_prepare(root, tmp_path / "out")
    assert (tmp_path / "out" / "skipped.csv").is_file()


def test_unwritable_output_path(tmp_path, image_files):
    root = make_folder(tmp_path / "in", image_files, count=2)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MeddenoiseError, match="cannot create output folder"):
        run_prepare(root, tmp_path / "a_file" / "out")


def test_sixteen_bit_sources_give_uint16(tmp_path, image_files):
    root = make_folder(tmp_path / "in", image_files, count=3)
    wide = (np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16)
    image_files.png(root / "00000077_000.png", wide)
    data = load_prepared(run_prepare(root, tmp_path / "out").folder)
    assert data.images.dtype == np.uint16 and data.max_value == 65535
    row = next(i for i, r in enumerate(data.records) if r["image_id"] == "00000077_000.png")
    assert data.records[row]["bit_depth"] == "16"
    expected = np.asarray(
        Image.fromarray(wide.astype(np.float32) / 65535, "F").resize((16, 16), Image.LANCZOS)
    )
    np.testing.assert_allclose(data.images[row] / 65535.0, np.clip(expected, 0, 1), atol=1 / 65535)


class FakeRenderedSource:
    """Stands in for the rendered default: records carry pose groups, pixels come from render()."""

    name = "default"

    def __init__(self, count: int, seed: int = 0):
        self.count, self.seed = count, seed

    def records(self):
        return [ImageRecord(f"drr{i:04d}", "ct0", "default", "", f"pose{i // 4}") for i in range(self.count)]

    def render(self, records, size, device):
        assert device == "cpu"
        return np.stack([np.full((size, size), i, np.uint8) for i in range(len(records))])


def test_render_sources_are_cached_with_pose_groups_kept_together(tmp_path):
    config = PrepareConfig(source="default", out=str(tmp_path / "out"), size=16, count=40, device="cpu")
    config.check()
    result = prepare(FakeRenderedSource(40), config)
    data = load_prepared(result.folder)
    assert data.images.shape == (40, 16, 16) and data.images[7].max() == 7
    split_of_group = {}
    for row in data.records:
        assert split_of_group.setdefault(row["group"], row["split"]) == row["split"]
    assert set(split_of_group.values()) == {"train", "val", "test"}
    assert prepare(FakeRenderedSource(40), config).reused


def test_an_interrupted_prepare_leaves_no_valid_cache(tmp_path, image_files, monkeypatch):
    root = make_folder(tmp_path / "in", image_files)
    out = tmp_path / "out"
    run_prepare(root, out)

    def interrupted(self, record):
        raise KeyboardInterrupt

    monkeypatch.setattr(FolderSource, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(root, out, size=24)
    with pytest.raises(DataError, match="not a complete prepared folder"):
        load_prepared(out)
    assert not list(out.glob(".images.npy.partial-*"))
    monkeypatch.undo()
    assert not run_prepare(root, out, size=24).reused


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import meddenoise.data.manifest as manifest
    from meddenoise.data.cache import prepare
    from meddenoise.data.prepare_config import PrepareConfig
    from meddenoise.data.sources.folder import FolderSource

    root, out, kill_at = sys.argv[1:4]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class DyingSource(FolderSource):
        def decode(self, record):
            if kill_at == "decode" and record.image_id.endswith("_004.png"):
                die()
            return super().decode(record)

    original_text, original_json = manifest.atomic_write_text, manifest.atomic_write_json
    def write_text(path, text):
        if kill_at == "manifest":
            die()
        return original_text(path, text)
    def write_json(path, payload):
        if kill_at == "marker":
            die()
        return original_json(path, payload)
    manifest.atomic_write_text, manifest.atomic_write_json = write_text, write_json

    config = PrepareConfig(source="folder", root=root, out=out, size=24, workers=1, quiet=True)
    config.check()
    prepare(DyingSource(root), config)
    """
)


@pytest.mark.parametrize("kill_at", ["decode", "manifest", "marker"])
def test_sigkill_at_any_stage_never_leaves_a_cache_that_loads(tmp_path, image_files, kill_at):
    root = make_folder(tmp_path / "in", image_files)
    out = tmp_path / "out"
    run_prepare(root, out)  # an older valid cache (size 16) that the killed run (size 24) replaces
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-c", KILLER, str(root), str(out), kill_at],
        env=env,
        capture_output=True,
        timeout=ANSWER,
    )
    assert process.returncode == -9, process.stderr.decode()
    with pytest.raises(DataError):
        load_prepared(out)
    result = run_prepare(root, out, size=24)
    assert not result.reused and load_prepared(out).images.shape == (8, 24, 24)
    assert not list(out.glob(".images.npy.partial-*"))


class CrashingSource(FolderSource):
    """Its worker dies outright on one file, like a segfault in a C decoder."""

    def decode(self, record):
        if record.image_id.endswith("_003.png"):
            os._exit(1)
        return super().decode(record)


def test_a_dead_worker_is_an_error_not_a_hang(tmp_path, image_files):
    root = make_folder(tmp_path / "in", image_files)
    config = PrepareConfig(source="folder", root=str(root), out=str(tmp_path / "out"), size=16, workers=2)
    config.quiet = True
    config.check()
    with pytest.raises(DataError, match="worker process died"):
        prepare(CrashingSource(str(root)), config)
    with pytest.raises(DataError):
        load_prepared(tmp_path / "out")
