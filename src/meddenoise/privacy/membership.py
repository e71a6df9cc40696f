"""Membership inference on a trained denoiser: can an attacker who holds a clean image tell whether its
patient was in the training set?

The attacker obfuscates the candidate image exactly as the releasing site did (the run's noise, seed and
`fixed` mode, i.e. the very input a member was trained on), denoises it with the model and measures the
reconstruction error (per-image mean squared error against the clean image). Members (training patients)
should be reconstructed better if the model memorised them.

- Loss-threshold attack: score = -error. Weak: it mistakes "this image is easy" for "this image was seen".
- LiRA, offline (Carlini et al. 2022, "Membership inference attacks from first principles"): `count`
  reference models are trained like the run (same model, target, noise, schedule; other seeds) on the
  reference split, patients disjoint from both the members and the non-members (checked), so every audited
  image is OUT for every reference model. Per image, the statistic s = -log(error) of the reference models
  is fitted by a Gaussian N(mu, sigma^2); the score is the one-sided likelihood that an OUT model does no
  better than the audited one, Phi((s_target - mu) / sigma) (as log odds). Below `PER_EXAMPLE_VARIANCE_MIN`
  reference models sigma is one global (pooled) spread, as the paper advises for few reference models.

Both checkpoints of a run are audited (best and last: the best is what `evaluate` and `denoise` use, the
last has trained longest). Reported per attack and checkpoint: ROC AUC (0.5 = chance) with a 95% percentile
interval from resampling patients (the split grouping) with replacement, separately among members and
non-members, and the one-sided 95% upper bound of the AUC from the same resamples; the true-positive rate at
1% false positives and at the lowest false-positive rate the non-member images resolve (1/their number).
A non-rejection ("chance not excluded") is never a finding of privacy: the upper bound says how well an
attacker may still do.
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
# Per-image variances need many reference models; with fewer, one pooled variance is more reliable
# (Carlini et al. 2022, section VI: below 64 shadow models a global variance).
PER_EXAMPLE_VARIANCE_MIN = 64
CONFIDENCE = 0.95


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


def bootstrap_aucs(
    members: np.ndarray,
    member_groups: list[str],
    nonmembers: np.ndarray,
    nonmember_groups: list[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """(resamples,) AUCs, resampling patients (groups) with replacement on each side."""
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
    return aucs


def attack_summary(
    members: np.ndarray,
    member_groups: list[str],
    nonmembers: np.ndarray,
    nonmember_groups: list[str],
    seed: int,
) -> dict[str, Any]:
    """AUC with its two-sided 95% interval and one-sided 95% upper bound (patient bootstrap), TPR at 1%
    FPR and at the lowest FPR the non-member images resolve (1/their number: one false positive)."""
    from meddenoise.metrics.clustered import MIN_BOOTSTRAP_GROUPS

    fewest = min(len(set(member_groups)), len(set(nonmember_groups)))
    note = ""
    if fewest < MIN_BOOTSTRAP_GROUPS:
        # a side with 1-3 patients: the resamples cannot show how another patient would score
        low = high = upper = math.nan
        note = (
            f"only {fewest} patient(s) on one side: a bootstrap over so few patients gives no 95% interval "
            f"(at least {MIN_BOOTSTRAP_GROUPS} are needed on each side)"
        )
    else:
        aucs = bootstrap_aucs(members, member_groups, nonmembers, nonmember_groups, seed=seed)
        alpha = 1.0 - CONFIDENCE
        low, high, upper = (float(q) for q in np.quantile(aucs, [alpha / 2, 1 - alpha / 2, CONFIDENCE]))
    tpr, achieved = tpr_at_fpr(members, nonmembers)
    fpr_note = ""
    count = np.asarray(nonmembers).size
    if count * LOW_FPR < 1:
        fpr_note = (
            f"{count} non-member images cannot resolve a {100 * LOW_FPR:g}% false-positive rate "
            f"(at least {math.ceil(1 / LOW_FPR)} are needed)"
        )
    lowest = 1.0 / max(1, count)
    tpr_lowest, _ = tpr_at_fpr(members, nonmembers, lowest)
    return {
        "auc": roc_auc(members, nonmembers),
        "auc_ci": [low, high],
        # one-sided: the AUC an attacker may still reach, at 95% (the resamples' 95th percentile)
        "auc_upper_95": upper,
        "auc_note": note,
        "tpr_at_1pct_fpr": tpr,
        "achieved_fpr": achieved,
        "fpr_note": fpr_note,
        "tpr_at_lowest_fpr": tpr_lowest,
        "lowest_fpr": lowest,
        "lowest_fpr_unit": f"1/{count} non-member images (one false positive)",
    }


def lira_scores(
    target_errors: np.ndarray,
    reference_errors: np.ndarray,
    *,
    per_example_min: int = PER_EXAMPLE_VARIANCE_MIN,
) -> np.ndarray:
    """Offline LiRA: Lambda = Phi((s - mu) / sigma), the one-sided likelihood that an OUT model does no
    better than the audited one, with s = -log(error) and (mu, sigma) fitted per image to the reference
    models' s (all of them OUT models); sigma pooled over images below `per_example_min` models.

    Returned as log odds, log Lambda - log(1 - Lambda): the same ranking (hence AUC and TPR) as Lambda,
    without Lambda rounding to 1 for strongly memorised images. `reference_errors` is (models, images).
    With one reference model no spread can be estimated and sigma is 1 (the ranking does not depend on it)."""
    from scipy.stats import norm

    tiny = 1e-12
    statistic = -np.log(np.asarray(reference_errors, float) + tiny)  # (models, images)
    mu = statistic.mean(axis=0)
    count = statistic.shape[0]
    if count >= max(2, per_example_min):
        sigma = np.maximum(statistic.std(axis=0, ddof=1), tiny)
    elif count > 1:
        sigma = max(float(np.sqrt(np.mean(np.var(statistic, axis=0, ddof=1)))), tiny)
    else:
        sigma = 1.0
    target = -np.log(np.asarray(target_errors, float) + tiny)
    z = (target - mu) / sigma
    return norm.logcdf(z) - norm.logsf(z)


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
            "image); re-prepare it split by patient (`meddenoise prepare --split-by patient ...`)"
        )
    rng = np.random.default_rng(seed)
    if max_images:
        if len(members) > max_images:
            members = np.sort(rng.choice(members, max_images, replace=False))
        if len(nonmembers) > max_images:
            nonmembers = np.sort(rng.choice(nonmembers, max_images, replace=False))
    return MembershipSets(np.asarray(members, np.int64), np.asarray(nonmembers, np.int64), groups)


# Reference models validate on their own training split (no other patients may be used); a few images of
# it are enough to run the loop, and their last checkpoint is the one scored.
REFERENCE_VALIDATION_IMAGES = 16
RECIPE_FILE = "reference_recipe.json"


def train_reference_models(
    run_config: dict[str, Any], data_dir: str, out: Path, *, count: int, split: str, epochs: int = 0
) -> list[Path]:
    """Train `count` reference models like `run_config`, on `split` only; finished ones trained to the same
    recipe are kept (a folder of another recipe is retrained)."""
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.train import fit
    from meddenoise.fileio import atomic_write_json, read_json

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    recipe = {k: v for k, v in run_config.items() if k in known}
    recipe.update(
        data=str(data_dir),
        train_split=split,
        val_split=split,  # never the members' or the non-members' images
        limit_train=0,
        limit_val=REFERENCE_VALIDATION_IMAGES,
        evaluate_test=False,
        strategy="single",
        nproc=0,
        resume=False,
        quiet=True,
        patience=0,
    )
    if epochs:
        recipe["epochs"] = epochs
    recipe.pop("out", None)
    recipe.pop("seed", None)
    folders = []
    for index in range(count):
        folder = out / f"reference{index}"
        folders.append(folder)
        run = RunDir(folder)
        marker = folder / RECIPE_FILE
        finished = run.last_weights.is_file() and run.summary_file.is_file() and marker.is_file()
        if finished and read_json(marker, what="reference recipe") == json_ready(recipe):
            continue
        if folder.exists():
            import shutil

            shutil.rmtree(folder)  # an unfinished one (or another recipe's) is retrained from the start
        values = {**recipe, "out": str(folder), "seed": int(run_config.get("seed", 0)) + 1000 + index}
        fit(config_from_mapping(TrainConfig, values, source=f"reference model {index}"))
        atomic_write_json(marker, json_ready(recipe))
    return folders


def json_ready(values: dict[str, Any]) -> Any:
    import json

    return json.loads(json.dumps(values, default=str))


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


# Reference models' errors, kept for the process: the privacy-modes table audits many runs against one
# shared set of reference models on the same images.
_REFERENCE_ERRORS: dict[tuple[Any, ...], np.ndarray] = {}


def _checkpoints(run_dir: str | Path) -> list[tuple[str, Path]]:
    """[("best", file), ("last", file)] of a run folder (those present); a checkpoint file is itself."""
    path = Path(run_dir)
    if path.is_file():
        return [("given", path)]
    run = RunDir(path)
    found = [(name, file) for name, file in (("best", run.best_weights), ("last", run.last_weights))]
    found = [(name, file) for name, file in found if file.is_file()]
    if not found:
        raise ConfigError(f"run {run_dir}: no checkpoints/best.safetensors or last.safetensors", "run")
    return found


def run_membership_audit(
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    out: Path,
    reference_models: int = 4,
    reference_epochs: int = 0,
    reference_split: str = "val",
    reference_dir: Path | None = None,
    reference_recipe: str | Path | None = None,
    member_split: str | None = None,
    nonmember_split: str = "test",
    max_images: int = 500,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Both attacks (loss threshold, offline LiRA) on the run's best and last checkpoints; a JSON-ready
    dict (see the module docstring). Its top-level attacks are the best checkpoint's (the one `evaluate`
    and `denoise` use); `checkpoints` holds every audited checkpoint.

    Reference models are trained under `reference_dir` (default `out`) like `reference_recipe` (a run
    folder; default the audited run): one shared set may serve several audits (it is still OUT for every
    audited image; a recipe unlike the audited run's only costs the attack power)."""
    from meddenoise.data.cache import load_prepared
    from meddenoise.engine.checkpoint import load_trained_model
    from meddenoise.engine.runtime import resolve_device
    from meddenoise.rundir import recorded_folder

    torch_device = resolve_device(device)
    checkpoints = _checkpoints(run_dir)
    model, metadata = load_trained_model(checkpoints[0][1], device=torch_device)
    run_config = dict(metadata.config)
    if not run_config:
        raise ConfigError(
            f"run {run_dir}: the checkpoint has no training config; retrain with this version", "run"
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
    noise = metadata.noise
    noise_op, noise_seed = noise.build(), noise.seed
    rows = np.concatenate([sets.members, sets.nonmembers])
    count = sets.members.size

    def errors_of(net: torch.nn.Module) -> np.ndarray:
        common = {"noise_seed": noise_seed, "device": torch_device, "batch_size": batch_size}
        return reconstruction_errors(net, data, rows, noise_op, **common)  # members first

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
    }
    reference_errors, lira_info = _reference_errors(
        data,
        sets,
        rows,
        errors_of,
        run_config=run_config,
        data_dir=str(data_dir),
        folder=Path(reference_dir or out),
        recipe=reference_recipe,
        count=reference_models,
        epochs=reference_epochs,
        split=reference_split,
        noise_key=(json_ready(noise.to_dict()), noise_seed),
        device=torch_device,
    )
    audited = {}
    for name, file in checkpoints:
        net, meta = (model, metadata) if file == checkpoints[0][1] else load_trained_model(file, torch_device)
        errors = errors_of(net)
        entry: dict[str, Any] = {
            "checkpoint": str(file),
            "epoch": meta.epoch,
            "mean_error": {
                "members": float(errors[:count].mean()),
                "nonmembers": float(errors[count:].mean()),
            },
            "loss_threshold": attack_summary(
                -errors[:count], member_groups, -errors[count:], nonmember_groups, seed
            ),
        }
        if reference_errors is None:
            entry["lira"] = dict(lira_info)
        else:
            scores = lira_scores(errors, reference_errors)
            entry["lira"] = {
                **attack_summary(scores[:count], member_groups, scores[count:], nonmember_groups, seed),
                **lira_info,
            }
        audited[name] = entry
    result["checkpoints"] = audited
    first = audited[checkpoints[0][0]]
    result.update(
        audited_checkpoint=checkpoints[0][0],
        mean_error=first["mean_error"],
        loss_threshold=first["loss_threshold"],
        lira=first["lira"],
    )
    return result


