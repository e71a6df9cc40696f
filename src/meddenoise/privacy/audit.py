"""The privacy audit of noise obfuscation: what an obfuscated image still gives away, per noise level.

For each noise std, on the query split (obfuscated exactly as the noise operator's `fixed` mode makes them):
1. distortion: PSNR/SSIM of the obfuscated image against the clean one (and of the two cheapest attacks:
   subtracting the known mean, and averaging the two copies the noise2noise set-up publishes);
2. linkage: rank a gallery of clean images (the whole prepared set by default) with `matcher.Matcher`; how
   often is the query's own original first / in the top 5;
3. re-identification: rank the gallery without the query's own image; is the nearest one the same patient;
4. reversal: PSNR/SSIM of a trained denoiser's output against the clean image, for the receiver's denoiser
   (trained on the pairs) and an outsider's (trained on other data).
Clean images are read only here, to measure; nothing in this module trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddenoise.console import progress
from meddenoise.data.split_claims import UNIT_IMAGE_UNKNOWN
from meddenoise.engine.runtime import resolve_device
from meddenoise.errors import ConfigError, DataError
from meddenoise.noise.spec import NoiseSpec
from meddenoise.privacy.matcher import (
    Matcher,
    features_of_rows,
    linkage_rate,
    reidentification_rate,
)


@dataclasses.dataclass(frozen=True)
class AuditPlan:
    """Which rows are queries and which are the gallery, decided once for all noise levels."""

    query_rows: np.ndarray  # (Q,) int64 rows of the prepared set
    gallery_rows: np.ndarray  # (G,) int64 rows, ascending
    query_in_gallery: np.ndarray  # (Q,) position of each query's own image in gallery_rows
    patients: list[str]  # patient id of every prepared row
    reid_queries: np.ndarray  # (E,) positions in query_rows whose patient has another image in the gallery
    reid_skip_reason: str | None
    groups: list[str] = dataclasses.field(default_factory=list)  # cluster of every prepared row
    unit: str = "patient"  # what a cluster is: "patient", or "pose group" for the rendered default


def plan_audit(
    patients: list[str],
    splits: np.ndarray,
    split: str,
    *,
    gallery_size: int = 0,
    max_queries: int = 0,
    seed: int = 0,
) -> AuditPlan:
    """Choose queries (the `split`, at most `max_queries`, seeded) and the gallery (all rows, or
    `gallery_size` rows that always include the queries' own images; 0 = all)."""
    total = len(patients)
    query_rows = np.flatnonzero(splits == split) if split != "all" else np.arange(total)
    if query_rows.size == 0:
        raise DataError(
            f"the prepared set has no images in split {split!r}; choose another split", parameter="split"
        )
    rng = np.random.default_rng(seed)
    if 0 < max_queries < query_rows.size:
        query_rows = np.sort(rng.choice(query_rows, size=max_queries, replace=False))
    if gallery_size <= 0 or gallery_size >= total:
        gallery_rows = np.arange(total, dtype=np.int64)
    else:
        if gallery_size < query_rows.size:
            raise ConfigError(
                f"gallery_size {gallery_size} is smaller than the {query_rows.size} queries; the gallery"
                " must hold every query's original: raise it, lower max_queries, or use 0 for the whole set",
                "gallery_size",
            )
        others = np.setdiff1d(np.arange(total), query_rows)
        fill = rng.choice(others, size=gallery_size - query_rows.size, replace=False)
        gallery_rows = np.sort(np.concatenate([query_rows, fill]))
    if gallery_rows.size < 2:
        raise DataError("the gallery needs at least 2 images; prepare a larger set")
    query_rows = query_rows.astype(np.int64)
    query_in_gallery = np.searchsorted(gallery_rows, query_rows)

    eligible, reason = _reidentification_queries(patients, query_rows, gallery_rows)
    return AuditPlan(
        query_rows=query_rows,
        gallery_rows=gallery_rows.astype(np.int64),
        query_in_gallery=query_in_gallery.astype(np.int64),
        patients=list(patients),
        reid_queries=eligible,
        reid_skip_reason=reason,
    )


def _reidentification_queries(
    patients: list[str], query_rows: np.ndarray, gallery_rows: np.ndarray
) -> tuple[np.ndarray, str | None]:
    """Positions in `query_rows` whose patient has another image in the gallery, or none and the reason."""
    gallery_patients = [patients[row] for row in gallery_rows]
    counts: dict[str, int] = {}
    for patient in gallery_patients:
        counts[patient] = counts.get(patient, 0) + 1
    none = np.zeros(0, dtype=np.int64)
    if len(counts) < 2:
        return none, (
            f"every gallery image belongs to one patient ({gallery_patients[0]!r}, as in the embedded"
            " default, rendered from one CT), so 'same patient' is always true: re-identification is not"
            " measurable"
        )
    eligible = np.array([i for i, row in enumerate(query_rows) if counts[patients[row]] >= 2], dtype=np.int64)
    if eligible.size == 0:
        return none, (
            "no query's patient has another image in the gallery (patients do not repeat in this source),"
            " so there is nothing to re-identify across images"
        )
    return eligible, None


def summarise(
    values: torch.Tensor | np.ndarray | list[float], groups: list[str] | None = None, unit: str = "patient"
) -> dict[str, Any]:
    """Mean with its 95% interval: t over images when every patient (group) has one query, a bootstrap
    over patients when one has several, none (NaN bounds, `note` says why) below 2 patients."""
    from meddenoise.metrics.clustered import group_interval

    array = np.asarray(torch.as_tensor(values).detach().cpu().double())
    found = group_interval(array, groups, unit=unit)
    return {
        "mean": found.mean,
        "ci_low": found.low,
        "ci_high": found.high,
        "count": found.n,
        "groups": found.groups,
        "method": found.method,
        "note": found.note,
    }


@dataclasses.dataclass
class _LevelAccumulator:
    """Per-image values of one noise level, gathered batch by batch."""

    features: list[torch.Tensor] = dataclasses.field(default_factory=list)
    values: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=dict)

    def add(self, name: str, per_image: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(per_image.detach().float().cpu())

    def summary(self, name: str, groups: list[str] | None = None, unit: str = "patient") -> dict[str, Any]:
        return summarise(torch.cat(self.values[name]), groups, unit)


@dataclasses.dataclass
class AuditedDenoiser:
    """A trained model loaded for the audit, with what the run folder says about it."""

    role: str  # "receiver" | "outsider"
    path: str
    model: torch.nn.Module
    metadata: dict[str, Any]


def load_denoiser(role: str, path: str | None, device: torch.device) -> AuditedDenoiser | None:
    if not path:
        return None
    from meddenoise.engine.checkpoint import load_trained_model

    model, metadata = load_trained_model(path, device=device)
    model.eval()
    # the audit records the same few facts of every denoiser, trained or classical
    info = {"model": metadata.model_name, "target": metadata.target, "noise": metadata.noise.to_dict()}
    return AuditedDenoiser(role=role, path=str(path), model=model, metadata=info)


def _quality(pred: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from meddenoise.metrics import psnr, ssim

    pred = pred.clamp(0.0, 1.0)
    return psnr(pred, clean), ssim(pred, clean)


def _measure_batch(
    acc: _LevelAccumulator,
    clean: torch.Tensor,
    keys: torch.Tensor,
    noise_op: Any,
    noise: NoiseSpec,
    matcher: Matcher,
    denoisers: list[AuditedDenoiser],
) -> None:
    """Obfuscate one clean batch (B, 1, H, W) and record every per-image measurement of it."""
    noisy = noise_op(clean, keys, seed=noise.copy_seed(0), mode="fixed")
    second = noise_op(clean, keys, seed=noise.copy_seed(1), mode="fixed")
    acc.features.append(matcher.features(noisy).cpu())
    mean = noise.mean if noise.kind != "poisson" else 0.0  # Poisson noise has mean zero
    for name, estimate in (
        ("obfuscated", noisy),
        ("mean_removed", noisy - mean),
        ("two_copy_average", 0.5 * (noisy + second) - mean),
    ):
        psnr_values, ssim_values = _quality(estimate, clean)
        acc.add(f"{name}_psnr", psnr_values)
        acc.add(f"{name}_ssim", ssim_values)
    with torch.inference_mode():
        for denoiser in denoisers:
            output = denoiser.model(noisy)
            output = output if isinstance(output, torch.Tensor) else output[-1]
            psnr_values, ssim_values = _quality(output.float(), clean)
            acc.add(f"{denoiser.role}_psnr", psnr_values)
            acc.add(f"{denoiser.role}_ssim", ssim_values)


def _denoiser_info(denoiser: AuditedDenoiser) -> dict[str, Any]:
    info: dict[str, Any] = {"run": denoiser.path} if denoiser.path else {}
    for key in ("model", "model_name", "target", "noise", "method", "params", "tuned_on"):
        if key in denoiser.metadata:
            info[key] = denoiser.metadata[key]
    return info


def audit_level(
    data: Any,
    plan: AuditPlan,
    gallery_features: torch.Tensor,
    *,
    noise: NoiseSpec,
    matcher: Matcher,
    denoisers: list[AuditedDenoiser],
    reversal_skips: dict[str, str],
    device: torch.device,
    batch_size: int,
) -> dict[str, Any]:
    """The audit of one noise level (`noise`, used in fixed mode: what a releasing site publishes)."""
    noise_op = noise.build()
    acc = _LevelAccumulator()
    classical = classical_reference(data, noise_op, noise, device)
    if classical is not None:
        denoisers = [*denoisers, classical]
    for start in range(0, plan.query_rows.size, batch_size):
        rows = plan.query_rows[start : start + batch_size]
        clean = torch.from_numpy(np.ascontiguousarray(data.images[rows])).to(device).unsqueeze(1)
        clean = clean.float() / float(data.max_value)  # (B, H, W) integer -> (B, 1, H, W) in [0, 1]
        keys = torch.from_numpy(data.image_keys[rows]).to(device)
        _measure_batch(acc, clean, keys, noise_op, noise, matcher, denoisers)

    query_features = torch.cat(acc.features).to(gallery_features.device)
    groups = [plan.groups[row] for row in plan.query_rows] if plan.groups else None
    unit = plan.unit

    def summary(name: str) -> dict[str, Any]:
        return acc.summary(name, groups, unit)

    result: dict[str, Any] = {"noise_std": noise.std, "noise_mean": noise.mean}
    result["distortion"] = {
        name: {"psnr": summary(f"{name}_psnr"), "ssim": summary(f"{name}_ssim")}
        for name in ("obfuscated", "mean_removed", "two_copy_average")
    }
    true_index = torch.from_numpy(plan.query_in_gallery)
    result["linkage"] = linkage_rate(query_features, gallery_features, true_index, groups, unit).to_dict()
    result["reidentification"] = reidentification(plan, query_features, gallery_features)
    reversal: dict[str, Any] = {}
    for role, reason in reversal_skips.items():
        reversal[role] = {"skipped": reason}
    if classical is None:
        reversal["classical"] = {"skipped": "no validation or training images to tune the Gaussian filter on"}
    for denoiser in denoisers:
        reversal[denoiser.role] = {
            **_denoiser_info(denoiser),
            "psnr": summary(f"{denoiser.role}_psnr"),
            "ssim": summary(f"{denoiser.role}_ssim"),
        }
    result["reversal"] = reversal
    return result


CLASSICAL_TUNE_IMAGES = 16


def classical_reference(
    data: Any, noise_op: Any, noise: NoiseSpec, device: torch.device
) -> AuditedDenoiser | None:
    """A Gaussian filter tuned on up to 16 validation images (training images when there is no validation
    split), never on the queries: every restoration claim of the audit stands beside what a filter anyone
    can run restores on the same queries."""
    from meddenoise.baselines.classical import build_baseline, tune_baseline

    rows = data.indices("val")
    if rows.size == 0:
        rows = data.indices("train")
    if rows.size == 0:
        return None
    rows = rows[:CLASSICAL_TUNE_IMAGES]
    clean = torch.from_numpy(np.ascontiguousarray(data.images[rows])).to(device).unsqueeze(1)
    clean = clean.float() / float(data.max_value)  # (n, H, W) integer -> (n, 1, H, W) in [0, 1]
    noisy = noise_op(clean, torch.from_numpy(data.image_keys[rows]).to(device), seed=noise.seed, mode="fixed")
    params, _ = tune_baseline("gaussian", noisy, clean, noise.mean, noise.std, max_images=None)
    baseline = build_baseline("gaussian", noise.mean, noise.std, **params)
    metadata = {
        "method": "gaussian",
        "params": params,
        "tuned_on": f"{rows.size} {data.splits[rows[0]]} images",
    }
    return AuditedDenoiser(role="classical", path="", model=baseline, metadata=metadata)


def reidentification(
    plan: AuditPlan, query_features: torch.Tensor, gallery_features: torch.Tensor, rank: Any = None
) -> dict:
    if plan.reid_skip_reason is not None:
        return {"skipped": plan.reid_skip_reason}
    eligible = torch.from_numpy(plan.reid_queries)
    query_patients = [plan.patients[plan.query_rows[i]] for i in plan.reid_queries]
    gallery_patients = [plan.patients[row] for row in plan.gallery_rows]
    own = torch.from_numpy(plan.query_in_gallery[plan.reid_queries])
    rate = reidentification_rate(
        query_features[eligible.to(query_features.device)],
        gallery_features,
        query_patients,
        gallery_patients,
        own,
        rank=rank,
    )
    out = rate.to_dict()
    out["excluded_queries"] = int(plan.query_rows.size - plan.reid_queries.size)
    return out


def run_audit(
    data_dir: str | Path,
    *,
    noise: NoiseSpec | None = None,
    levels: list[float] | None = None,
    split: str = "test",
    gallery_size: int = 0,
    max_queries: int = 0,
    seed: int = 0,
    run_dir: str | None = None,
    outsider_run_dir: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    matcher: Matcher | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """The whole audit as a JSON-ready dict (see the module docstring); `verdict.py` turns it into text.

    `noise` is the released obfuscation (its seed makes the noise; `seed` draws the queries and gallery);
    `levels` are the noise standard deviations audited in turn (default: `noise.std` alone).
    """
    from meddenoise.data.cache import load_prepared

    noise = noise or NoiseSpec()
    if noise.mode != "fixed":
        raise ConfigError(
            "the privacy audit measures released images, which carry fixed noise: noise.mode must be 'fixed'",
            "noise.mode",
        )
    levels = [float(std) for std in (levels if levels is not None else [noise.std])]
    if not levels:
        raise ConfigError("give at least one noise level to audit", "levels")

    matcher = matcher or Matcher()
    torch_device = resolve_device(device)
    data = load_prepared(data_dir)
    patients = [row["patient_id"] for row in data.records]
    plan = plan_audit(
        patients, data.splits, split, gallery_size=gallery_size, max_queries=max_queries, seed=seed
    )
    plan = dataclasses.replace(
        plan,
        groups=[row.get("group") or row["patient_id"] for row in data.records],
        unit="pose group" if data.params.get("source") == "default" else "patient",
    )
    if data.params.get("split_unit") == UNIT_IMAGE_UNKNOWN and plan.reid_skip_reason is not None:
        plan = dataclasses.replace(
            plan,
            reid_skip_reason=(
                "patient ids are unknown in this prepared folder (each image counted as its own patient), so "
                "whether two images show the same patient cannot be checked: re-identification is not "
                "measurable (it is not shown to be impossible)"
            ),
        )
    gallery_features = features_of_rows(
        matcher, data.images, plan.gallery_rows, data.max_value, device=torch_device
    )
    denoisers, reversal_skips = load_denoisers(run_dir, outsider_run_dir, torch_device)

    def say(text: str) -> None:  # a line per stage: logs (no terminal, no bar) show progress too
        if not quiet:
            print(text, flush=True)

    stds = list(levels)
    levels = []
    for std in progress(stds, quiet=quiet, desc="privacy audit", unit="level"):
        say(f"privacy audit: noise std {std:g}: linkage, re-identification (pixel matcher), reversal")
        levels.append(
            audit_level(
                data,
                plan,
                gallery_features,
                noise=noise.with_std(std),
                matcher=matcher,
                denoisers=denoisers,
                reversal_skips=reversal_skips,
                device=torch_device,
                batch_size=batch_size,
            )
        )
    say("privacy audit: the learned patient matcher at every level")
    learned = learned_attack(data, split, levels, noise, max_queries, seed, torch_device, batch_size)
    clean_query_features = features_of_rows(
        matcher, data.images, plan.query_rows, data.max_value, device=torch_device
    )
    settings = {
        "noise_kind": noise.kind,
        "noise_mean": noise.mean,
        "noise_stds": levels,
        "noise_dose": noise.dose,
        "noise_clamp": noise.clamp,
        "noise_seed": noise.seed,
        "seed": seed,
        "noise_mode": "fixed",
        "gallery_size": gallery_size,
        "max_queries": max_queries,
        "matcher": {"kind": "area-downsample + gaussian blur + NCC", **dataclasses.asdict(matcher)},
        "device": str(torch_device),
    }
    return {
        "data": _describe_data(data, plan, split),
        "settings": settings,
        "reference": {
            "reidentification_clean_queries": reidentification(plan, clean_query_features, gallery_features)
        },
        "outsider_overlap": _outsider_overlap(data, plan, outsider_run_dir),
        "levels": levels,
        "learned_matcher": learned,
    }


def learned_attack(
    data: Any,
    split: str,
    levels: list[dict[str, Any]],
    noise: NoiseSpec,
    max_queries: int,
    seed: int,
    device: torch.device,
    batch_size: int,
) -> dict[str, Any]:
    """Linkage and re-identification by the learned patient embedding, beside the pixel matcher's.

    A stronger attacker than the pixel matcher, and the honest one to report. Patients the embedding was
    fitted on are left out of queries and gallery alike (scoring them would flatter it), so its figures
    are over the remaining patients; the result says how many were left out and what chance is there.
    """
    from meddenoise.privacy.leaks import RegisteredRanking
    from meddenoise.privacy.reid_embedding import LearnedMatcher, fitted_rows, matcher_info, resolve_matcher

    try:
        learned = resolve_matcher("auto")
    except (ConfigError, OSError, ValueError) as exc:
        return {"skipped": f"the learned matcher could not be loaded ({exc})"}
    if not isinstance(learned, LearnedMatcher):
        return {"skipped": "the learned matcher's weights are not installed"}
    fitted = fitted_rows(learned, data.records, str(data.params.get("source", "")))
    kept = np.flatnonzero(~fitted)
    patients = [str(data.records[int(row)]["patient_id"]) for row in kept]
    info = {
        "matcher": matcher_info(learned),
        "excluded_images": int(fitted.sum()),
        "excluded_patients": len({str(data.records[int(r)]["patient_id"]) for r in np.flatnonzero(fitted)}),
    }
    try:
        plan = plan_audit(patients, data.splits[kept], split, max_queries=max_queries, seed=seed)
    except (DataError, ConfigError) as exc:
        return {**info, "skipped": f"too few images outside the embedding's fitting patients: {exc}"}
    plan = dataclasses.replace(plan, groups=patients, unit="patient")
    if data.params.get("split_unit") == UNIT_IMAGE_UNKNOWN:
        plan = dataclasses.replace(plan, reid_skip_reason="patient ids are unknown in this prepared folder")
    gallery = features_of_rows(learned, data.images, kept[plan.gallery_rows], data.max_value, device=device)
    ranking = RegisteredRanking(learned)
    ranked_gallery = features_of_rows(
        ranking, data.images, kept[plan.gallery_rows], data.max_value, device=device
    )
    queries = kept[plan.query_rows]
    per_level = []
    for level in levels:
        level_noise = noise.with_std(level["noise_std"])
        noise_op, chunks, ranked_chunks = level_noise.build(), [], []
        for start in range(0, queries.size, batch_size):
            rows = queries[start : start + batch_size]
            clean = torch.from_numpy(np.ascontiguousarray(data.images[rows])).to(device).unsqueeze(1)
            clean = clean.float() / float(data.max_value)  # (B, H, W) integer -> (B, 1, H, W) in [0, 1]
            keys = torch.from_numpy(data.image_keys[rows]).to(device)
            noisy = noise_op(clean, keys, seed=level_noise.copy_seed(0), mode="fixed")  # the released copy
            chunks.append(learned.features(noisy).cpu())
            ranked_chunks.append(ranking.features(noisy).cpu())
        features = torch.cat(chunks).to(gallery.device)
        ranked_features = torch.cat(ranked_chunks).to(ranked_gallery.device)
        groups = [patients[row] for row in plan.query_rows]
        true_index = torch.from_numpy(plan.query_in_gallery)
        per_level.append(
            {
                "noise_std": level["noise_std"],
                "linkage": linkage_rate(features, gallery, true_index, groups, "patient").to_dict(),
                "reidentification": reidentification(plan, features, gallery),
                "registered": {
                    "linkage": linkage_rate(
                        ranked_features, ranked_gallery, true_index, groups, "patient", rank=ranking.rank
                    ).to_dict(),
                    "reidentification": reidentification(
                        plan, ranked_features, ranked_gallery, rank=ranking.rank
                    ),
                },
            }
        )
    info["registered_score"] = ranking.scorer.describe()["score"]
    return {**info, "queries": int(queries.size), "gallery": int(plan.gallery_rows.size), "levels": per_level}


def load_denoisers(
    run_dir: str | None, outsider_run_dir: str | None, device: torch.device
) -> tuple[list[AuditedDenoiser], dict[str, str]]:
    """The receiver's and the outsider's denoisers that were given, and why each missing one is skipped."""
    denoisers, skips = [], {}
    for role, path, reason in (
        ("receiver", run_dir, "no --run given (the receiver's denoiser, trained on the released pairs)"),
        ("outsider", outsider_run_dir, "no --outsider-run given (a denoiser trained only on other data)"),
    ):
        denoiser = load_denoiser(role, path, device)
        if denoiser is None:
            skips[role] = reason
        else:
            denoisers.append(denoiser)
    return denoisers, skips


def _describe_data(data: Any, plan: AuditPlan, split: str) -> dict[str, Any]:
    return {
        "folder": str(data.folder),
        "sources": sorted({row.get("source", "") for row in data.records}),
        "images": len(data),
        "patients": len(set(plan.patients)),
        "query_patients": len({plan.patients[row] for row in plan.query_rows}),
        "query_groups": len({plan.groups[row] for row in plan.query_rows}) if plan.groups else None,
        "cluster_unit": plan.unit,
        "split_unit": data.params.get("split_unit", ""),
        "split": split,
        "queries": int(plan.query_rows.size),
        "gallery": int(plan.gallery_rows.size),
        "image_size": list(data.images.shape[1:]),
    }


def _outsider_overlap(data: Any, plan: AuditPlan, outsider_run_dir: str | None) -> dict[str, Any] | None:
    """How many audited queries the outsider's run trained on (0 for an honest outsider's attack).

    Images are compared by pixel hash (manifest `content_hash`), so the same picture under another id or in
    another prepared folder still counts.
    """
    if not outsider_run_dir:
        return None
    from meddenoise.rundir import RunDir

    run = RunDir(outsider_run_dir)
    split_file = run.split_file
    if not split_file.is_file():
        return {
            "checked": False,
            "reason": f"{split_file} not found; cannot check the outsider's training set",
        }
    train_split = run.train_split_name()
    rows = run.read_split()
    column = "content_hash" if rows and "content_hash" in rows[0] else "image_id"
    if not rows or column not in rows[0] or "split" not in rows[0]:
        return {"checked": False, "reason": f"{split_file} has no content_hash/image_id and split columns"}
    trained = {row[column] for row in rows if train_split == "all" or row["split"] == train_split}
    queries = {data.records[row][column] for row in plan.query_rows}
    return {
        "checked": True,
        "compared_by": column,
        "trained_images": len(trained),
        "queries_seen_in_training": len(trained & queries),
    }
