"""The learned patient matcher: shipped weights, held-out accuracy, fitting on ids, and the refusal of
--group-similar to wreck a split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddenoise.cli import main
from meddenoise.data.cache import load_prepared
from meddenoise.errors import DataError
from meddenoise.privacy.grouping import regroup_prepared
from meddenoise.privacy.matcher import Matcher
from meddenoise.privacy.reid_embedding import (
    SHIPPED_WEIGHTS,
    fitted_rows,
    load_matcher,
    reid_at_1,
    resolve_matcher,
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nih") / "nih64"
    assert main(["prepare", "--source", "nih-sample", "--size", "64", "--out", str(folder), "--quiet"]) == 0
    return load_prepared(folder)


def test_shipped_weights_are_small_and_say_on_whom_they_were_fitted():
    assert SHIPPED_WEIGHTS.stat().st_size < 400_000
    matcher = load_matcher(SHIPPED_WEIGHTS)
    assert matcher.fitting_patients and all(int(p) % 2 == 0 for p in matcher.fitting_patients)
    assert "even" in matcher.metadata["fitting"]["rule"]
    assert type(resolve_matcher("auto")).__name__ == "LearnedMatcher"
    assert isinstance(resolve_matcher("pixel"), Matcher)


def test_learned_matcher_beats_the_pixel_matcher_on_held_out_patients(sample):
    learned = load_matcher(SHIPPED_WEIGHTS)
    fitted = fitted_rows(learned, sample.records, "nih-sample")
    assert fitted.any() and not fitted.all()
    rows = np.flatnonzero(~fitted)  # never score the fitting patients
    patients = [sample.records[int(r)]["patient_id"] for r in rows]
    clean = torch.from_numpy(np.asarray(sample.images[rows], dtype=np.float32) / 255).unsqueeze(1)
    learned_rate, count = reid_at_1(learned.features(clean), patients)
    pixel_rate, _ = reid_at_1(Matcher().features(clean), patients)
    assert count > 300 and learned_rate > pixel_rate + 0.1 and learned_rate > 0.45


def test_group_similar_refuses_to_collapse_the_split(sample, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(sample.folder, folder)
    before = (folder / "manifest.csv").read_bytes()
    with pytest.raises(DataError, match="points off"):
        regroup_prepared(folder, 0.3, fractions=(0.5, 0.33, 0.17), matcher=load_matcher(SHIPPED_WEIGHTS))
    assert (folder / "manifest.csv").read_bytes() == before


def test_fit_matcher_writes_a_file_that_loads(sample, tmp_path, capsys):
    out = tmp_path / "mine.safetensors"
    args = ["data", "fit-matcher", str(sample.folder), "--out", str(out), "--steps", "3", "--quiet"]
    assert main(args) == 0
    assert "re-id@1 of" in capsys.readouterr().out
    mine = load_matcher(out)
    assert mine.metadata["training"]["steps"] == 3 and mine.metadata["measured"]["held_out_patients"] > 0
    assert mine.features(torch.rand(2, 1, 64, 64)).shape == (2, 64)


def test_leak_score_mixes_the_shifted_embedding_with_the_pixel_correlation():
    from meddenoise.privacy.leaks import PIXEL_WEIGHT, TTA_SHIFT, LeakScorer

    learned = load_matcher(SHIPPED_WEIGHTS)
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    scorer = LeakScorer(learned)
    features = scorer.features(images)
    assert features.shape == (3, scorer.dim) and torch.allclose(features.norm(dim=1), torch.ones(3))
    plain = LeakScorer(learned, shift=0, pixel_weight=0.0).features(images)
    assert torch.allclose(plain[:, : learned.dim], learned.features(images), atol=1e-5)
    # the score of a pair: (1 - w) x cosine of the shift-averaged embeddings + w x pixel correlation
    pixel = Matcher().features(images)
    shifted = LeakScorer(learned, pixel_weight=0.0).features(images)[:, : learned.dim]
    expected = (1 - PIXEL_WEIGHT) * (shifted[0] @ shifted[1]) + PIXEL_WEIGHT * (pixel[0] @ pixel[1])
    assert torch.allclose(features[0] @ features[1], expected, atol=1e-5)
    assert scorer.describe()["shift_px"] == TTA_SHIFT
    # the pixel matcher is left as it is: thresholds calibrated for it keep their meaning
    assert torch.equal(LeakScorer(Matcher()).features(images), pixel)
