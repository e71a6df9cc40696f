"""The privacy-modes step of `meddenoise reproduce`: DP-SGD runs, membership audits, one table
(OUT/privacy_modes/, `ReproDir.modes_dir`).

    OUT/privacy_modes/runs/dp_eps<E>_std<s>/   DP-SGD U-Nets (GroupNorm), one per epsilon
    OUT/privacy_modes/runs/nonprivate_std<s>/  the same U-Net without DP (the DP reference, equal epochs)
    OUT/privacy_modes/public_data/             the rendered default (public: one public CT), when the preset
                                               pretrains: public_std<s>/ trains on it, then
                                               dp_eps<E>_public_std<s>/ and nonprivate_public_std<s>/
                                               fine-tune from it on the private data
    OUT/privacy_modes/membership/              reference models of offline LiRA (when asked for)
    OUT/privacy_modes/privacy_modes.json, .md  the table, its verdict, and what each audit measured

DP runs live outside OUT/runs so the paper's tables (which compare BatchNorm U-Nets) never mix them in. The
table takes the supervised and clean-free U-Nets the grid already trained at the same noise level, and the
linkage / re-identification figures from OUT/privacy/privacy_audit.json.
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from meddenoise.errors import MeddenoiseError
from meddenoise.evaluation import files
from meddenoise.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir
from meddenoise.reprodir import ReproDir
from meddenoise.rundir import RunDir

SUPERVISED_LABEL = "paper mode (released pairs, clean targets)"


def _grid_run(jobs: list[Any], method: str, noise_std: float) -> Path | None:
    for job in jobs:
        if (
            job.method == method
            and getattr(job, "kind", "network") == "network"
            and job.strategy == "single"
            and job.seed == 0
            and math.isclose(job.noise_std, noise_std)
            and files.is_done(job.folder)
            and RunDir(job.folder).test_table_file.is_file()
        ):
            return job.folder
    return None


def _train(values: dict[str, Any], out: Path) -> Path:
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.train import fit

    if files.is_done(out):
        return out
    values = {**values, "out": str(out), "resume": RunDir(out).resume_or_start_clean()}
    started = time.perf_counter()
    fit(config_from_mapping(TrainConfig, values, source=f"privacy modes run {out.name}"))
    files.mark_done(out, f"{time.perf_counter() - started:.1f} s")
    return out


def run_privacy_modes(
    out: Path,
    data_dir: Path,
    preset: Any,
    jobs: list[Any],
    *,
    device: str = "auto",
    epochs: int = 0,
    quiet: bool = False,
) -> str | None:
    """Train the DP runs, audit membership, write the table; returns why it was skipped, or None."""
    from meddenoise.data.cache import load_prepared
    from meddenoise.noise.spec import NoiseSpec
    from meddenoise.privacy import modes
    from meddenoise.privacy.membership import run_membership_audit

    layout = ReproDir(out)
    folder = layout.modes_dir
    if files.is_done(folder):
        return None
    noise_std = preset.dp_noise_std
    supervised = _grid_run(jobs, "unet", noise_std)
    if supervised is None:
        return f"no finished supervised U-Net at noise std {noise_std:g} to compare with"
    ensure_writable_dir(folder, what="privacy modes folder")
    base = {
        **preset.train,
        **preset.model_train.get("unet", {}),
        "model": "unet",
        "seed": 0,
        "strategy": "single",
        "amp": "off",
        "norm": "group",
        "data": str(data_dir),
        "noise": NoiseSpec(mean=preset.noise_mean, std=noise_std).to_dict(),
        "quiet": quiet,
    }
    if epochs:
        base["epochs"] = epochs
    if device != "auto":
        base["device"] = device
    tag = f"std{noise_std:g}"
    print(f"privacy modes: non-private GroupNorm U-Net at std {noise_std:g}", flush=True)
    nonprivate = _train(base, layout.modes_run_dir(f"nonprivate_{tag}"))
    dp_runs = {}
    for epsilon in scratch_epsilons(preset):
        print(f"privacy modes: DP-SGD epsilon {epsilon:g} at std {noise_std:g}", flush=True)
        values = {**base, "dp_epsilon": epsilon, "dp_delta": preset.dp_delta, "dp_unit": preset.dp_unit}
        dp_runs[epsilon] = _train(values, layout.modes_run_dir(f"dp_eps{epsilon:g}_{tag}"))
    public_runs: dict[str, Any] = {}
    if preset.dp_public_pretraining and preset.dp_epsilons:
        public_runs = _public_pretraining(layout, data_dir, base, preset, tag)

    audit = layout.read_privacy_audit() or {"levels": []}
    level = next((lv for lv in audit["levels"] if math.isclose(lv["noise_std"], noise_std)), None)
    data = load_prepared(data_dir)
    groups = {r["image_id"]: r.get("group") or r["patient_id"] for r in data.records}
    # every row is compared with the same supervised run and audit level
    mode_row = functools.partial(modes.mode_row, supervised=supervised, groups=groups, audit_level=level)

    # getattr: a reproduction started before these preset fields existed imports this module late
    shared = getattr(preset, "membership_shared_references", False)

    def membership(run: Path) -> dict[str, Any]:
        print(f"privacy modes: membership audit of {run.name}", flush=True)
        return run_membership_audit(
            run,
            data_dir=str(data_dir),
            out=layout.membership_dir(run.name),
            reference_models=preset.membership_reference_models,
            reference_epochs=getattr(preset, "membership_reference_epochs", 0),
            # one set of reference models for every audit, trained like the non-private GroupNorm U-Net
            reference_dir=layout.membership_dir("shared_references") if shared else None,
            reference_recipe=nonprivate if shared else None,
            max_images=preset.membership_images,
            device=device,
        )

    rows = []
    for mode, method in [("clean", "unet"), *[(t, f"unet+{t}") for t in preset.clean_free]]:
        run = _grid_run(jobs, method, noise_std)
        if run is None:
            continue
        label = SUPERVISED_LABEL if mode == "clean" else mode
        rows.append(
            mode_row(
                label,
                mode,
                run,
                membership=membership(run),
            )
        )
    rows.append(
        mode_row(
            "non-private GroupNorm U-Net (DP reference)",
            "clean",
            nonprivate,
            membership=membership(nonprivate),
        )
    )
    for epsilon, run in dp_runs.items():
        rows.append(
            mode_row(
                f"DP-SGD epsilon {epsilon:g}",
                "dp-sgd",
                run,
                membership=membership(run),
                nonprivate=nonprivate,
            )
        )
    if public_runs:
        rows.append(
            mode_row(
                "public pretraining only (rendered default; no private data)",
                "public",
                public_runs["pretrained"],
                membership=None,  # it never saw a private image: every private patient is a non-member
                per_image=public_runs["on_private_test"],
            )
        )
        rows.append(
            mode_row(
                "non-private GroupNorm U-Net from the public start (DP reference)",
                "clean",
                public_runs["nonprivate"],
                membership=membership(public_runs["nonprivate"]),
            )
        )
        for epsilon, run in public_runs["dp"].items():
            rows.append(
                mode_row(
                    f"DP-SGD epsilon {epsilon:g}, public pretraining",
                    "dp-sgd",
                    run,
                    membership=membership(run),
                    nonprivate=public_runs["nonprivate"],
                )
            )
    for job in jobs:
        federated = getattr(job, "kind", "") == "federated" and math.isclose(job.noise_std, noise_std)
        if not (federated and files.is_done(job.folder)):
            continue
        spec = getattr(job, "federation", {}) or {}
        label = f"federated ({spec.get('strategy', 'fedavg')}, {spec.get('sites', '?')} sites)"
        rows.append(
            mode_row(
                label,
                "federated",
                job.folder,
                membership=_membership_or_none(membership, job.folder),
            )
        )
    result = {
        "noise_std": noise_std,
        "rows": rows,
        "verdict": modes.verdict(rows),
        "notes": notes(preset, str(data.params.get("source", ""))),
    }
    atomic_write_json(layout.modes_file, result)
    atomic_write_text(layout.modes_markdown, markdown(result))
    files.mark_done(folder)
    return None


def _public_pretraining(
    layout: ReproDir, data_dir: Path, base: dict[str, Any], preset: Any, tag: str
) -> dict[str, Any]:
    """Pretrain on public data, then fine-tune on the private data with and without DP-SGD.

    The public data is the rendered default: radiographs rendered from one CT that is itself public, so a
    network trained on it spends no private budget (the recipe of De et al. 2022 and Tramèr & Boneh 2021).
    The non-private fine-tune from the same start is the DP runs' reference: it isolates what DP costs.
    """
    from meddenoise.config import config_from_mapping
    from meddenoise.data.cache import load_prepared, prepare
    from meddenoise.data.prepare_config import PrepareConfig
    from meddenoise.data.sources import build_source
    from meddenoise.evaluation.runs import evaluate_run

    size = int(load_prepared(data_dir).images.shape[-1])
    public_data = layout.modes_public_data
    config = config_from_mapping(
        PrepareConfig,
        {
            "source": "default",
            "count": preset.public_images,
            "size": size,
            "out": str(public_data),
            "quiet": True,
        },  # fmt: skip
        source="privacy modes public data",
    )
    print(f"privacy modes: public data ({preset.public_images} rendered images of {size}x{size})", flush=True)
    prepare(build_source(config), config)
    print("privacy modes: U-Net pretrained on the public data", flush=True)
    pretrained = _train({**base, "data": str(public_data)}, layout.modes_run_dir(f"public_{tag}"))
    start = {**base, "init_from": str(pretrained)}
    print("privacy modes: non-private fine-tune from the public start", flush=True)
    nonprivate = _train(start, layout.modes_run_dir(f"nonprivate_public_{tag}"))
    dp = {}
    for epsilon in preset.dp_epsilons:
        print(f"privacy modes: DP-SGD epsilon {epsilon:g} from the public start", flush=True)
        values = {
            **start,
            **getattr(preset, "dp_finetune_train", {}),
            "dp_epsilon": epsilon,
            "dp_delta": preset.dp_delta,
            "dp_unit": preset.dp_unit,
        }
        dp[epsilon] = _train(values, layout.modes_run_dir(f"dp_eps{epsilon:g}_public_{tag}"))
    # Scored on the private test split (its own test split is public), with the same fixed noise. Only the
    # per-image table is kept: an evaluation folder under OUT would enter the paper's tables as a grid run.
    scores = layout.modes_public_scores
    if not scores.is_file():
        with tempfile.TemporaryDirectory(dir=layout.modes_dir) as scratch:
            evaluation = evaluate_run(
                pretrained, data_dir=data_dir, split="test", out_dir=Path(scratch) / "eval", keep_samples=0
            )
            shutil.copyfile(Path(evaluation) / "per_image.csv", scores)
    return {"pretrained": pretrained, "nonprivate": nonprivate, "dp": dp, "on_private_test": scores}


def scratch_epsilons(preset: Any) -> tuple[float, ...]:
    """The epsilons DP-SGD is trained at from scratch (getattr: presets from before the field)."""
    chosen = getattr(preset, "dp_scratch_epsilons", None)
    return tuple(preset.dp_epsilons if chosen is None else chosen)


def _membership_or_none(audit: Any, run: Path) -> dict[str, Any] | None:
    """A federated run's checkpoint may lack what the membership audit needs: then the cell stays empty."""
    try:
        return audit(run)
    except (MeddenoiseError, KeyError, ValueError) as exc:
        print(f"privacy modes: no membership audit of {run.name} ({exc})", flush=True)
        return None


