"""A deliberately simple image matcher, and the linkage / re-identification scores built on it.

The matcher is what a curious receiver could write in an afternoon: downsample by area averaging, blur a
little, subtract the mean, normalise to unit length, and compare by dot product (normalised cross-correlation,
NCC). Area averaging over k x k pixels divides the variance of independent noise by k^2, and NCC ignores any
constant brightness offset (the obfuscation's mean 0.1), so additive noise is largely averaged away. If this
matcher links obfuscated images back to their originals, a stronger attacker certainly can.

Scores are computed as one batched matmul per chunk of queries: (Q, D) @ (D, G) -> (Q, G).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_FEATURE_SIZE = 32
DEFAULT_BLUR_SIGMA = 1.0


@dataclasses.dataclass(frozen=True)
class Matcher:
    """`feature_size`: side of the downsampled image; `blur_sigma`: Gaussian blur (pixels at that size)."""

    feature_size: int = DEFAULT_FEATURE_SIZE
    blur_sigma: float = DEFAULT_BLUR_SIGMA

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float images -> (B, feature_size**2) unit vectors with zero mean."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"matcher expects (B, 1, H, W) images, got {tuple(images.shape)}")
        small = F.adaptive_avg_pool2d(images.float(), (self.feature_size, self.feature_size))  # (B,1,s,s)
        small = gaussian_blur(small, self.blur_sigma)
        flat = small.flatten(1)  # (B, s*s)
        flat = flat - flat.mean(dim=1, keepdim=True)
        norm = flat.norm(dim=1, keepdim=True)
        # a (nearly) constant image has no pattern to match: a zero vector, not rounding noise blown up
        # to unit length, and not NaN
        return torch.where(norm > 1e-6, flat / norm.clamp_min(1e-6), torch.zeros_like(flat))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding; sigma <= 0 returns the input."""
    if sigma <= 0:
        return images
    radius = max(1, int(math.ceil(3.0 * sigma)))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    if radius < 1:
        return images
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(padded, horizontal, groups=channels)
    return F.conv2d(blurred, vertical, groups=channels)


def top_matches(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Indices (Q, k) of the k gallery items most correlated with each query, best first.

    `exclude` (Q,) int64 holds one gallery index per query that may not be returned (the query's own image
    in re-identification), or -1 for none.
    """
    gallery_size = gallery_features.shape[0]
    k = min(k, gallery_size - (1 if exclude is not None else 0))
    if k < 1:
        raise ValueError("the gallery is too small to rank")
    gallery_t = gallery_features.t().contiguous()  # (D, G)
    results = []
    for start in range(0, query_features.shape[0], chunk_size):
        scores = query_features[start : start + chunk_size] @ gallery_t  # (q, D) @ (D, G) -> (q, G)
        if exclude is not None:
            rows = exclude[start : start + chunk_size].to(scores.device)
            valid = rows >= 0
            scores[torch.nonzero(valid).squeeze(1), rows[valid]] = -float("inf")
        results.append(torch.topk(scores, k, dim=1).indices)
    return torch.cat(results)


# (query features, gallery features, k, exclude=...) -> (Q, k) gallery indices, best first (`top_matches`)
Ranking = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class HitRate:
    """Top-1 / top-5 hit rates with the rates a guess from the same gallery would reach (chance).

    Queries of one patient are not independent: when a patient (group) has several queries the intervals
    resample patients (`interval_method` "group-bootstrap") and `per_group_top1` gives the average of the
    patients' own hit rates beside the per-query rate; below 2 patients there is no interval (NaN bounds,
    `interval_note` says why). With one query per patient the intervals are Wilson intervals; when the
    bootstrap gives none (too few patients, or every query hit or missed) but every patient's queries agree,
    the Wilson interval over patients ("group-wilson").
    """

    queries: int
    gallery: int
    top1: float
    top5: float
    chance_top1: float
    chance_top5: float
    top1_interval: tuple[float, float]
    top5_interval: tuple[float, float]
    groups: int = 0
    per_group_top1: float = math.nan
    per_group_top5: float = math.nan
    interval_method: str = "wilson"
    interval_note: str = ""
    unit: str = "patient"

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def hit_rate(
    hits1: np.ndarray,
    hits5: np.ndarray,
    gallery: int,
    chance: tuple[float, float],
    query_groups: Sequence[str] | None,
    unit: str = "patient",
) -> HitRate:
    """Rates and intervals of per-query hits (bool arrays (Q,)), cluster-aware when `query_groups` repeat."""
    from meddenoise.metrics.clustered import group_interval

    queries = int(hits1.size)
    groups = [str(g) for g in query_groups] if query_groups is not None else [str(i) for i in range(queries)]
    n_groups = len(set(groups))
    per_group = {}
    for group, hit1, hit5 in zip(groups, hits1.tolist(), hits5.tolist()):
        per_group.setdefault(group, []).append((hit1, hit5))
    per_group_top1 = float(np.mean([np.mean([h[0] for h in v]) for v in per_group.values()]))
    per_group_top5 = float(np.mean([np.mean([h[1] for h in v]) for v in per_group.values()]))
    if n_groups == queries:
        intervals = (wilson_interval(int(hits1.sum()), queries), wilson_interval(int(hits5.sum()), queries))
        method, note = "wilson", ""
    else:
        found = [group_interval(h.astype(np.float64), groups, unit=unit) for h in (hits1, hits5)]
        intervals = tuple((f.low, f.high) for f in found)
        method, note = found[0].method, found[0].note
        patient_hits = [_all_or_none(h, groups) for h in (hits1, hits5)]
        if not found[0].available and n_groups >= 2 and None not in patient_hits:
            # Every patient's queries agree (e.g. all linked), so a bootstrap has nothing to resample, yet
            # each patient is one independent trial: the Wilson interval over patients still holds.
            intervals = tuple(wilson_interval(k, n_groups) for k in patient_hits)
            method, note = "group-wilson", ""
    return HitRate(
        queries=queries,
        gallery=gallery,
        top1=float(hits1.mean()),
        top5=float(hits5.mean()),
        chance_top1=chance[0],
        chance_top5=chance[1],
        top1_interval=intervals[0],
        top5_interval=intervals[1],
        groups=n_groups,
        per_group_top1=per_group_top1,
        per_group_top5=per_group_top5,
        interval_method=method,
        interval_note=note,
        unit=unit,
    )


def _all_or_none(hits: np.ndarray, groups: list[str]) -> int | None:
    """The number of groups whose queries all hit, when every group's queries agree; else None."""
    outcomes: dict[str, set[bool]] = {}
    for group, hit in zip(groups, hits.tolist()):
        outcomes.setdefault(group, set()).add(bool(hit))
    if any(len(seen) > 1 for seen in outcomes.values()):
        return None
    return sum(1 for seen in outcomes.values() if True in seen)


