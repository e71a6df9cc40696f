"""Likely same-patient pairs across splits, found with a patient matcher on the clean images.

When patient ids are unknown, every image is its own "patient" and a split by patient is a split by image:
repeat studies of one person can sit in training and test. A matcher (the learned patient embedding of
`privacy.reid_embedding` by default, or the pixel matcher of `privacy.matcher`) scores every image against
the images of the other splits; each image keeps its NEIGHBOURS best partners there, and a candidate pair
scoring at or above a threshold is a suspect. With the learned matcher the score is `LeakScorer`'s: the
embedding averaged over small shifts and mixed with the pixel correlation finds each image's POOL most
similar images, and those pairs are scored again with the registered correlation (`privacy.registration`:
the best correlation over small affine moves), which takes most of the final score.

The threshold is never a guess: it is calibrated on a prepared folder whose patient ids are known with the
SAME candidate scheme it is applied with (the calibration images are split by image at random with the
checked folder's split fractions, and each keeps its NEIGHBOURS best partners in the other splits), as the
lowest score at which the candidates above it are the same patient with the requested precision. The
calibration also estimates the recall (the share of cross-split same-patient pairs, and of images with a
same-patient image in another split, that the threshold finds), so a count of suspects is reported as what
it is: a lower bound. Without a calibration or a given threshold the pairs are ranked for inspection and no
count is claimed. Rows of the learned matcher's own fitting patients are left out (`fitted_rows`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from meddenoise.privacy.matcher import Matcher, features_of_rows, top_matches
from meddenoise.privacy.registration import Registration
from meddenoise.privacy.reid_embedding import fitted_rows, matcher_info

NEIGHBOURS = 5  # candidates kept per image before thresholding
UNCALIBRATED_LISTED = 200  # without a threshold: the best-scoring pairs, for inspection only
CALIBRATION_REPEATS = 5  # random image-level splits of the calibration folder, pooled
GROUPING_PRECISION = 0.7  # the threshold suggested for --group-similar: a false join costs only balance
TTA_SHIFT = 3  # learned matcher: its embedding is averaged over shifts of 0 and +-this many pixels (at 64 px)
PIXEL_WEIGHT = 0.35  # learned matcher: the pixel correlation's share of the feature score
POOL = 30  # each image's most similar images (feature score) that the registered correlation scores again
REGISTRATION_WEIGHT = 0.7  # learned matcher: the registered correlation's share of a pair's final score


@dataclasses.dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None: no score reaches the precision
    precision: float  # the requested precision
    achieved_precision: float | None  # of the calibration candidates at or above the threshold
    recall: float | None  # of the cross-split same-patient pairs, the share found at the threshold
    images: int
    patients: int
    source: str
    image_recall: float | None = None  # of images with a same-patient image in another split, share found
    candidate_pairs: int = 0  # calibration candidates scored (all repeats)
    true_pairs: int = 0  # cross-split same-patient pairs in the calibration splits (all repeats)
    scheme: str = ""
    excluded_fitting_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LeakScorer:
    """How a pair is scored. `features`: vectors whose dot product is the feature score; for the learned
    matcher, its embedding averaged over small shifts joined with the pixel matcher's features (feature
    score = (1 - w) * learned cosine + w * pixel correlation); any other matcher's own features unchanged.
    `registration_weight` v: the final score of a pair among an image's POOL best by feature score is
    (1 - v) * feature score + v * registered correlation (learned matcher only).

    Each part was measured on held-out NIH patients: averaging over shifts steadies the embedding (a few
    pixels of pose change its nearest neighbours), the pixel score breaks ties between patients the
    embedding finds alike, and the registered correlation sees past pose differences (benchmarks/
    reid_embedding.py, docs/privacy.md). Shifts only: a chest radiograph is never mirrored, so no flips."""

    def __init__(
        self,
        matcher: Any,
        shift: int | None = None,
        pixel_weight: float | None = None,
        registration_weight: float | None = None,
    ) -> None:
        from meddenoise.privacy.reid_embedding import LearnedMatcher

        self.matcher = matcher
        self.learned = isinstance(matcher, LearnedMatcher)
        self.shift = (TTA_SHIFT if shift is None else shift) if self.learned else 0
        self.pixel_weight = (PIXEL_WEIGHT if pixel_weight is None else pixel_weight) if self.learned else 0.0
        self.registration_weight = (
            (REGISTRATION_WEIGHT if registration_weight is None else registration_weight)
            if self.learned
            else 0.0
        )
        self.registration = Registration()
        self.pixel = Matcher()
        self.dim = (
            matcher.dim + self.pixel.feature_size**2
            if self.learned
            else getattr(matcher, "dim", None) or matcher.feature_size**2
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if not self.learned:
            return self.matcher.features(images)
        import torch.nn.functional as F

        from meddenoise.privacy.reid_embedding import resize_input

        small = resize_input(images.float())
        pad = self.shift
        padded = F.pad(small, (pad, pad, pad, pad), mode="replicate")
        side = small.shape[-1]
        offsets = [(dy, dx) for dy in (-pad, 0, pad) for dx in (-pad, 0, pad)] if pad else [(0, 0)]
        learned = sum(
            self.matcher.features(padded[:, :, pad + dy : pad + dy + side, pad + dx : pad + dx + side])
            for dy, dx in offsets
        )
        learned = F.normalize(learned, dim=1)
        pixel = self.pixel.features(images)
        w = self.pixel_weight
        return torch.cat([learned * (1 - w) ** 0.5, pixel * w**0.5], dim=1)

    def describe(self) -> dict[str, Any]:
        if not self.learned:
            return {"score": "the matcher's own"}
        v, w = self.registration_weight, self.pixel_weight
        feature = (
            f"{1 - w:g} x learned cosine (embedding averaged over shifts of 0 and +-{self.shift} px at "
            f"64 x 64, no flips) + {w:g} x pixel correlation"
        )
        registration = self.registration
        return {
            "score": (
                f"{1 - v:g} x ({feature}) + {v:g} x registered correlation (best over "
                f"{len(registration.moves())} small affine moves, high-pass filtered at "
                f"{registration.size} x {registration.size}), for each image's {POOL} best pairs"
                if v
                else feature
            ),
            "shift_px": self.shift,
            "pixel_weight": w,
            "registration_weight": v,
            "pool": POOL,
        }


@dataclasses.dataclass(frozen=True)
class PairScores:
    """Each image's most similar images in its folder, best first: `partners` (N, P) positions among the
    scored rows, `scores` (N, P) the pair scores (`LeakScorer`)."""

    partners: np.ndarray
    scores: np.ndarray

    @property
    def count(self) -> int:
        return int(self.partners.shape[0])


def score_pairs(data: Any, matcher: Any, device: str = "cpu", rows: np.ndarray | None = None) -> PairScores:
    """Every image's POOL best partners among `rows` of a prepared folder and their scores (`LeakScorer`)."""
    scorer = LeakScorer(matcher)
    rows = np.arange(len(data.records)) if rows is None else np.asarray(rows)
    features = features_of_rows(scorer, data.images, rows, data.max_value, device=device)
    n = len(rows)
    pool = min(POOL, n - 1)
    if pool < 1:
        return PairScores(np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0)))
    partners = top_matches(features, features, pool, exclude=torch.arange(n)).cpu().numpy()  # (N, P)
    scores = (features.unsqueeze(1) * features[torch.from_numpy(partners)]).sum(-1).double().cpu().numpy()
    v = scorer.registration_weight
    if v:
        prepared = features_of_rows(scorer.registration, data.images, rows, data.max_value, device=device)
        pairs = np.stack([np.repeat(np.arange(n), pool), partners.reshape(-1)], 1)
        unique, inverse = np.unique(np.sort(pairs, 1), axis=0, return_inverse=True)
        registered = scorer.registration.scores(prepared, unique)[inverse.reshape(-1)].reshape(n, pool)
        partners, scores = rescored(partners, scores, registered, v)
    return PairScores(partners, scores)


