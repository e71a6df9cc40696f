"""Likely same-patient pairs across splits, found with the privacy audit's matcher on the clean images.

When patient ids are unknown, every image is its own "patient" and a split by patient is a split by image:
repeat studies of one person can sit in training and test. The matcher (`privacy.matcher.Matcher`: area
downsampling, blur, normalised cross-correlation) scores every image against the images of the other splits;
a pair scoring at or above a threshold is a suspect.

The threshold is never a guess: it is calibrated on a prepared folder whose patient ids are known (e.g. NIH
ChestX-ray14 with its repeat studies, or the part of this folder that has ids) as the lowest score at which
nearest-neighbour pairs are the same patient with at least the requested precision, or given explicitly.
Without either, the pairs are ranked for inspection and no count is claimed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddenoise.privacy.matcher import Matcher, features_of_rows, top_matches

NEIGHBOURS = 5  # candidates kept per image before thresholding
UNCALIBRATED_LISTED = 200  # without a threshold: the best-scoring pairs, for inspection only


@dataclasses.dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None: no score reaches the precision
    precision: float  # the requested precision
    achieved_precision: float | None
    recall: float | None  # of images whose patient has another image, the share found at the threshold
    images: int
    patients: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def clean_features(data: Any, matcher: Matcher, device: str = "cpu") -> torch.Tensor:
    return features_of_rows(matcher, data.images, np.arange(len(data.records)), data.max_value, device=device)


def calibrate(features: torch.Tensor, patients: list[str], precision: float, source: str) -> Calibration:
    """The lowest nearest-neighbour score above which pairs are the same patient with `precision`."""
    n = features.shape[0]
    counts: dict[str, int] = {}
    for patient in patients:
        counts[patient] = counts.get(patient, 0) + 1
    nearest = top_matches(features, features, 1, exclude=torch.arange(n))[:, 0]  # (N,) own image excluded
    scores = (features * features[nearest]).sum(dim=1).cpu().numpy()
    same = np.array([patients[i] == patients[int(j)] for i, j in enumerate(nearest.tolist())])
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(same[order])
    precisions = hits / np.arange(1, n + 1)
    good = np.flatnonzero(precisions >= precision)
    repeated = sum(1 for p in patients if counts[p] > 1)
    if good.size == 0 or repeated == 0:
        return Calibration(None, precision, None, None, n, len(counts), source)
    cut = int(good.max())  # the longest prefix of the ranking that keeps the precision
    return Calibration(
        threshold=float(scores[order[cut]]),
        precision=precision,
        achieved_precision=float(precisions[cut]),
        recall=float(hits[cut]) / repeated,
        images=n,
        patients=len(counts),
        source=source,
    )


def cross_split_pairs(features: torch.Tensor, splits: np.ndarray) -> list[tuple[int, int, float]]:
    """(i, j, score) with i < j in different splits, each image's NEIGHBOURS best partners, best first."""
    found: dict[tuple[int, int], float] = {}
    rows = np.arange(features.shape[0])
    for split in sorted(set(splits.tolist())):
        queries = rows[splits == split]
        others = rows[splits != split]
        if queries.size == 0 or others.size == 0:
            continue
        ranked = top_matches(features[queries], features[others], min(NEIGHBOURS, others.size))
        for position, query in enumerate(queries.tolist()):
            for index in ranked[position].tolist():
                partner = int(others[index])
                key = (min(query, partner), max(query, partner))
                found[key] = float((features[query] * features[partner]).sum())
    return sorted(((i, j, s) for (i, j), s in found.items()), key=lambda item: -item[2])


