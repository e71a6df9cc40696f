"""Membership inference on a trained denoiser: can an attacker who holds a clean image tell whether its
patient was in the training set?

The attacker obfuscates the candidate image exactly as the releasing site did (the run's noise, seed and
`fixed` mode, i.e. the very input a member was trained on), denoises it with the model and measures the
reconstruction error (per-image mean squared error against the clean image). Members (training patients)
should be reconstructed better if the model memorised them.

- Loss-threshold attack: score = -error.
- Calibrated attack (offline LiRA with a global variance, sized for a CPU): `count` reference models are
  trained like the run (same model, target, noise, schedule; other seeds) on patients disjoint from both the
  members and the non-members (the `val` split); an image's score is how much lower its error is under the
  audited model than under the reference models, on a log scale, in units of the reference models' pooled
  spread: (mean_ref(log e) - log e) / std_ref. Subtracting each image's own difficulty is what separates
  memorisation from "this image is easy".

Reported per attack: ROC AUC (0.5 = chance) with a 95% percentile interval from resampling patients (the
split grouping) with replacement, separately among members and non-members; and the true-positive rate at
1% false positives (with few non-members the achievable false-positive rate is coarser; it is reported).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddenoise.errors import ConfigError, DataError
from meddenoise.rundir import RunDir

# 1% false positives: the operating point that matters for an attacker (Carlini et al. 2022).
LOW_FPR = 0.01


def _final(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[-1]


@torch.no_grad()
def reconstruction_errors(
    model: torch.nn.Module,
    data: Any,
    rows: np.ndarray,
    noise_op: Any,
    *,
    noise_seed: int,
    device: torch.device,
    batch_size: int = 32,
) -> np.ndarray:
    """(len(rows),) per-image MSE of the model's output on the released (fixed-mode) copy vs clean."""
    model.eval()
    errors = []
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        clean = torch.from_numpy(np.ascontiguousarray(data.images[part])).to(device).unsqueeze(1)
        clean = clean.float() / float(data.max_value)
        keys = torch.from_numpy(data.image_keys[part]).to(device)
        noisy = noise_op(clean, keys, seed=noise_seed, mode="fixed")
        output = _final(model(noisy)).float()
        errors.append(((output - clean) ** 2).flatten(1).mean(1).double().cpu())
    return torch.cat(errors).numpy() if errors else np.zeros(0)


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score > non-member score) + half the ties (Mann-Whitney), from ranks."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if members.size == 0 or nonmembers.size == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([members, nonmembers]))
    member_rank_sum = ranks[: members.size].sum()
    return float((member_rank_sum - members.size * (members.size + 1) / 2) / (members.size * nonmembers.size))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float = LOW_FPR) -> tuple[float, float]:
    """(TPR, achieved FPR) at the strictest threshold whose false-positive rate is at most `fpr`.

    With n non-members the achievable rates are multiples of 1/n; below 1/n that is a threshold above every
    non-member (FPR 0)."""
    nonmembers = np.sort(np.asarray(nonmembers, float))[::-1]
    allowed = int(math.floor(fpr * nonmembers.size + 1e-9))
    threshold = nonmembers[allowed] if allowed < nonmembers.size else -math.inf
    return float(np.mean(np.asarray(members) > threshold)), allowed / max(1, nonmembers.size)


