"""The registered correlation (privacy/registration.py) and the leak score that uses it (leaks.score_pairs):
pose changes do not hide a match, unrelated images stay apart, and the pair scores are what the docs say."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from conftest import smooth_images
from meddenoise.data.cache import write_prepared
from meddenoise.data.records import ImageRecord
from meddenoise.privacy.grouping import similar_groups
from meddenoise.privacy.leaks import (
    NEIGHBOURS,
    POOL,
    REGISTRATION_WEIGHT,
    LeakScorer,
    RegisteredRanking,
    cross_split_pairs,
    score_pairs,
)
from meddenoise.privacy.matcher import Matcher, top_matches
from meddenoise.privacy.registration import Registration
from meddenoise.privacy.reid_embedding import SHIPPED_WEIGHTS, load_matcher


def textured(count: int, seed: int) -> torch.Tensor:
    """(count, 1, 64, 64) images with detail at several scales, like ribs over a smooth exposure."""
    coarse = torch.from_numpy(smooth_images(count, 64, seed)).unsqueeze(1)
    fine = F.interpolate(
        torch.rand(count, 1, 16, 16, generator=torch.Generator().manual_seed(seed)),
        size=(64, 64),
        mode="bicubic",
    )
    return (0.6 * coarse + 0.4 * fine).clamp(0, 1)


def moved(images: torch.Tensor, scale: float, angle: float, dx: float, dy: float) -> torch.Tensor:
    """The images under one affine move (translations in normalized units, 2 = the side)."""
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, dx], [sin, cos, dy]], dtype=torch.float32).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


def test_a_moved_copy_correlates_after_registration_and_unrelated_images_do_not():
    registration = Registration()
    assert len(registration.moves()) == 3 * 3 * 7 * 7
    originals = textured(4, seed=1)
    copies = moved(originals, 1.05, 0.04, 0.1, -0.08)  # about 5% scale, 2 degrees, 5% / 4% shifts
    prepared = registration.features(torch.cat([originals, copies]))
    assert prepared.shape == (8, registration.dim)
    same = registration.scores(prepared, np.array([[i, 4 + i] for i in range(4)]))
    different = registration.scores(prepared, np.array([[i, 4 + (i + 1) % 4] for i in range(4)]))
    # the same pairs without the search: the correlation at the identity move only
    fixed = Registration(scales=(1.0,), rotations=(0.0,), shift_steps=1).scores(
        prepared, np.array([[i, 4 + i] for i in range(4)])
    )
    assert same.min() > 0.9 and same.min() > fixed.max() + 0.1, (same, fixed)
    assert different.max() < same.min() - 0.3, (different, same)
    # symmetric: each image is moved onto the other and the two best correlations are averaged
    reversed_ = registration.scores(prepared, np.array([[4 + i, i] for i in range(4)]))
    assert np.allclose(same, reversed_)
    assert registration.scores(prepared, np.zeros((0, 2), dtype=int)).shape == (0,)


def prepared_folder(tmp_path, images: torch.Tensor):
    from meddenoise.data.cache import load_prepared

    pixels = np.round(images.squeeze(1).numpy() * 255).astype(np.uint8)
    records = [
        ImageRecord(f"img{i:03d}", f"img{i:03d}", "folder", f"img{i:03d}.png") for i in range(len(pixels))
    ]
    splits = ["train", "val", "test"] * (len(pixels) // 3) + ["train"] * (len(pixels) % 3)
    return load_prepared(write_prepared(tmp_path / "folder", pixels, records, splits, {"source": "folder"}))


def test_the_leak_score_mixes_feature_score_and_registered_correlation(tmp_path):
    learned = load_matcher(SHIPPED_WEIGHTS)
    base = textured(12, seed=2)
    images = torch.cat([base, moved(base, 0.96, -0.03, -0.06, 0.05)])  # 24 images: 12 pairs
    data = prepared_folder(tmp_path, images)
    pairs = score_pairs(data, learned)
    n = len(images)
    assert pairs.partners.shape == (n, min(POOL, n - 1))
    assert all(i not in pairs.partners[i] for i in range(n))
    assert np.all(np.diff(pairs.scores, axis=1) <= 1e-12)  # best first
    # one pair, recomputed by hand from the stored pixels
    stored = torch.from_numpy(np.asarray(data.images, dtype=np.float32) / 255).unsqueeze(1)
    scorer = LeakScorer(learned)
    features = scorer.features(stored)
    i, j = 0, int(pairs.partners[0][0])
    registered = scorer.registration.scores(scorer.registration.features(stored), np.array([[i, j]]))[0]
    expected = (1 - REGISTRATION_WEIGHT) * float(features[i] @ features[j]) + REGISTRATION_WEIGHT * registered
    assert abs(pairs.scores[0][0] - expected) < 1e-4
    # each image's best partner is its moved copy
    assert all(int(pairs.partners[k][0]) == (k + 12) % n for k in range(n))
    # candidates: other splits only, NEIGHBOURS at most per image
    splits = np.asarray(data.splits)
    candidates = cross_split_pairs(pairs, splits)
    assert candidates and all(splits[a] != splits[b] for a, b, _ in candidates)
    per_image = np.bincount(np.array([[a, b] for a, b, _ in candidates]).ravel(), minlength=n)
    assert per_image.max() <= 2 * NEIGHBOURS
    # joining at a threshold only the pairs reach: each image with its copy, nothing else
    threshold = min(pairs.scores[k][0] for k in range(n)) - 1e-9
    labels = similar_groups(pairs, max(threshold, float(np.max(pairs.scores[:, 1:])) + 1e-9))
    assert len(set(labels.tolist())) == 12 and all(labels[k] == labels[k + 12] for k in range(12))


def test_the_pixel_matcher_keeps_its_own_score(tmp_path):
    images = textured(9, seed=3)
    data = prepared_folder(tmp_path, images)
    pairs = score_pairs(data, Matcher())
    features = Matcher().features(
        torch.from_numpy(np.asarray(data.images, dtype=np.float32) / 255).unsqueeze(1)
    )
    assert LeakScorer(Matcher()).registration_weight == 0.0
    for i in range(9):
        for j, score in zip(pairs.partners[i].tolist(), pairs.scores[i]):
            assert abs(score - float(features[i] @ features[j])) < 1e-5


def test_the_registered_ranking_orders_the_candidates_by_the_leak_score():
    learned = load_matcher(SHIPPED_WEIGHTS)
    ranking = RegisteredRanking(learned)
    gallery_images = textured(40, seed=4)
    query_images = moved(gallery_images[:10], 1.04, -0.03, 0.08, 0.06)
    gallery, queries = ranking.features(gallery_images), ranking.features(query_images)
    assert gallery.shape == (40, ranking.dim)
    ranked = ranking.rank(queries, gallery, 5)
    assert ranked.shape == (10, 5) and torch.equal(ranked[:, 0], torch.arange(10))
    # the first candidates are the embedding's own: the ranking reorders them, it adds none
    pool = top_matches(queries[:, : ranking.split], gallery[:, : ranking.split], POOL)
    assert all(set(ranked[i].tolist()) <= set(pool[i].tolist()) for i in range(10))
    # a query's own image can be excluded, and subsets of rows rank the same
    excluded = ranking.rank(queries, gallery, 5, exclude=torch.arange(10))
    assert all(int(excluded[i, 0]) != i for i in range(10))
    assert torch.equal(ranking.rank(queries[3:6], gallery, 5), ranked[3:6])
