"""The report's figures, drawn with matplotlib (Agg, imported lazily) from the files of a `Collection`.

Each function writes one PNG and returns its caption (or None when the runs hold nothing to draw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meddenoise.fileio import atomic_write_bytes
from meddenoise.report.collect import (
    Collection,
    Evaluation,
    method_label,
    method_sort_key,
    strategy_label,
    strategy_sort_key,
)

# The paper's qualitative comparison, plus the strongest classical and learned baselines.
GRID_METHODS = ("unet", "unetpp", "dncnn", "bm3d")
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def primary_evaluation(collection: Collection, method: str, noise_std: float) -> Evaluation | None:
    """The evaluation that stands for `method` at `noise_std` in figures: one device (or a baseline),
    first seed."""
    candidates = [
        e
        for e in collection.evaluations
        if e.method == method and math.isclose(e.noise_std, noise_std) and e.strategy in ("", "single")
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda e: (e.seed if e.seed is not None else -1, str(e.folder)))


def _metric_text(evaluation: Evaluation, image_id: str) -> str:
    for row in evaluation.rows:
        if row["image_id"] == image_id:
            return f"{float(row['psnr']):.2f} dB / {float(row['ssim']):.4f}"
    return "n/a"


def zoom_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, size_y, size_x) of the inset region: a quarter-side box left of centre, where a chest
    radiograph has lung field, rib edges and heart border in one view."""
    size_y, size_x = max(height // 4, 4), max(width // 4, 4)
    return height // 2 - size_y // 2, width // 3 - size_x // 2, size_y, size_x


def _show_with_inset(axis, image: np.ndarray) -> None:
    from matplotlib.patches import Rectangle

    height, width = image.shape
    top, left, size_y, size_x = zoom_box(height, width)
    axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axis.add_patch(Rectangle((left - 0.5, top - 0.5), size_x, size_y, fill=False, edgecolor="yellow", lw=1))
    inset = axis.inset_axes([0.6, 0.0, 0.4, 0.4])
    inset.imshow(
        image[top : top + size_y, left : left + size_x], cmap="gray", vmin=0, vmax=1, interpolation="nearest"
    )
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor("yellow")
    axis.set_xticks([])
    axis.set_yticks([])


def qualitative_grid(collection: Collection, noise_std: float, path: Path, max_images: int = 3) -> str | None:
    """Rows: sample test images; columns: noisy | U-Net | U-Net++ | DnCNN | BM3D | clean (those that
    exist)."""
    panels = [(m, primary_evaluation(collection, m, noise_std)) for m in GRID_METHODS]
    panels = [(m, e) for m, e in panels if e is not None and e.samples() is not None]
    reference = panels[0][1] if panels else primary_evaluation(collection, "noisy", noise_std)
    reference_samples = reference.samples() if reference else None
    if reference_samples is None:
        return None
    noisy_eval = primary_evaluation(collection, "noisy", noise_std)
    image_ids = list(reference_samples["image_ids"][:max_images])
    samples = {m: e.samples() for m, e in panels}
    columns = ["noisy", *[m for m, _ in panels], "clean"]
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(image_ids), len(columns), figsize=(2.3 * len(columns), 2.5 * len(image_ids)), squeeze=False
    )
    captions = []
    for row, image_id in enumerate(image_ids):
        parts = []
        for col, column in enumerate(columns):
            axis = axes[row][col]
            if column in ("noisy", "clean"):
                image = reference_samples[column][row]
                title = "Noisy input" if column == "noisy" else "Clean"
                if column == "noisy" and noisy_eval is not None:
                    title += f"\n{_metric_text(noisy_eval, image_id)}"
                    parts.append(f"noisy {_metric_text(noisy_eval, image_id)}")
            else:
                evaluation = dict(panels)[column]
                ids = list(samples[column]["image_ids"])
                if image_id not in ids:  # this method was evaluated on a subset without this image
                    axis.set_axis_off()
                    axis.set_title(f"{method_label(column)}\nnot evaluated", fontsize=8)
                    continue
                image = samples[column]["denoised"][ids.index(image_id)]
                metrics = _metric_text(evaluation, image_id)
                title = f"{method_label(column)}\n{metrics}"
                parts.append(f"{method_label(column)} {metrics}")
            _show_with_inset(axis, image)
            axis.set_title(title, fontsize=8)
        captions.append(f"`{image_id}`: " + ", ".join(parts))
    figure.suptitle(f"Noise std {noise_std:g}: outputs on test images (inset: zoomed region)", fontsize=10)
    _save(figure, path)
    return (
        f"Qualitative comparison at noise std {noise_std:g} (mean {reference.noise_mean:g}); PSNR / SSIM per "
        "image against the clean image; the inset enlarges the boxed region. " + "; ".join(captions) + "."
    )