def rescored(
    partners: np.ndarray, feature: np.ndarray, registered: np.ndarray, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's partners (R, P) and scores (1 - weight) * feature + weight * registered, best first."""
    scores = (1 - weight) * feature + weight * registered
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(partners, order, 1), np.take_along_axis(scores, order, 1)


class RegisteredRanking:
    """The leak score as an attacker's ranking of a gallery, for the privacy audit: `features` joins each
    image's feature-score vector (`LeakScorer`) with its registration input, and `rank` (the signature of
    `matcher.top_matches`) orders each query's POOL best gallery images by feature score again by
    (1 - v) * feature score + v * registered correlation. Rows can be subset freely: everything a pair's
    score needs travels in the two rows."""

    def __init__(self, matcher: Any) -> None:
        self.scorer = LeakScorer(matcher)
        self.split = self.scorer.dim
        self.dim = self.split + self.scorer.registration.dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.scorer.features(images), self.scorer.registration.features(images)], dim=1)

    def rank(
        self,
        query: torch.Tensor,
        gallery: torch.Tensor,
        k: int,
        *,
        exclude: torch.Tensor | None = None,
    ) -> torch.Tensor:
        d, v = self.split, self.scorer.registration_weight
        pool = top_matches(query[:, :d], gallery[:, :d], max(k, POOL), exclude=exclude)  # (Q, P)
        if not v:
            return pool[:, :k]
        feature = (query[:, None, :d] * gallery[pool, :d]).sum(-1)  # (Q, P)
        prepared = torch.cat([query[:, d:], gallery[:, d:]])
        pairs = np.stack(
            [np.repeat(np.arange(len(pool)), pool.shape[1]), len(query) + pool.cpu().numpy().ravel()], 1
        )
        registered = self.scorer.registration.scores(prepared, pairs).reshape(tuple(pool.shape))
        ranked, _ = rescored(pool.cpu().numpy(), feature.double().cpu().numpy(), registered, v)
        return torch.from_numpy(ranked[:, :k].copy()).to(pool.device)