def _reference_errors(
    data: Any,
    sets: MembershipSets,
    rows: np.ndarray,
    errors_of: Any,
    *,
    run_config: dict[str, Any],
    data_dir: str,
    folder: Path,
    recipe: str | Path | None,
    count: int,
    epochs: int,
    split: str,
    noise_key: Any,
    device: torch.device,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """((models, images) reference errors or None, what the LiRA entry records)."""
    from meddenoise.engine.checkpoint import load_trained_model

    if count < 1:
        return None, {"skipped": "no reference models asked for (--reference-models 0): loss attack only"}
    reference_rows = data.indices(split)
    if len(reference_rows) == 0:
        return None, {"skipped": f"split {split!r} is empty: no reference patients"}
    reference_patients = {sets.groups[r] for r in reference_rows}
    shared = reference_patients & {sets.groups[r] for r in rows}
    if shared:
        raise DataError(
            f"membership audit: the reference split {split!r} shares {len(shared)} patient(s) with the "
            "members or non-members; reference models must never have seen an audited patient "
            "(re-prepare the folder split by patient: `meddenoise prepare --split-by patient ...`)"
        )
    recipe_config = run_config
    if recipe is not None:
        _, recipe_metadata = load_trained_model(recipe, device="cpu", inference=False)
        recipe_config = dict(recipe_metadata.config or run_config)
    folders = train_reference_models(recipe_config, data_dir, folder, count=count, split=split, epochs=epochs)
    stacked = []
    for reference in folders:
        weights = RunDir(reference).last_weights
        key = (str(weights), weights.stat().st_mtime_ns, rows.tobytes(), str(noise_key), str(device))
        if key not in _REFERENCE_ERRORS:
            net, _ = load_trained_model(weights, device=device)
            _REFERENCE_ERRORS[key] = errors_of(net)
        stacked.append(_REFERENCE_ERRORS[key])
    info = {
        "method": "offline LiRA (Carlini et al. 2022): per-image Gaussian of the reference models' "
        "-log(error), one-sided likelihood of the audited model's, "
        + ("per-image variance" if count >= PER_EXAMPLE_VARIANCE_MIN else "one pooled variance"),
        "reference_models": count,
        "reference_split": split,
        "reference_patients": len(reference_patients),
        # checked above: no reference patient is a member or a non-member
        "reference_patients_disjoint": True,
        "reference_epochs": epochs or int(recipe_config.get("epochs", 0)),
        "reference_recipe": str(recipe) if recipe is not None else "the audited run",
        "reference_dir": str(folder),
    }
    return np.stack(stacked), info


def interpretation(entry: dict[str, Any], name: str = "membership") -> str:
    """What an attack's numbers allow to say, never a claim of privacy from a non-rejection."""
    auc = entry["auc"]
    low, high = entry["auc_ci"]
    upper = entry.get("auc_upper_95", math.nan)
    if math.isnan(low) or math.isnan(high):
        return (
            f"{name} AUC {auc:.2f}, no interval ({entry.get('auc_note') or 'too few patients'}): "
            "nothing can be concluded; not evidence of privacy"
        )
    if low > 0.5:
        return f"{name} AUC {auc:.2f} [{low:.2f}, {high:.2f}], above chance: membership is detectable"
    bound = f", upper bound {upper:.2f} at 95%" if not math.isnan(upper) else f" [{low:.2f}, {high:.2f}]"
    return f"{name} AUC {auc:.2f}{bound}: an attacker may do this well; not evidence of privacy"


def markdown_lines(result: dict[str, Any]) -> list[str]:
    """A short Markdown account of a membership audit."""

    unknown = bool(result.get("patient_ids_unknown"))
    interval = "bootstrap interval over images" if unknown else "patient-bootstrap interval"

    def line(name: str, entry: dict[str, Any]) -> str:
        if "skipped" in entry:
            return f"  - {name}: skipped ({entry['skipped']})"
        low, high = entry["auc_ci"]
        upper = entry.get("auc_upper_95", math.nan)
        shown = f"95% {interval} {low:.3f}-{high:.3f}; AUC <= {upper:.3f} at 95% (one-sided)"
        if math.isnan(low) or math.isnan(high):  # too few patients on a side (attack_summary says why)
            shown = f"no 95% interval: {entry.get('auc_note') or 'too few patients'}"
        low_fpr = f"TPR {100 * entry['tpr_at_1pct_fpr']:.1f}% at FPR {100 * entry['achieved_fpr']:.1f}%"
        if entry.get("fpr_note"):
            low_fpr = f"TPR at {100 * LOW_FPR:g}% FPR n/a ({entry['fpr_note']}; {low_fpr})"
        if "tpr_at_lowest_fpr" in entry:
            low_fpr += (
                f"; TPR {100 * entry['tpr_at_lowest_fpr']:.1f}% at the lowest resolvable FPR "
                f"{100 * entry['lowest_fpr']:.2f}% ({entry['lowest_fpr_unit']})"
            )
        return f"  - {name}: AUC {entry['auc']:.3f} ({shown}), {low_fpr}"

    def who(entry: dict[str, Any]) -> str:
        return "patient ids unknown" if unknown else f"{entry['patients']} patients"

    members, nonmembers = result["members"], result["nonmembers"]
    lines = [
        f"Membership inference on {result['run']}: {members['images']} member images "
        f"({who(members)}, split {members['split']}) vs {nonmembers['images']} non-members "
        f"({who(nonmembers)}, split {nonmembers['split']}); score: {result['score']}.",
        "",
    ]
    checkpoints = result.get("checkpoints") or {"best": result}
    lira_name = "LiRA, offline"
    for name, entry in checkpoints.items():
        epoch = f", epoch {entry['epoch']}" if entry.get("epoch") is not None else ""
        lines.append(f"- {name} checkpoint{epoch}:")
        lira = entry.get("lira") or entry.get("calibrated") or {"skipped": "not run"}
        if "reference_models" in lira:
            lira_name = (
                f"LiRA, offline ({lira['reference_models']} reference models on "
                f"{lira['reference_patients']} {'groups' if unknown else 'patients'} of split "
                f"{lira['reference_split']}, disjoint from both sets)"
            )
        lines.append(line(lira_name, lira))
        lines.append(line("loss threshold", entry["loss_threshold"]))
        for attack, label in ((lira, "LiRA"), (entry["loss_threshold"], "loss")):
            if "auc" in attack:
                lines.append(f"  - {interpretation(attack, f'{label} membership')}.")
    lines += [
        "",
        "An AUC whose interval includes 0.5 is not evidence of privacy: with this many patients an attacker "
        "may do as well as the upper bound.",
    ]
    if unknown:
        lines += [
            "",
            "Patient ids are unknown in this prepared folder (each image counted as its own patient): "
            "members and non-members may include images of one person, which the audit cannot check, so "
            "the AUC measures membership of images, not of patients.",
        ]
    return lines