def error_maps(collection: Collection, noise_std: float, path: Path) -> str | None:
    """|output - clean| of the first sample image for the noisy input and each method, one shared
    colour scale."""
    methods = sorted({e.method for e in collection.evaluations}, key=method_sort_key)
    chosen = [(m, primary_evaluation(collection, m, noise_std)) for m in methods]
    chosen = [(m, e, e.samples()) for m, e in chosen if e is not None]
    chosen = [(m, e, s) for m, e, s in chosen if s is not None and len(s["image_ids"])]
    if not chosen:
        return None
    image_id = str(chosen[0][2]["image_ids"][0])
    errors = []
    for method, _, samples in chosen:
        ids = list(samples["image_ids"])
        if image_id not in ids:
            continue
        index = ids.index(image_id)
        source = samples["noisy"] if method == "noisy" else samples["denoised"]
        errors.append((method, np.abs(source[index] - samples["clean"][index])))
    vmax = max(float(np.percentile(err, 99.5)) for _, err in errors) or 1.0
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(errors), figsize=(2.4 * len(errors), 2.7), squeeze=False)
    for axis, (method, error) in zip(axes[0], errors):
        shown = axis.imshow(error, cmap="magma", vmin=0.0, vmax=vmax)
        axis.set_title(f"{method_label(method)}\nmean {error.mean():.4f}", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(shown, ax=list(axes[0]), shrink=0.8)
    _save(figure, path)
    return (
        f"Absolute error |output - clean| on test image `{image_id}` at noise std {noise_std:g} "
        f"(colour scale 0 to {vmax:.3f}, shared by all panels; darker is better)."
    )


def _epoch_series(epochs: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in epochs:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(float(row["epoch"]))
            ys.append(float(value))
    return xs, ys


def curve_panels(collection: Collection) -> dict[str, list[Evaluation]]:
    """The one-device runs with a history, one panel per model (training target included), each holding
    one run per noise level (first seed): a handful of lines per panel, each its own colour."""
    runs = [
        e
        for e in collection.networks()
        if e.strategy == "single" and collection.history(e) and collection.history(e).epochs
    ]
    first_seed = {}
    for run in runs:
        key = (run.method, run.noise_std)
        if key not in first_seed or (run.seed or 0) < (first_seed[key].seed or 0):
            first_seed[key] = run
    panels: dict[str, list[Evaluation]] = {}
    for (method, _), run in sorted(
        first_seed.items(), key=lambda item: (method_sort_key(item[0][0]), item[0][1])
    ):
        panels.setdefault(method, []).append(run)
    return panels


def training_curves(collection: Collection, path: Path) -> str | None:
    """Per model a row of two panels (loss; validation PSNR) with one line per noise level and the legend
    outside the axes, so no line hides under it and no two lines share a colour."""
    panels = curve_panels(collection)
    if not panels:
        return None
    plt = _pyplot()
    rows = len(panels)
    figure, axes = plt.subplots(rows, 2, figsize=(11, 2.4 * rows + 0.6), squeeze=False)
    levels = sorted({run.noise_std for runs in panels.values() for run in runs})
    colours = {
        level: plt.get_cmap("viridis")(i / max(1, len(levels) - 1) * 0.85) for i, level in enumerate(levels)
    }
    for (method, runs), (loss_axis, psnr_axis) in zip(panels.items(), axes):
        for run in runs:
            epochs = collection.history(run).epochs
            colour, label = colours[run.noise_std], f"std {run.noise_std:g}"
            # markers, so a run of one epoch still shows its point
            xs, ys = _epoch_series(epochs, "train_loss")
            loss_axis.plot(xs, ys, color=colour, ls="--", lw=1, marker="x", ms=3)
            xs, ys = _epoch_series(epochs, "val_loss")
            loss_axis.plot(xs, ys, color=colour, lw=1.5, marker="o", ms=3, label=label)
            xs, ys = _epoch_series(epochs, "val_psnr")
            psnr_axis.plot(xs, ys, color=colour, lw=1.5, marker="o", ms=3, label=label)
        loss_axis.set(
            ylabel="L1 loss", title=f"{method_label(method)}: loss (dashed: training, solid: validation)"
        )
        psnr_axis.set(ylabel="PSNR (dB)", title=f"{method_label(method)}: validation PSNR")
        psnr_axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        for axis in (loss_axis, psnr_axis):
            axis.grid(alpha=0.3)
    for axis in axes[-1]:
        axis.set_xlabel("epoch")
    figure.tight_layout()
    _save(figure, path)
    return (
        "Training curves of the one-device runs (first seed), one row per model, one line per noise level, "
        "read from each run's metrics.jsonl."
    )


def training_times(collection: Collection, path: Path) -> str | None:
    """Bar chart of training time per configuration (mean over seeds), grouped by model and noise level."""
    bars: dict[str, list[float]] = {}
    for evaluation in collection.networks():
        seconds = collection.train_seconds(evaluation)
        if seconds is None:
            continue
        key = (evaluation.method, evaluation.noise_std, evaluation.strategy)
        bars.setdefault(key, []).append(seconds)
    if not bars:
        return None
    keys = sorted(bars, key=lambda k: (method_sort_key(k[0]), k[1], strategy_sort_key(k[2])))
    labels = [f"{method_label(m)} {s:g}\n{strategy_label(st)}" for m, s, st in keys]
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 0.7 * len(keys) + 2), 4))
    strategies = sorted({k[2] for k in keys}, key=strategy_sort_key)
    colours = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(strategies)}
    values = [float(np.mean(bars[k])) for k in keys]
    axis.bar(range(len(keys)), values, color=[colours[k[2]] for k in keys])
    axis.set_xticks(range(len(keys)))
    axis.set_xticklabels(labels, fontsize=7, rotation=60, ha="right")
    axis.set_ylabel("training time (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[s]) for s in strategies]
    axis.legend(handles, [strategy_label(s) for s in strategies], fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    _save(figure, path)
    return "Training time per configuration (mean over seeds), as recorded by the training engine."


def metric_distributions(collection: Collection, path: Path) -> str | None:
    """Box plots of per-image PSNR and SSIM per method, one column per noise level."""
    _save(distribution_figure(collection), path)
    return (
        "Distribution of per-image PSNR (dB) and SSIM on the test images (boxes: quartiles; "
        "whiskers: 1.5 IQR)."
    )


def distribution_figure(collection: Collection) -> Any:
    """The box-plot figure (laid out, not saved): rows PSNR / SSIM, one column per noise level."""
    levels = collection.noise_levels()
    methods = sorted({e.method for e in collection.evaluations}, key=method_sort_key)
    plt = _pyplot()
    figure, axes = plt.subplots(2, len(levels), figsize=(max(5, 3.8 * len(levels)), 7), squeeze=False)
    for col, level in enumerate(levels):
        for row, metric in enumerate(("psnr", "ssim")):
            data, names = [], []
            for method in methods:
                evaluation = primary_evaluation(collection, method, level)
                if evaluation is not None:
                    data.append(evaluation.values(metric))
                    names.append(method_label(method))
            axis = axes[row][col]
            if data:
                axis.boxplot(data, showfliers=False)
                axis.set_xticks(range(1, len(names) + 1))
                axis.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
            axis.set_title(f"{metric.upper()} at noise std {level:g}", fontsize=9)
            axis.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM", fontsize=8)
            axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()  # room for the rotated labels: they must not run into the row below
    return figure