def split_fractions(splits: np.ndarray) -> tuple[float, float, float]:
    total = max(1, len(splits))
    return tuple(float(np.sum(splits == name)) / total for name in ("train", "val", "test"))  # type: ignore


def image_level_split(count: int, fractions, rng: np.random.Generator) -> np.ndarray:
    """A random split by image with the given fractions, as a folder without patient ids gets."""
    order = rng.permutation(count)
    edges = np.round(np.cumsum(fractions)[:-1] * count).astype(int)
    splits = np.empty(count, dtype=object)
    for name, part in zip(("train", "val", "test"), np.split(order, edges)):
        splits[part] = name
    return splits.astype(str)


def calibrate(
    pairs: PairScores,
    patients: list[str],
    precision: float,
    source: str,
    *,
    fractions=(0.5, 0.33, 0.17),
    seed: int = 0,
    repeats: int = CALIBRATION_REPEATS,
    excluded: int = 0,
) -> Calibration:
    """The lowest score at which this folder's cross-split candidates are one patient with `precision`."""
    n = pairs.count
    counts: dict[str, int] = {}
    for patient in patients:
        counts[patient] = counts.get(patient, 0) + 1
    scheme = (
        f"{repeats} random image-level splits ({', '.join(f'{f:.2f}' for f in fractions)}), "
        f"{NEIGHBOURS} best partners per image in the other splits"
    )
    empty = Calibration(
        None, precision, None, None, n, len(counts), source, scheme=scheme, excluded_fitting_images=excluded
    )
    if n < 3 or not any(c > 1 for c in counts.values()):
        return empty
    rng = np.random.default_rng(seed)
    code = {name: i for i, name in enumerate(sorted(counts))}
    labels = np.array([code[p] for p in patients])
    scores, same, runs, true_pairs = [], [], [], 0
    true_images: list[set[int]] = []
    for repeat in range(repeats):
        splits = image_level_split(n, fractions, rng)
        for i, j, score in cross_split_pairs(pairs, splits):
            scores.append(score)
            same.append(labels[i] == labels[j])
            runs.append((repeat, i, j))
        cross = (labels[:, None] == labels[None, :]) & (splits[:, None] != splits[None, :])
        true_pairs += int(np.triu(cross, 1).sum())
        true_images.append(set(np.flatnonzero(cross.any(1)).tolist()))
    scores_a, same_a = np.array(scores), np.array(same, dtype=bool)
    order = np.argsort(-scores_a, kind="stable")
    hits = np.cumsum(same_a[order])
    precisions = hits / np.arange(1, len(order) + 1)
    good = np.flatnonzero(precisions >= precision)
    if not same_a[order[good]].any() or true_pairs == 0:
        return empty
    # The longest prefix of the ranking that keeps the precision, cut back to its last true pair: the
    # pairs below that would only spend the error budget on false ones without finding another leak.
    good = good[same_a[order[good]]]
    cut = int(good.max())
    threshold = float(scores_a[order[cut]])
    found_images = [set() for _ in range(repeats)]
    for k in order[: cut + 1]:
        if same_a[k]:
            repeat, i, j = runs[k]
            found_images[repeat].update((i, j))
    eligible = sum(len(t) for t in true_images)
    return Calibration(
        threshold=threshold,
        precision=precision,
        achieved_precision=float(precisions[cut]),
        recall=float(hits[cut]) / true_pairs,
        images=n,
        patients=len(counts),
        source=source,
        image_recall=sum(len(f & t) for f, t in zip(found_images, true_images)) / max(1, eligible),
        candidate_pairs=len(scores),
        true_pairs=true_pairs,
        scheme=scheme,
        excluded_fitting_images=excluded,
    )


