"""The report section "Federated training": each federated run (meddenoise.federated) against the one-device
run of the same model, noise level and seed, trained for as many epochs as the federation has rounds.

Per run: partition, strategy and sites (from its config.json), test PSNR / SSIM and the paired gap to
centralized on the same test images (with its interval, cluster-aware), the rounds until its global
validation PSNR came within 0.5 dB of the centralized run's best, the optimizer steps both took, megabytes
per round, wall time (training and validation) of both, and Flower's own share of the round time relative to
the sites' local training. Everything is read from the runs' files; nothing is recomputed.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from meddenoise.report.collect import Collection, Evaluation, method_label
from meddenoise.report.document import Block, Heading, Paragraph, Table
from meddenoise.report.summary import format_p
from meddenoise.report.tables import (
    TableResult,
    _aligned,
    _aligned_groups,
    _clustered,
    ids_unknown,
    paired_test,
    pool_runs,
)
from meddenoise.rundir import RunDir

SECTION_TITLE = "Federated training"
WITHIN_DB = 0.5
PREFIX = "federated-"


def federated_evaluations(collection: Collection) -> list[Evaluation]:
    return [e for e in collection.networks() if e.strategy.startswith(PREFIX) and e.run_dir is not None]


def _centralized(collection: Collection, run: Evaluation) -> Evaluation | None:
    return next(
        (
            e
            for e in collection.networks()
            if e.strategy == "single"
            and e.method == run.method
            and math.isclose(e.noise_std, run.noise_std)
            and e.seed == run.seed
            and e.run_dir is not None
        ),
        None,
    )


def _setup(config: dict[str, Any]) -> str:
    partition = config.get("partition", "?")
    if config.get("site_data"):
        partition = "one folder per site"
    elif partition == "dirichlet":
        partition = f"Dirichlet alpha {config.get('alpha')}"
    strategy = str(config.get("strategy", "?"))
    label = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedadam": "FedAdam", "fedyogi": "FedYogi"}.get(
        strategy, strategy
    )
    if strategy == "fedprox":
        label += f" (mu {config.get('proximal_mu')})"
    sites = len(config.get("site_data") or []) or config.get("sites", "?")
    local = ""
    if int(config.get("local_steps") or 0) > 0:
        local = f", {config['local_steps']} local steps per round"
    elif int(config.get("local_epochs") or 1) != 1:
        local = f", {config['local_epochs']} local epochs per round"
    return f"{partition}, {label}, {sites} sites{local}"


def _wall_seconds(records: list[dict[str, Any]], federated: bool) -> float:
    if federated:
        return sum(r.get("round_seconds", 0.0) for r in records)
    return sum(r.get("train_seconds", 0.0) + r.get("val_seconds", 0.0) for r in records)


def _flower_share(records: list[dict[str, Any]]) -> float | None:
    """Flower's time over the sites' local training time, rounds 2+ (round 1 also starts the site
    processes)."""
    later = records[1:] or records
    local = sum(r.get("local_train_seconds", 0.0) for r in later)
    return sum(r.get("flower_overhead_seconds", 0.0) for r in later) / local if local else None


def table_federated(collection: Collection) -> TableResult | None:
    runs = federated_evaluations(collection)
    if not runs:
        return None
    columns = [
        "Noise std",
        "Model",
        "Sites",
        "PSNR (dB)",
        "Gap to centralized (dB)",
        "SSIM",
        "Rounds to within 0.5 dB",
        "Steps (fed / central)",
        "MB per round",
        "Wall time s (fed / central)",
        "Flower / local training",
    ]
    display, rows, methods = [], [], []
    unit = collection.cluster_unit()
    for run in sorted(runs, key=lambda e: (e.noise_std, str(e.run_dir))):
        folder = RunDir(run.run_dir)
        config, records = folder.read_config(), folder.read_metrics()
        central = _centralized(collection, run)
        central_records = RunDir(central.run_dir).read_metrics() if central is not None else []
        fed_pooled = pool_runs([run])
        row: dict[str, Any] = {
            "run": str(run.run_dir),
            "noise_std": run.noise_std,
            "method": run.method,
            "setup": _setup(config),
            "psnr": statistics.fmean(fed_pooled.values["psnr"]),
            "ssim": statistics.fmean(fed_pooled.values["ssim"]),
            "rounds": len(records),
            "steps": sum(r.get("steps", 0) for r in records),
            "megabytes_per_round": statistics.fmean(
                (r.get("bytes_sent", 0) + r.get("bytes_received", 0)) / 1e6 for r in records
            )
            if records
            else None,
            "wall_seconds": _wall_seconds(records, True),
            "flower_share": _flower_share(records),
            "centralized_run": str(central.run_dir) if central is not None else None,
        }
        if central is not None:
            central_pooled = pool_runs([central])
            fed_values, central_values = _aligned(fed_pooled, central_pooled)
            test = paired_test(
                fed_values["psnr"], central_values["psnr"], _aligned_groups(fed_pooled, central_pooled), unit
            )
            best = max(r["val_psnr"] for r in central_records) if central_records else None
            within = next(
                (r["round"] for r in records if best is not None and r["val_psnr"] >= best - WITHIN_DB), None
            )
            row.update(
                psnr_gap=test["mean_difference"],
                psnr_gap_low=test["difference_low"],
                psnr_gap_high=test["difference_high"],
                psnr_gap_t_p=test["t_p"],
                psnr_gap_image_weighted=test["image_mean_difference"],
                gap_images=int(fed_values["psnr"].size),
                gap_groups=test["groups"],
                gap_unit=unit,
                centralized_best_val_psnr=best,
                rounds_within_0_5_db=within,
                centralized_steps=sum(r.get("steps", 0) for r in central_records),
                centralized_wall_seconds=_wall_seconds(central_records, False),
            )
            methods.append(test["test_method"])
        rows.append(row)
        display.append(_display_row(row))
    notes = [
        "Centralized: the one-device run of the same model, noise level and seed (Tables III/IV), trained "
        "for as many epochs as the federation has rounds. With one local epoch per round both take about "
        "the same number of optimizer steps; with more, the sites together take proportionally more (the "
        "Steps column lists both). Gap: federated - centralized on the "
        f"same test images, as the mean over {unit}s of each {unit}'s mean difference when {unit}s repeat "
        "(else over images), with its 95% t-interval on the same differences.",
        _clustered().describe_tests(methods, unit, ids_unknown=ids_unknown(collection)),
        # one federated run against one centralized run of the same seed: a single training seed per side
        _clustered().describe_seeds([1] * len(methods), unit),
        f"Rounds to within {WITHIN_DB} dB: the first round whose global validation PSNR (image-weighted over "
        "the sites) reached the centralized run's best validation PSNR minus 0.5 dB; 'never' if none did.",
        "MB per round: payload of the messages both ways (weights and per-site aggregates; transport framing "
        "not counted). Wall time: training and validation, from the runs' files; the federated time includes "
        "Flower's simulation on this machine (sites one after another). Flower / local training: the round "
        "time not spent in the sites' own training or validation, over their training time, rounds 2 on "
        "(round 1 also starts the site processes).",
    ]
    notes = [note for note in notes if note]
    table = Table(columns, display, "Federated training against centralized training", notes)
    return TableResult(table, rows)


def _number(value: Any, digits: int) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def _display_row(row: dict[str, Any]) -> list[str]:
    gap = "no centralized run"
    if "psnr_gap" in row:
        gap = (
            f"{row['psnr_gap']:+.2f} [{_number(row['psnr_gap_low'], 2)}, {_number(row['psnr_gap_high'], 2)}]"
        )
    within = row.get("rounds_within_0_5_db")
    steps = f"{row['steps']} / {row.get('centralized_steps', 'n/a')}"
    wall = f"{row['wall_seconds']:.1f} / " + (
        f"{row['centralized_wall_seconds']:.1f}" if "centralized_wall_seconds" in row else "n/a"
    )
    share = "n/a" if row["flower_share"] is None else f"{100 * row['flower_share']:.0f}%"
    return [
        f"{row['noise_std']:g}",
        method_label(row["method"]),
        row["setup"],
        _number(row["psnr"], 2),
        gap,
        _number(row["ssim"], 4),
        ("never" if "psnr_gap" in row else "n/a") if within is None else f"{within} of {row['rounds']}",
        steps,
        _number(row["megabytes_per_round"], 2),
        wall,
        share,
    ]


def _units(row: dict[str, Any]) -> str:
    images, groups = row["gap_images"], row.get("gap_groups") or row["gap_images"]
    return (
        f"{images} test images" if groups == images else f"{images} test images of {groups} patients/groups"
    )


def federated_section(collection: Collection, result: TableResult) -> list[Block]:
    blocks: list[Block] = [Heading(2, SECTION_TITLE)]
    blocks.append(
        Paragraph(
            "Each site trains the global model on its own images with the same engine; only weights and "
            "per-site means and counts travel (Flower, simulated on this machine). See docs/federated.md."
        )
    )
    blocks.append(result.table)
    gaps = [row for row in result.rows if "psnr_gap" in row]
    if gaps:
        sentences = [
            f"{row['setup']}: {row['psnr_gap']:+.2f} dB PSNR against centralized training "
            f"[{_number(row['psnr_gap_low'], 2)}, {_number(row['psnr_gap_high'], 2)}], paired t-test p "
            f"{format_p(row.get('psnr_gap_t_p'))} ({_units(row)}; one training seed each, so the gap's "
            "interval covers the test images, not training randomness)."
            for row in gaps
        ]
        blocks.append(Paragraph(" ".join(sentences)))
    return blocks