def linkage_rate(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    true_index: torch.Tensor,
    query_groups: Sequence[str] | None = None,
    unit: str = "patient",
    rank: Ranking | None = None,
) -> HitRate:
    """How often each query's original (gallery index `true_index`, (Q,)) is ranked first / in the top 5.
    `rank` orders the gallery (default: `top_matches`, the features' dot product)."""
    gallery_size = gallery_features.shape[0]
    ranked = (rank or top_matches)(query_features, gallery_features, 5)  # (Q, k)
    found = ranked == true_index.view(-1, 1).to(ranked.device)
    hits1 = found[:, :1].any(dim=1).cpu().numpy()
    hits5 = found.any(dim=1).cpu().numpy()
    chance = (1.0 / gallery_size, min(5, gallery_size) / gallery_size)
    return hit_rate(hits1, hits5, gallery_size, chance, query_groups, unit)


def reidentification_rate(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    query_patients: Sequence[str],
    gallery_patients: Sequence[str],
    own_index: torch.Tensor,
    rank: Ranking | None = None,
) -> HitRate:
    """How often the nearest OTHER gallery image (own image `own_index` excluded) shows the query's patient.

    Call with eligible queries only (their patient has at least one other image in the gallery); chance is
    averaged per query from the gallery's composition (`reidentification_chance`). The intervals resample
    the query patients when a patient has several queries.
    """
    codes = {name: code for code, name in enumerate(sorted(set(gallery_patients) | set(query_patients)))}
    gallery_codes = torch.tensor([codes[p] for p in gallery_patients], dtype=torch.int64)
    query_codes = torch.tensor([codes[p] for p in query_patients], dtype=torch.int64)
    ranked = (rank or top_matches)(query_features, gallery_features, 5, exclude=own_index)  # (Q, k)
    same_patient = gallery_codes[ranked.cpu()] == query_codes.view(-1, 1)  # (Q, k)
    hits1 = same_patient[:, :1].any(dim=1).numpy()
    hits5 = same_patient.any(dim=1).numpy()
    chance = reidentification_chance(query_patients, gallery_patients, own_index.tolist())
    return hit_rate(hits1, hits5, len(gallery_patients), chance, list(query_patients))


def reidentification_chance(
    query_patients: Sequence[str], gallery_patients: Sequence[str], own_index: Sequence[int], k: int = 5
) -> tuple[float, float]:
    """Expected top-1 and top-k hit rates of a matcher that ranks the gallery at random.

    For a query whose patient has `m` of the `n` candidate images (own image removed), a random first pick
    hits with probability m/n; a random k-subset misses only if all k come from the other n - m images:
    P(hit@k) = 1 - C(n - m, k) / C(n, k). Both are averaged over queries.
    """
    counts: dict[str, int] = {}
    for patient in gallery_patients:
        counts[patient] = counts.get(patient, 0) + 1
    chance1 = chancek = 0.0
    for patient, own in zip(query_patients, own_index):
        own_in_gallery = 1 if own >= 0 else 0
        candidates = len(gallery_patients) - own_in_gallery
        same = counts.get(patient, 0) - own_in_gallery
        chance1 += same / candidates
        picks = min(k, candidates)
        chancek += 1.0 - math.comb(candidates - same, picks) / math.comb(candidates, picks)
    queries = max(1, len(query_patients))
    return chance1 / queries, chancek / queries


def wilson_interval(hits: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at 0 and 1, unlike the normal approximation)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = hits / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def features_of_rows(
    matcher: Matcher,
    images: np.ndarray,
    rows: np.ndarray,
    max_value: int,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Matcher features (len(rows), D) of clean images read in batches from an (N, H, W) (memmap) array."""
    chunks = []
    for start in range(0, len(rows), batch_size):
        batch = np.ascontiguousarray(images[np.sort(rows[start : start + batch_size])])
        order = np.argsort(np.argsort(rows[start : start + batch_size]))  # back to the requested order
        pixels = torch.from_numpy(batch[order]).to(device).unsqueeze(1).float() / float(max_value)
        chunks.append(matcher.features(pixels))
    dim = getattr(matcher, "dim", None) or matcher.feature_size**2  # the learned matcher has `dim`
    return torch.cat(chunks) if chunks else torch.zeros(0, dim, device=device)