def find_leaks(
    data: Any,
    *,
    threshold: float | None = None,
    calibration_data: Any = None,
    precision: float = 0.9,
    matcher: Matcher | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Suspect pairs across the splits of `data` and how the threshold was set (module docstring)."""
    matcher = matcher or Matcher()
    features = clean_features(data, matcher, device)
    calibration = None
    if threshold is None and calibration_data is not None:
        calibration_features = clean_features(calibration_data, matcher, device)
        patients = [row["patient_id"] for row in calibration_data.records]
        calibration = calibrate(calibration_features, patients, precision, str(calibration_data.folder))
        threshold = calibration.threshold
    pairs = cross_split_pairs(features, data.splits)
    records = data.records
    listed = [
        {
            "image_a": records[i]["image_id"],
            "split_a": records[i]["split"],
            "image_b": records[j]["image_id"],
            "split_b": records[j]["split"],
            "score": score,
            "row_a": i,
            "row_b": j,
        }
        for i, j, score in pairs
    ]
    suspects = [pair for pair in listed if threshold is not None and pair["score"] >= threshold]
    return {
        "folder": str(data.folder),
        "images": len(records),
        "threshold": threshold,
        "threshold_source": (
            "given"
            if calibration is None and threshold is not None
            else f"calibrated on {calibration.source}"
            if calibration is not None and threshold is not None
            else "none"
        ),
        "calibration": calibration.to_dict() if calibration is not None else None,
        "suspects": len(suspects) if threshold is not None else None,
        "suspect_images_in_test": len(
            {p["image_a"] for p in suspects if p["split_a"] == "test"}
            | {p["image_b"] for p in suspects if p["split_b"] == "test"}
        ),
        "pairs": suspects if threshold is not None else listed[:UNCALIBRATED_LISTED],
        "matcher": dataclasses.asdict(matcher),
    }


def similar_groups(features: torch.Tensor, threshold: float) -> np.ndarray:
    """Component label (N,) of every image when images scoring >= `threshold` are joined (union-find)."""
    n = features.shape[0]
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    if n > 1:
        ranked = top_matches(features, features, min(NEIGHBOURS, n - 1), exclude=torch.arange(n))
        for i, neighbours in enumerate(ranked.tolist()):
            for j in neighbours:
                if float((features[i] * features[j]).sum()) >= threshold:
                    parent[root(i)] = root(j)
    return np.array([root(i) for i in range(n)])


def regroup_prepared(folder: Any, threshold: float, *, fractions, seed: int, device: str = "cpu") -> dict:
    """Rewrite a prepared folder's splits so that images the matcher joins at `threshold` share a group,
    and so a split; returns what changed (also saved as similar_groups.json beside the manifest)."""
    from meddenoise.data.cache import load_prepared
    from meddenoise.data.manifest import MANIFEST_COLUMNS, write_prepared
    from meddenoise.data.records import ImageRecord
    from meddenoise.data.splits import assign_splits
    from meddenoise.fileio import atomic_write_json

    data = load_prepared(folder)
    labels = similar_groups(clean_features(data, Matcher(), device), threshold)
    rows = data.records
    sizes = np.bincount(labels, minlength=len(rows))
    records = []
    for row, label in zip(rows, labels):
        # a joined component takes the group of its first member; a lone image keeps its own group
        group = rows[int(label)]["group"] if sizes[label] > 1 else row["group"]
        records.append(
            ImageRecord(row["image_id"], row["patient_id"], row["source"], row["source_path"], group)
        )
    splits = assign_splits(records, fractions, seed, "patient")
    extra = {key: [row[key] for row in rows] for key in rows[0] if key not in MANIFEST_COLUMNS}
    images = np.array(data.images)  # read fully: the file is replaced below
    params, fingerprint = data.params, data.info.get("input_fingerprint")
    moved = int(sum(1 for row, split in zip(rows, splits) if row["split"] != split))
    del data
    write_prepared(folder, images, records, splits, params, extra_columns=extra, fingerprint=fingerprint)
    summary = {
        "threshold": threshold,
        "joined_components": int(np.sum(sizes > 1)),
        "images_in_joined_components": int(sizes[sizes > 1].sum()),
        "images_moved_to_another_split": moved,
        "matcher": dataclasses.asdict(Matcher()),
    }
    atomic_write_json(Path(folder) / "similar_groups.json", summary)
    return summary