def notes(preset: Any, source: str = "default") -> list[str]:
    """`source`: the prepared folder's source; the reason for a per-image unit holds for the default only."""
    if preset.dp_unit != "image":
        unit = "per patient (all of a patient's training images are one unit)"
    elif source == "default":
        unit = (
            "per image: the rendered default holds one patient (one CT), so a per-patient guarantee would "
            "cover a single unit"
        )
    else:
        unit = (
            f"per image (the {preset.name} preset's unit); a patient with several training images is "
            "protected less than epsilon says (train with --dp-unit patient for a per-patient guarantee)"
        )
    shared = (
        "one shared set trained like the non-private GroupNorm U-Net"
        if getattr(preset, "membership_shared_references", False)
        else "trained like each audited run"
    )
    epochs = getattr(preset, "membership_reference_epochs", 0)
    calibrated = (
        f"offline LiRA with {preset.membership_reference_models} reference models ({shared}"
        f"{f', {epochs} epochs' if epochs else ''}) on the val patients, disjoint from members and "
        "non-members, beside the loss-threshold attack; best and last checkpoints"
        if preset.membership_reference_models
        else "the loss-threshold attack only (no reference models, to keep the preset's time): weak, an "
        "AUC near 0.5 says little"
    )

    def listed(values: tuple[float, ...]) -> str:
        return ", ".join(f"{e:g}" for e in values) or "none"

    runs = f"epsilon {listed(scratch_epsilons(preset))} from scratch"
    if preset.dp_public_pretraining:
        finetune = getattr(preset, "dp_finetune_train", {})
        schedule = ", ".join(
            f"{k.replace('_', ' ')} {v:g}" if isinstance(v, (int, float)) else f"{k.replace('_', ' ')} {v}"
            for k, v in sorted(finetune.items())
        )
        runs += f", epsilon {listed(preset.dp_epsilons)} fine-tuned from the public start" + (
            f" ({schedule}; its non-private reference keeps the grid's recipe)" if schedule else ""
        )
    return [
        f"DP-SGD runs at noise std {preset.dp_noise_std:g} only: {runs}; delta {preset.dp_delta:g}, "
        f"guarantee {unit}. Same U-Net as the grid, with GroupNorm (BatchNorm mixes the images of a batch, "
        "which DP-SGD cannot bound); from scratch with the grid's schedule and epochs.",
        f"Membership: {calibrated}; members are the run's training images, non-members the test split.",
        "linkage@1 / re-id@1 describe the released images (the obfuscation audit at the same level); a DP "
        "model is trained where the clean images are, and only the model leaves.",
    ]


def markdown(result: dict[str, Any]) -> str:
    from meddenoise.privacy import modes

    lines = [
        f"## Privacy modes at noise std {result['noise_std']:g}",
        "",
        modes.markdown_table(result["rows"]),
    ]
    lines += (
        ["Notes:", ""] + [f"- {n}" for n in result["notes"]] + ["", "Verdict (from the numbers above):", ""]
    )
    lines += [f"- {sentence}" for sentence in result["verdict"]]
    return "\n".join(lines) + "\n"
