"""Train/val/test assignment: deterministic by seed, whole groups (patients) kept in one split.

The paper split images at random, which puts images of one patient in train and test; `split_by="patient"`
(the default) keeps every group in one split, `split_by="image"` reproduces the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meddenoise.data.prepare_config import DEFAULT_FRACTIONS, SPLIT_BY_CHOICES
from meddenoise.data.records import ImageRecord
from meddenoise.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != len(SPLIT_NAMES):
        raise ConfigError(
            f"split fractions need {len(SPLIT_NAMES)} values (train, val, test); got {fractions}"
        )
    values = tuple(float(f) for f in fractions)
    if any(not np.isfinite(f) or f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be non-negative and sum to 1; got {values}")
    return values  # type: ignore[return-value]


def assign_splits(
    records: Sequence[ImageRecord],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    split_by: str = "patient",
) -> list[str]:
    """Return one split name ('train', 'val' or 'test') per record, in record order.

    Groups (patients, or single images with `split_by="image"`) are visited in a seeded random order and each
    goes to the split furthest below its target image count, so every split ends within about two group sizes
    of its share. The result depends only on the set of groups, their sizes and the seed, not on record order.
    """
    targets_fraction = check_fractions(fractions)
    if split_by not in SPLIT_BY_CHOICES:
        raise ConfigError(f"split_by must be one of {', '.join(SPLIT_BY_CHOICES)}; got {split_by!r}")
    if not records:
        return []
    keys = [r.image_id if split_by == "image" else r.group for r in records]
    group_names = sorted(set(keys))
    index_of = {name: i for i, name in enumerate(group_names)}
    group_of_record = np.array([index_of[k] for k in keys], dtype=np.int64)
    group_sizes = np.bincount(group_of_record, minlength=len(group_names))

    order = np.random.default_rng(seed).permutation(len(group_names))
    targets = np.array(targets_fraction) * len(records)
    counts = np.zeros(len(SPLIT_NAMES))
    members: list[list[int]] = [[] for _ in SPLIT_NAMES]
    split_of_group = np.zeros(len(group_names), dtype=np.int64)
    for group in order:
        deficit = targets - counts
        # ties (e.g. the very first group) go to the earlier split name, deterministically
        chosen = int(np.argmax(deficit))
        split_of_group[group] = chosen
        counts[chosen] += group_sizes[group]
        members[chosen].append(int(group))

    _fill_empty_splits(split_of_group, members, group_sizes, targets_fraction)
    return [SPLIT_NAMES[split_of_group[g]] for g in group_of_record]


def _fill_empty_splits(split_of_group, members, group_sizes, fractions) -> None:
    """With few large groups a wanted split can end empty; move it the smallest group of the fullest split."""
    for split, fraction in enumerate(fractions):
        if fraction <= 0 or members[split]:
            continue
        donor = max(range(len(members)), key=lambda s: len(members[s]))
        if len(members[donor]) < 2:
            return  # too few groups to give every split one
        smallest = min(members[donor], key=lambda g: (group_sizes[g], g))
        members[donor].remove(smallest)
        members[split].append(smallest)
        split_of_group[smallest] = split


def split_counts(splits: Sequence[str]) -> dict[str, int]:
    return {name: int(sum(1 for s in splits if s == name)) for name in SPLIT_NAMES}