def patient_bootstrap_auc(
    members: np.ndarray,
    member_groups: list[str],
    nonmembers: np.ndarray,
    nonmember_groups: list[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the AUC, resampling patients (groups) with replacement on each side."""
    rng = np.random.default_rng(seed)

    def grouped(values: np.ndarray, groups: list[str]) -> list[np.ndarray]:
        labels = np.asarray(groups)
        return [values[labels == g] for g in np.unique(labels)]

    member_parts, nonmember_parts = grouped(members, member_groups), grouped(nonmembers, nonmember_groups)
    aucs = np.empty(resamples)
    for i in range(resamples):
        m = np.concatenate([member_parts[j] for j in rng.integers(0, len(member_parts), len(member_parts))])
        n = np.concatenate(
            [nonmember_parts[j] for j in rng.integers(0, len(nonmember_parts), len(nonmember_parts))]
        )
        aucs[i] = roc_auc(m, n)
    alpha = 1.0 - confidence
    low, high = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def attack_summary(
    members: np.ndarray,
    member_groups: list[str],
    nonmembers: np.ndarray,
    nonmember_groups: list[str],
    seed: int,
) -> dict[str, Any]:
    from meddenoise.metrics.clustered import MIN_BOOTSTRAP_GROUPS

    fewest = min(len(set(member_groups)), len(set(nonmember_groups)))
    note = ""
    if fewest < MIN_BOOTSTRAP_GROUPS:
        # a side with 1-3 patients: the resamples cannot show how another patient would score
        low = high = math.nan
        note = (
            f"only {fewest} patient(s) on one side: a bootstrap over so few patients gives no 95% interval "
            f"(at least {MIN_BOOTSTRAP_GROUPS} are needed on each side)"
        )
    else:
        low, high = patient_bootstrap_auc(members, member_groups, nonmembers, nonmember_groups, seed=seed)
    tpr, achieved = tpr_at_fpr(members, nonmembers)
    fpr_note = ""
    count = np.asarray(nonmembers).size
    if count * LOW_FPR < 1:
        fpr_note = (
            f"{count} non-member images cannot resolve a {100 * LOW_FPR:g}% false-positive rate "
            f"(at least {math.ceil(1 / LOW_FPR)} are needed)"
        )
    return {
        "auc": roc_auc(members, nonmembers),
        "auc_ci": [low, high],
        "auc_note": note,
        "tpr_at_1pct_fpr": tpr,
        "achieved_fpr": achieved,
        "fpr_note": fpr_note,
    }


def calibrated_scores(target_errors: np.ndarray, reference_errors: np.ndarray) -> np.ndarray:
    """Offline LiRA with a global variance: (mean_ref(log e) - log e_target) / pooled std of log e_ref.

    `reference_errors` is (models, images)."""
    tiny = 1e-12
    logged = np.log(np.asarray(reference_errors) + tiny)
    spread = float(np.sqrt(np.mean(np.var(logged, axis=0, ddof=1)))) if logged.shape[0] > 1 else 1.0
    return (logged.mean(axis=0) - np.log(np.asarray(target_errors) + tiny)) / max(spread, tiny)


@dataclasses.dataclass
class MembershipSets:
    members: np.ndarray  # prepared rows
    nonmembers: np.ndarray
    groups: list[str]  # the privacy unit of every prepared row


def choose_sets(
    data: Any,
    member_split: str,
    nonmember_split: str,
    *,
    max_images: int = 0,
    seed: int = 0,
    trained_rows: np.ndarray | None = None,
) -> MembershipSets:
    """Members: images of `member_split` (restricted to `trained_rows` when the run used only some);
    non-members: `nonmember_split`; at most `max_images` each (seeded sample)."""
    groups = [r.get("group") or r["patient_id"] for r in data.records]
    members = data.indices(member_split)
    if trained_rows is not None:
        members = np.intersect1d(members, trained_rows)
    nonmembers = data.indices(nonmember_split)
    for name, rows, split in (
        ("members", members, member_split),
        ("non-members", nonmembers, nonmember_split),
    ):
        if len(rows) == 0:
            raise DataError(f"membership audit: no {name} (split {split!r} of {data.folder} is empty)")
    if set(np.asarray(groups)[members]) & set(np.asarray(groups)[nonmembers]):
        raise DataError(
            "membership audit: members and non-members share patients (the prepared folder was split by "
            "image); re-prepare with --split-by patient"
        )
    rng = np.random.default_rng(seed)
    if max_images:
        if len(members) > max_images:
            members = np.sort(rng.choice(members, max_images, replace=False))
        if len(nonmembers) > max_images:
            nonmembers = np.sort(rng.choice(nonmembers, max_images, replace=False))
    return MembershipSets(np.asarray(members, np.int64), np.asarray(nonmembers, np.int64), groups)


def train_reference_models(
    run_config: dict[str, Any], data_dir: str, out: Path, *, count: int, split: str, epochs: int = 0
) -> list[Path]:
    """Train `count` reference models like the audited run, on `split` only (finished ones are kept)."""
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.train import fit

    folders = []
    for index in range(count):
        folder = out / f"reference{index}"
        folders.append(folder)
        run = RunDir(folder)
        if run.best_weights.is_file() and run.summary_file.is_file():
            continue
        if folder.exists():
            import shutil

            shutil.rmtree(folder)  # an unfinished one is retrained from the start
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in run_config.items() if k in known}
        values.update(
            data=str(data_dir),
            out=str(folder),
            train_split=split,
            val_split=split,  # never the members' or the non-members' images
            limit_train=0,
            limit_val=0,
            evaluate_test=False,
            seed=int(run_config.get("seed", 0)) + 1000 + index,
            strategy="single",
            nproc=0,
            resume=False,
            quiet=True,
            patience=0,
        )
        if epochs:
            values["epochs"] = epochs
        fit(config_from_mapping(TrainConfig, values, source=f"reference model {index}"))
    return folders


def _require_the_runs_members(run_dir: str | Path, data: Any, member_split: str) -> None:
    """Refuse a prepared folder whose `member_split` is not the images the run trained on.

    The audit scores the folder's member split as "members": with another folder (or the same images split
    differently) it would report an AUC for people the model never saw. The run's split.csv records each
    training image's content hash; a run folder without it (a bare checkpoint) cannot be checked, and then
    the audit goes on as before.
    """
    from meddenoise.rundir import RunDir

    run = RunDir(Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent.parent)
    if not run.split_file.is_file():
        return
    trained = {
        row.get("content_hash") or row.get("image_id")
        for row in run.read_split()
        if row.get("split") == member_split
    }
    rows = data.indices(member_split)
    present = {data.records[int(i)].get("content_hash") or data.records[int(i)].get("image_id") for i in rows}
    missing = len(trained - present)
    if trained and missing:
        raise ConfigError(
            f"the {member_split} split of {data.folder} is not what the run in {run.path} trained on: "
            f"{missing} of its {len(trained)} training images are not in it ({len(present)} image(s) there). "
            "A membership audit on other data would call people members whom the model never saw; give the "
            "run's own prepared folder",
            "data",
        )


def run_membership_audit(
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    out: Path,
    reference_models: int = 4,
    reference_epochs: int = 0,
    reference_split: str = "val",
    member_split: str | None = None,
    nonmember_split: str = "test",
    max_images: int = 500,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Both attacks on the run's best checkpoint; a JSON-ready dict (see the module docstring)."""
    from meddenoise.data.cache import load_prepared
    from meddenoise.engine.checkpoint import load_trained_model
    from meddenoise.engine.runtime import resolve_device
    from meddenoise.noise.spec import NoiseSpec
    from meddenoise.rundir import recorded_folder

    torch_device = resolve_device(device)
    model, metadata = load_trained_model(run_dir, device=torch_device)
    run_config = dict(metadata.get("config") or {})
    if not run_config:
        raise ConfigError(
            f"--run {run_dir}: the checkpoint has no training config; retrain with this version"
        )
    if not data_dir and run_config.get("data"):
        data_dir = str(recorded_folder(run_config["data"], run_dir, run_config.get("out", "")))
    if not data_dir or not Path(data_dir).exists():
        raise ConfigError(f"the run's prepared folder {data_dir!r} is not here; give data", "data")
    data = load_prepared(data_dir)
    member_split = member_split or run_config.get("train_split", "train")
    _require_the_runs_members(run_dir, data, member_split)
    if reference_split in (member_split, nonmember_split):
        raise ConfigError(
            "reference_split must differ from the member and non-member splits", "reference_split"
        )
    trained = data.indices(member_split)
    if run_config.get("limit_train"):
        trained = trained[: int(run_config["limit_train"])]
    sets = choose_sets(
        data, member_split, nonmember_split, max_images=max_images, seed=seed, trained_rows=trained
    )
    noise = NoiseSpec.from_dict(metadata.get("noise") or {})
    noise_op, noise_seed = noise.build(), noise.seed

    def errors_of(net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
        common = {"noise_seed": noise_seed, "device": torch_device, "batch_size": batch_size}
        return (
            reconstruction_errors(net, data, sets.members, noise_op, **common),
            reconstruction_errors(net, data, sets.nonmembers, noise_op, **common),
        )

    member_errors, nonmember_errors = errors_of(model)
    member_groups = [sets.groups[r] for r in sets.members]
    nonmember_groups = [sets.groups[r] for r in sets.nonmembers]
    from meddenoise.data import split_claims

    params = data.params
    unit = params.get("split_unit") or split_claims.effective_split_unit(
        str(params.get("split_by", "")), params.get("patient_id_origin"), str(params.get("source", ""))
    )
    result: dict[str, Any] = {
        "run": str(run_dir),
        # without patient ids the sets cannot be checked for shared patients (choose_sets can only when known)
        "patient_ids_unknown": unit in (split_claims.UNIT_IMAGE_UNKNOWN, split_claims.UNIT_MIXED),
        "members": {
            "split": member_split,
            "images": int(sets.members.size),
            "patients": len(set(member_groups)),
        },
        "nonmembers": {
            "split": nonmember_split,
            "images": int(sets.nonmembers.size),
            "patients": len(set(nonmember_groups)),
        },
        "score": "per-image MSE of the denoised released copy vs the clean image",
        "mean_error": {"members": float(member_errors.mean()), "nonmembers": float(nonmember_errors.mean())},
        "loss_threshold": attack_summary(
            -member_errors, member_groups, -nonmember_errors, nonmember_groups, seed
        ),
    }
    if reference_models < 1:
        result["calibrated"] = {"skipped": "no reference models asked for (--reference-models 0)"}
        return result
    if len(data.indices(reference_split)) == 0:
        result["calibrated"] = {"skipped": f"split {reference_split!r} is empty: no reference patients"}
        return result
    folders = train_reference_models(
        run_config, data_dir, out, count=reference_models, split=reference_split, epochs=reference_epochs
    )
    reference_member, reference_nonmember = [], []
    for folder in folders:
        reference, _ = load_trained_model(folder, device=torch_device)
        m, n = errors_of(reference)
        reference_member.append(m)
        reference_nonmember.append(n)
    everything = np.concatenate([np.stack(reference_member), np.stack(reference_nonmember)], axis=1)
    target = np.concatenate([member_errors, nonmember_errors])
    scores = calibrated_scores(target, everything)
    count = sets.members.size
    result["calibrated"] = {
        **attack_summary(scores[:count], member_groups, scores[count:], nonmember_groups, seed),
        "reference_models": reference_models,
        "reference_split": reference_split,
        "reference_patients": len({sets.groups[r] for r in data.indices(reference_split)}),
        "reference_epochs": reference_epochs or int(run_config.get("epochs", 0)),
    }
    return result


def markdown_lines(result: dict[str, Any]) -> list[str]:
    """A short Markdown account of a membership audit."""

    unknown = bool(result.get("patient_ids_unknown"))
    interval = "bootstrap interval over images" if unknown else "patient-bootstrap interval"

    def line(name: str, entry: dict[str, Any]) -> str:
        if "skipped" in entry:
            return f"- {name}: skipped ({entry['skipped']})"
        low, high = entry["auc_ci"]
        shown = f"95% {interval} {low:.3f}-{high:.3f}"
        if math.isnan(low) or math.isnan(high):  # too few patients on a side (attack_summary says why)
            shown = f"no 95% interval: {entry.get('auc_note') or 'too few patients'}"
        low_fpr = f"TPR {100 * entry['tpr_at_1pct_fpr']:.1f}% at FPR {100 * entry['achieved_fpr']:.1f}%"
        if entry.get("fpr_note"):
            low_fpr = f"TPR at {100 * LOW_FPR:g}% FPR n/a ({entry['fpr_note']}; {low_fpr})"
        return f"- {name}: AUC {entry['auc']:.3f} ({shown}), {low_fpr}"

    def who(entry: dict[str, Any]) -> str:
        return "patient ids unknown" if unknown else f"{entry['patients']} patients"

    members, nonmembers = result["members"], result["nonmembers"]
    lines = [
        f"Membership inference on {result['run']}: {members['images']} member images "
        f"({who(members)}, split {members['split']}) vs {nonmembers['images']} non-members "
        f"({who(nonmembers)}, split {nonmembers['split']}); score: {result['score']}.",
        "",
        line("loss threshold", result["loss_threshold"]),
        line("calibrated (reference models)", result["calibrated"]),
    ]
    if unknown:
        lines += [
            "",
            "Patient ids are unknown in this prepared folder (each image counted as its own patient): "
            "members and non-members may include images of one person, which the audit cannot check, so "
            "the AUC measures membership of images, not of patients.",
        ]
    return lines
