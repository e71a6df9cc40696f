"""`prepare --group-similar`'s placement: joined components stay whole, linked images end in one split where
the shares allow, and the shares never drift beyond the tolerance."""

from __future__ import annotations

import numpy as np

from meddenoise.privacy.grouping import PLACEMENT_TOLERANCE, move_joined_groups, place_linked
from meddenoise.privacy.leaks import image_level_split, split_fractions

FRACTIONS = (0.5, 0.33, 0.17)


def _cut(splits: np.ndarray, weights: dict) -> float:
    return sum(w for (a, b), w in weights.items() if splits[a] != splits[b])


def _shares_ok(after: np.ndarray, before: np.ndarray) -> bool:
    return all(
        abs(a - f) <= max(PLACEMENT_TOLERANCE, abs(b - f)) + 1e-9
        for a, b, f in zip(split_fractions(after), split_fractions(before), FRACTIONS)
    )


def test_linked_pairs_end_in_one_split_and_the_shares_hold():
    # 15 linked pairs among 60 unlinked images, split by image at random
    n = 90
    splits = image_level_split(n, FRACTIONS, np.random.default_rng(3))
    labels = np.arange(n)
    weights = {(2 * k, 2 * k + 1): 1.0 for k in range(15)}
    assert _cut(splits, weights) > 0  # some pairs straddle splits to begin with
    after = place_linked(splits, labels, weights, FRACTIONS)
    assert _cut(after, weights) == 0
    assert _shares_ok(after, splits)
    # images move only to join a pair, or (unlinked) to make room for one
    moved = np.flatnonzero(after != splits)
    unlinked_moved = [i for i in moved if i >= 30]
    assert len(moved) - len(unlinked_moved) >= 1
    assert len(unlinked_moved) <= len(moved) - len(unlinked_moved)


def test_joined_components_stay_whole_and_weaker_links_give_way_to_the_shares():
    n = 60
    rng = np.random.default_rng(0)
    splits = image_level_split(n, FRACTIONS, rng)
    labels = np.arange(n)
    labels[[1, 2]] = 0  # images 0, 1, 2 are one joined component
    joined, _, _ = move_joined_groups(splits, labels, FRACTIONS)
    assert len(set(joined[[0, 1, 2]])) == 1
    # every test image is linked to a train image: the test share cannot follow them all to train
    train, test = np.flatnonzero(joined == "train"), np.flatnonzero(joined == "test")
    weights = {(int(min(t, r)), int(max(t, r))): 1.0 for t, r in zip(test, train) if not {t, r} & {0, 1, 2}}
    after = place_linked(joined, labels, weights, FRACTIONS)
    assert len(set(after[[0, 1, 2]])) == 1
    assert _shares_ok(after, joined)
    assert _cut(after, weights) < _cut(joined, weights)  # as many as the shares allow joined their partner
    assert np.sum(after == "test") >= np.sum(joined == "test") - PLACEMENT_TOLERANCE * n


def test_without_links_nothing_moves():
    splits = image_level_split(40, FRACTIONS, np.random.default_rng(1))
    assert (place_linked(splits, np.arange(40), {}, FRACTIONS) == splits).all()
