"""What the pipeline knows about an image before any pixel is read: ids, patient, where it came from."""

from __future__ import annotations

import dataclasses
import hashlib

IMAGE_KEY_BITS = 63


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image of a source.

    `group` is the unit a split keeps together: the patient id for real data, the pose group for the rendered
    default (all its images come from one CT). Left empty, it defaults to `patient_id`.
    """

    image_id: str
    patient_id: str
    source: str
    path: str
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.patient_id)


def image_key(image_id: str) -> int:
    """A stable non-negative int63 for `image_id` (sha256-based), used to seed per-image noise.

    It depends on the id alone, so the same image gets the same key in every process, rank and run.
    """
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - IMAGE_KEY_BITS)


def select_subset(items: list, count: int, seed: int) -> list:
    """`count` items chosen at random with `seed` (all when count <= 0 or count >= len), in their given order.

    The items are expected in a canonical (sorted) order, so the choice depends only on the set and the seed.
    """
    if count <= 0 or count >= len(items):
        return list(items)
    import numpy as np

    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size=count, replace=False))
    return [items[i] for i in chosen]