def cross_split_pairs(pairs: PairScores, splits: np.ndarray) -> list[tuple[int, int, float]]:
    """(i, j, score) with i < j in different splits, each image's NEIGHBOURS best partners among its scored
    partners in the other splits, best first."""
    found: dict[tuple[int, int], float] = {}
    splits = np.asarray(splits)
    for query in range(pairs.count):
        other = splits[pairs.partners[query]] != splits[query]
        for partner, score in zip(
            pairs.partners[query][other][:NEIGHBOURS].tolist(), pairs.scores[query][other][:NEIGHBOURS]
        ):
            found[(min(query, partner), max(query, partner))] = float(score)
    return sorted(((i, j, s) for (i, j), s in found.items()), key=lambda item: -item[2])


def _unfitted(data: Any, matcher: Any) -> np.ndarray:
    """Rows of `data` outside the learned matcher's fitting patients (all rows for the pixel matcher)."""
    source = str(data.params.get("source", ""))
    return np.flatnonzero(~fitted_rows(matcher, data.records, source))


def find_leaks(
    data: Any,
    *,
    threshold: float | None = None,
    calibration_data: Any = None,
    precision: float = 0.9,
    matcher: Any = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Suspect pairs across the splits of `data` and how the threshold was set (module docstring)."""
    matcher = matcher or Matcher()
    rows = _unfitted(data, matcher)
    scored = score_pairs(data, matcher, device, rows)
    splits = np.asarray(data.splits)[rows]
    calibration = grouping = None
    if threshold is None and calibration_data is not None:
        calibration_rows = _unfitted(calibration_data, matcher)
        patients = [calibration_data.records[int(r)]["patient_id"] for r in calibration_rows]
        calibration_pairs = score_pairs(calibration_data, matcher, device, calibration_rows)

        def calibrated(wanted: float) -> Calibration:
            return calibrate(
                calibration_pairs,
                patients,
                wanted,
                str(calibration_data.folder),
                fractions=split_fractions(splits),
                seed=seed,
                excluded=len(calibration_data.records) - len(calibration_rows),
            )

        calibration = calibrated(precision)
        grouping = calibration if precision <= GROUPING_PRECISION else calibrated(GROUPING_PRECISION)
        threshold = calibration.threshold
    pairs = cross_split_pairs(scored, splits)
    records = data.records
    listed = []
    for i, j, score in pairs:
        a, b = int(rows[i]), int(rows[j])
        listed.append(
            {
                "image_a": records[a]["image_id"],
                "split_a": records[a]["split"],
                "image_b": records[b]["image_id"],
                "split_b": records[b]["split"],
                "score": score,
                "row_a": a,
                "row_b": b,
            }
        )
    suspects = [pair for pair in listed if threshold is not None and pair["score"] >= threshold]
    test_images = {p["image_a"] for p in suspects if p["split_a"] == "test"} | {
        p["image_b"] for p in suspects if p["split_b"] == "test"
    }
    patients = len({records[int(r)]["patient_id"] for r in rows})
    return {
        "folder": str(data.folder),
        "images": len(records),
        "images_checked": int(len(rows)),
        "excluded_fitting_images": int(len(records) - len(rows)),
        "threshold": threshold,
        "threshold_source": (
            "given"
            if calibration is None and threshold is not None
            else f"calibrated on {calibration.source}"
            if calibration is not None and threshold is not None
            else "none"
        ),
        "calibration": calibration.to_dict() if calibration is not None else None,
        # joining for --group-similar may be looser than listing: a false join only keeps two unrelated
        # images in one split (privacy.grouping)
        "group_similar_threshold": (
            grouping.threshold if grouping is not None and grouping.threshold is not None else threshold
        ),
        "group_similar_precision": (
            grouping.precision if grouping is not None and grouping.threshold is not None else None
        ),
        "suspects": len(suspects) if threshold is not None else None,
        "suspects_are": "a lower bound: pairs the matcher misses are not counted",
        "suspect_images_in_test": len(test_images),
        "estimated_pairs": _scaled(len(suspects), calibration, "recall") if threshold is not None else None,
        "estimated_test_images": _scaled(len(test_images), calibration, "image_recall"),
        "patients_in_manifest": patients,
        "pairs": suspects if threshold is not None else listed[:UNCALIBRATED_LISTED],
        "matcher": matcher_info(matcher),
        "score": LeakScorer(matcher).describe(),
    }


def _scaled(count: int, calibration: Calibration | None, key: str) -> float | None:
    """count / the calibration's estimated recall: about how many exist, if the recall transfers."""
    recall = getattr(calibration, key, None) if calibration is not None else None
    return count / recall if recall else None
