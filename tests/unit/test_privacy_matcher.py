"""The matcher finds exact copies, is at chance on unrelated images, and chance levels are computed right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddenoise.privacy.audit import plan_audit
from meddenoise.privacy.matcher import (
    Matcher,
    features_of_rows,
    linkage_rate,
    reidentification_chance,
    reidentification_rate,
    top_matches,
    wilson_interval,
)


def textured_images(count: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """(count, 1, size, size) in [0, 1]: smoothed random fields, unrelated to each other."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, size // 8, size // 8, generator=generator)
    fine = torch.rand(count, 1, size, size, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * fine).clamp(0, 1)


def test_unnoised_copy_is_always_ranked_first():
    matcher = Matcher(feature_size=16, blur_sigma=1.0)
    gallery = textured_images(200, seed=1)
    queries = gallery[torch.arange(0, 200, 3)]
    true_index = torch.arange(0, 200, 3)
    rate = linkage_rate(matcher.features(queries), matcher.features(gallery), true_index)
    assert rate.queries == len(true_index)
    assert rate.top1 == 1.0 and rate.top5 == 1.0
    # NCC ignores a constant brightness offset, so the obfuscation's mean alone hides nothing
    shifted = linkage_rate(matcher.features(queries + 0.1), matcher.features(gallery), true_index)
    assert shifted.top1 == 1.0


def test_random_gallery_is_at_chance_level():
    """Queries unrelated to the gallery: the designated 'original' is hit at 1/G (top-1) and 5/G (top-5).

    4,000 queries, G = 20: the standard error of top-1 is 0.0034, so +-0.02 is about 6 standard errors.
    """
    matcher = Matcher(feature_size=8, blur_sigma=0.5)
    gallery = textured_images(20, size=32, seed=2)
    queries = textured_images(4000, size=32, seed=3)
    designated = torch.randint(0, 20, (4000,), generator=torch.Generator().manual_seed(4))
    rate = linkage_rate(matcher.features(queries), matcher.features(gallery), designated)
    assert rate.chance_top1 == pytest.approx(1 / 20) and rate.chance_top5 == pytest.approx(5 / 20)
    assert abs(rate.top1 - 1 / 20) < 0.02
    assert abs(rate.top5 - 5 / 20) < 0.04


def test_features_are_unit_vectors_and_constant_images_do_not_divide_by_zero():
    matcher = Matcher(feature_size=8)
    images = torch.cat([textured_images(3, size=32), torch.full((1, 1, 32, 32), 0.5)])
    features = matcher.features(images)
    assert features.shape == (4, 64)
    assert torch.allclose(features[:3].norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.isfinite(features).all() and features[3].abs().max() == 0


def test_exclusion_never_returns_the_querys_own_image():
    matcher = Matcher(feature_size=8)
    gallery = matcher.features(textured_images(30, size=32, seed=5))
    own = torch.arange(30)
    ranked = top_matches(gallery, gallery, 5, exclude=own, chunk_size=7)
    assert ranked.shape == (30, 5)
    assert not (ranked == own.view(-1, 1)).any()
    ranked_plain = top_matches(gallery, gallery, 1)
    assert torch.equal(ranked_plain[:, 0], own)


def test_reidentification_chance_by_hand():
    gallery = ["A", "A", "A", "B", "B", "C"]
    # query's own image is gallery[0]: 5 candidates, 2 of them patient A
    chance1, chance5 = reidentification_chance(["A"], gallery, [0])
    assert chance1 == pytest.approx(2 / 5)
    assert chance5 == pytest.approx(1.0)  # any 5 of 5 candidates include an A
    _, chance2 = reidentification_chance(["A"], gallery, [0], k=2)
    assert chance2 == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    # averaged over queries; a query whose own image is not in the gallery (-1) keeps all candidates
    chance1, _ = reidentification_chance(["A", "B"], gallery, [0, -1])
    assert chance1 == pytest.approx((2 / 5 + 2 / 6) / 2)


def test_reidentification_chance_matches_a_random_ranking():
    rng = np.random.default_rng(0)
    gallery = [f"p{p}" for p in rng.integers(0, 12, size=40)]
    own = list(rng.integers(0, 40, size=300))
    queries = [gallery[i] for i in own]
    chance1, chance5 = reidentification_chance(queries, gallery, own)
    hits1 = hits5 = 0
    trials = 20000
    for t in range(trials):
        q = t % len(own)
        candidates = [i for i in range(40) if i != own[q]]
        picks = rng.choice(candidates, size=5, replace=False)
        same = [gallery[i] == queries[q] for i in picks]
        hits1 += same[0]
        hits5 += any(same)
    assert abs(hits1 / trials - chance1) < 0.015
    assert abs(hits5 / trials - chance5) < 0.02


def test_reidentification_rate_finds_the_same_patient_when_their_images_are_near_copies():
    base = textured_images(10, size=32, seed=6)  # 10 patients
    jitter = 0.02 * torch.randn(20, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    gallery_images = (base.repeat(2, 1, 1, 1) + jitter).clamp(0, 1)  # 2 images per patient
    patients = [f"p{i % 10}" for i in range(20)]
    matcher = Matcher(feature_size=16)
    features = matcher.features(gallery_images)
    rate = reidentification_rate(features, features, patients, patients, torch.arange(20))
    assert rate.top1 == 1.0
    assert rate.chance_top1 == pytest.approx(1 / 19)


def test_wilson_interval_brackets_the_rate():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(50, 50)
    assert high == pytest.approx(1.0) and 0.9 < low < 1.0
    low, high = wilson_interval(30, 100)
    assert low < 0.3 < high


def test_features_of_rows_keeps_the_requested_order():
    images = (textured_images(12, size=32, seed=8)[:, 0] * 255).round().to(torch.uint8).numpy()
    matcher = Matcher(feature_size=8)
    rows = np.array([7, 2, 11, 0, 5], dtype=np.int64)
    features = features_of_rows(matcher, images, rows, 255, batch_size=3)
    expected = matcher.features(torch.from_numpy(images[rows]).unsqueeze(1).float() / 255)
    assert torch.allclose(features, expected, atol=1e-6)


def test_plan_includes_query_originals_and_states_why_reid_is_skipped():
    splits = np.array(["train", "val", "test"] * 10)
    repeating = [f"p{i % 5}" for i in range(30)]
    plan = plan_audit(repeating, splits, "test", gallery_size=20, seed=0)
    assert plan.gallery_rows.size == 20
    assert np.array_equal(plan.gallery_rows[plan.query_in_gallery], plan.query_rows)
    assert plan.reid_skip_reason is None and plan.reid_queries.size > 0

    unique = [f"p{i}" for i in range(30)]
    plan = plan_audit(unique, splits, "test")
    assert plan.reid_skip_reason and "do not repeat" in plan.reid_skip_reason
    plan = plan_audit(["ct"] * 30, splits, "test")
    assert plan.reid_skip_reason and "one patient" in plan.reid_skip_reason

    from meddenoise.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="gallery_size 5 is smaller than") as refused:
        plan_audit(repeating, splits, "test", gallery_size=5)
    assert refused.value.parameter == "gallery_size"
    with pytest.raises(DataError, match="split") as refused:
        plan_audit(repeating, np.array(["train"] * 30), "test")
    assert refused.value.parameter == "split"
