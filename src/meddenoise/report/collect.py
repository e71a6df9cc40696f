"""Read what a reproduction (or any folder of runs) left on disk: evaluations, training histories, the plan.

Nothing here computes a metric; it only loads files written by `evaluate`, the training engine and
`reproduce`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meddenoise.errors import MeddenoiseError
from meddenoise.evaluation import files
from meddenoise.reprodir import ReproDir
from meddenoise.rundir import RunDir

METHOD_LABELS = {
    "noisy": "Noisy input",
    "gaussian": "Gaussian filter",
    "nlm": "Non-local means",
    "bm3d": "BM3D",
    "dncnn": "DnCNN",
    "unet": "U-Net",
    "unetpp": "U-Net++",
}
# Table order: classical first, then learned, as in the paper's Table VI.
METHOD_ORDER = ("noisy", "gaussian", "nlm", "bm3d", "dncnn", "unet", "unetpp")
STRATEGY_LABELS = {
    "single": "1 device",
    "dp": "DP",
    "ddp": "DDP",
    "ddp+amp": "DDP+AMP",
    "dp+amp": "DP+AMP",
    "single+dp-sgd": "1 device, DP-SGD",
}
STRATEGY_ORDER = ("single", "single+amp", "dp", "dp+amp", "ddp", "ddp+amp", "single+dp-sgd")


def method_label(method: str) -> str:
    model, _, target = method.partition("+")
    label = METHOD_LABELS.get(model, model)
    return f"{label} ({target})" if target else label


def method_sort_key(method: str) -> tuple[int, str]:
    model, _, target = method.partition("+")
    rank = METHOD_ORDER.index(model) if model in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, target)


def strategy_label(strategy: str) -> str:
    if strategy.startswith("federated-"):  # meddenoise.federated: "federated-fedavg" -> "federated (fedavg)"
        return f"federated ({strategy.split('-', 1)[1]})"
    base, _, protocol = strategy.partition("/")
    label = STRATEGY_LABELS.get(base, base)
    return f"{label} ({protocol})" if protocol else label


def strategy_sort_key(strategy: str) -> tuple[int, str]:
    base = strategy.partition("/")[0]
    return (STRATEGY_ORDER.index(base) if base in STRATEGY_ORDER else len(STRATEGY_ORDER), strategy)


@dataclasses.dataclass
class Evaluation:
    """One evaluation folder: its record (evaluation.json) and its per-image rows."""

    folder: Path
    info: dict[str, Any]
    rows: list[dict[str, str]]
    protocol: str = ""  # multi-device runs: "paper" or "controlled" (from the recorded steps), else ""

    @property
    def setup(self) -> str:
        """The strategy, with the timing protocol when a multi-device run's is known."""
        return (
            f"{self.strategy}/{self.protocol}" if self.protocol in ("paper", "controlled") else self.strategy
        )

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", "network"))

    @property
    def method(self) -> str:
        return str(self.info["method"])

    @property
    def noise_std(self) -> float:
        return float(self.info["noise"]["std"])

    @property
    def noise_mean(self) -> float:
        return float(self.info["noise"]["mean"])

    @property
    def strategy(self) -> str:
        return str(self.info.get("strategy") or "")

    @property
    def seed(self) -> int | None:
        seed = self.info.get("seed")
        return None if seed is None else int(seed)

    @property
    def run_dir(self) -> Path | None:
        relative = self.info.get("run_dir_relative")
        return (self.folder / relative).resolve() if relative else None

    def values(self, metric: str) -> np.ndarray:
        return files.metric_values(self.rows, metric)

    def image_ids(self) -> list[str]:
        return [row["image_id"] for row in self.rows]

    def patient_ids(self) -> list[str]:
        return [row["patient_id"] for row in self.rows]

    def group_ids(self) -> list[str]:
        """The unit the split kept together (patient; pose group for the rendered default): the clusters of
        every interval and paired test. Older per-image tables without the column fall back to patients."""
        return [row.get("group") or row["patient_id"] for row in self.rows]

    def head_rows(self) -> list[dict[str, str]]:
        path = self.folder / files.PER_HEAD_FILE
        return files.read_rows(path) if path.is_file() else []

    def samples(self) -> dict[str, np.ndarray] | None:
        return files.read_samples(self.folder / files.SAMPLES_FILE)


@dataclasses.dataclass
class RunHistory:
    """What the training engine recorded: per-epoch rows of metrics.jsonl and the total training time."""

    run_dir: Path
    epochs: list[dict[str, Any]]
    train_seconds: float | None
    world_size: int | None
    device: str
    global_steps: int | None = None  # optimizer steps of the whole run (summary.csv)
    epochs_run: int | None = None
    selection: str = ""  # the best-checkpoint rule the engine used ("clean", "released"; "" if not recorded)
    summary: dict[str, str] = dataclasses.field(default_factory=dict)  # the row of summary.csv
    batch_size: int | None = None  # per device, from the run's config.json


def cluster_unit(data: dict[str, Any]) -> str:
    """ "pose group" for the rendered default (one CT: groups are its poses), else "patient"."""
    return "pose group" if (data or {}).get("source") == "default" else "patient"


def load_evaluation(folder: Path) -> Evaluation:
    info = files.read_info(folder)
    rows = files.read_rows(folder / files.PER_IMAGE_FILE)
    if not rows:
        raise MeddenoiseError(f"{folder / files.PER_IMAGE_FILE} has no rows; evaluate again")
    return Evaluation(folder=folder, info=info, rows=rows)


def number(value: Any) -> float | None:
    """A float from a table cell or record value; None when missing, unreadable or NaN."""
    try:
        parsed = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(parsed) else parsed


def load_history(run_dir: Path) -> RunHistory:
    """Per-epoch rows (metrics.jsonl) and the training time of an engine run folder (summary.csv).

    The training time is the engine's `train_seconds`: the training loop summed over epochs, validation
    excluded; when summary.csv is missing (a run still going), the per-epoch `train_seconds` are summed.
    """
    run = RunDir(run_dir)
    epochs = [row for row in run.read_metrics() if row.get("epoch") is not None]
    summary = run.read_summary()
    total = number(summary.get("train_seconds"))
    if total is None and epochs:
        times = [number(row.get("train_seconds")) for row in epochs]
        if all(t is not None for t in times):
            total = float(sum(times))
    world_size = number(summary.get("world_size"))
    steps, epochs_run = number(summary.get("global_steps")), number(summary.get("epochs_run"))
    return RunHistory(
        run_dir=run_dir,
        epochs=epochs,
        train_seconds=total,
        world_size=None if world_size is None else int(world_size),
        device=str(summary.get("device", "")),
        global_steps=None if steps is None else int(steps),
        epochs_run=None if epochs_run is None else int(epochs_run),
        selection=str(summary.get("selection", "")),
        summary=dict(summary),
        batch_size=_integer(run.read_config().get("batch_size")),
    )


def _integer(value: Any) -> int | None:
    parsed = number(value)
    return None if parsed is None else int(parsed)


@dataclasses.dataclass
class Collection:
    """Everything the report is built from."""

    root: Path
    evaluations: list[Evaluation]
    histories: dict[Path, RunHistory]
    plan: dict[str, Any]
    ignored: list[Path] = dataclasses.field(default_factory=list)  # evaluations of other data
    timing: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # plan's timed runs + "history"
    # networks tested at another noise level than they were trained at (`evaluate --noise-std`): kept out
    # of every table of trained levels, shown in the robustness table only
    robustness: list[Evaluation] = dataclasses.field(default_factory=list)

    def networks(self) -> list[Evaluation]:
        return [e for e in self.evaluations if e.kind == "network"]

    def baselines(self) -> list[Evaluation]:
        return [e for e in self.evaluations if e.kind == "baseline"]

    def cluster_unit(self) -> str:
        """What one group of per-image rows is: a pose group of the rendered default, else a patient."""
        data = self.plan.get("data") or next(
            (e.info["data"] for e in self.evaluations if e.info.get("data")), {}
        )
        return cluster_unit(data)

    def noise_levels(self) -> list[float]:
        return sorted({e.noise_std for e in self.evaluations})

    def history(self, evaluation: Evaluation) -> RunHistory | None:
        return self.histories.get(evaluation.run_dir) if evaluation.run_dir else None

    def train_seconds(self, evaluation: Evaluation) -> float | None:
        recorded = number(evaluation.info.get("train_seconds"))
        if recorded is not None:
            return recorded
        history = self.history(evaluation)
        return history.train_seconds if history else None


def collect(root: str | Path, *, split: str = "test") -> Collection:
    """Load every evaluation of `split` below `root`, the histories of their runs and the reproduction
    plan."""
    root = Path(root)
    if not root.is_dir():
        raise MeddenoiseError(f"{root} is not a folder; give the folder that `meddenoise reproduce` wrote")
    evaluations = []
    for folder in files.find_evaluations(root):
        evaluation = load_evaluation(folder)
        if evaluation.info.get("split", "test") == split:
            evaluations.append(evaluation)
    if not evaluations:
        raise MeddenoiseError(
            f"no evaluations of split {split!r} under {root}; run `meddenoise evaluate RUN_DIR` or "
            "`meddenoise reproduce --out DIR` first"
        )
    plan = ReproDir(root).read_plan()
    evaluations, ignored = _one_data_folder(evaluations, (plan.get("data") or {}).get("folder"))
    robustness = [e for e in evaluations if e.info.get("trained_noise_std") is not None]
    evaluations = [e for e in evaluations if e.info.get("trained_noise_std") is None]
    if not evaluations:
        raise MeddenoiseError(
            f"under {root} every evaluation of split {split!r} is at another noise level than its run was "
            "trained at; evaluate the runs at their own level first"
        )
    histories = {}
    for evaluation in evaluations:
        run_dir = evaluation.run_dir
        if run_dir is not None and run_dir not in histories and run_dir.is_dir():
            histories[run_dir] = load_history(run_dir)
    _set_protocols(evaluations, histories)
    timing = []
    for entry in plan.get("timing") or []:
        folder = root / entry["folder"]
        if folder.is_dir():
            timing.append({**entry, "history": histories.get(folder.resolve()) or load_history(folder)})
    return Collection(
        root=root,
        evaluations=evaluations,
        histories=histories,
        plan=plan,
        ignored=ignored,
        timing=timing,
        robustness=robustness,
    )


def _set_protocols(evaluations: list[Evaluation], histories: dict[Path, RunHistory]) -> None:
    """Tell the timing protocols of multi-device runs apart by their optimizer steps against the one-device
    run of the same model, noise level and seed: equal = controlled, fewer = paper (global batch grew)."""
    single_steps = {}
    for evaluation in evaluations:
        history = histories.get(evaluation.run_dir) if evaluation.run_dir else None
        if evaluation.strategy == "single" and history is not None and history.global_steps is not None:
            single_steps[(evaluation.method, evaluation.noise_std, evaluation.seed)] = history.global_steps
    for evaluation in evaluations:
        history = histories.get(evaluation.run_dir) if evaluation.run_dir else None
        if (
            evaluation.kind != "network"
            or evaluation.strategy in ("single", "")
            or evaluation.strategy.endswith("+dp-sgd")  # DP-SGD is a privacy mode, not a device setup
            or history is None
        ):
            continue
        single = single_steps.get((evaluation.method, evaluation.noise_std, evaluation.seed))
        if single is not None and history.global_steps is not None:
            evaluation.protocol = "controlled" if history.global_steps == single else "paper"


def _data_folder(evaluation: Evaluation) -> str:
    return _same_folder_key(str((evaluation.info.get("data") or {}).get("folder", "")))


def _same_folder_key(folder: str | None) -> str:
    """One spelling per folder: runs record their data folder absolute, older records as typed (relative)."""
    if not folder:
        return ""
    path = Path(folder).expanduser()
    return str(path.resolve()) if path.exists() else folder


def _one_data_folder(
    evaluations: list[Evaluation], planned: str | None
) -> tuple[list[Evaluation], list[Path]]:
    """Keep the evaluations of one prepared folder (the plan's, else the most common): tables must compare
    methods on the same images, and `evaluate --data OTHER` results live next to the run's own."""
    folders = [_data_folder(e) for e in evaluations]
    planned = _same_folder_key(planned)
    chosen = planned if planned in folders else max(set(folders), key=folders.count)
    kept = [e for e, folder in zip(evaluations, folders) if folder == chosen]
    return kept, [e.folder for e, folder in zip(evaluations, folders) if folder != chosen]


def group_by(evaluations: Sequence[Evaluation], *keys: str) -> dict[tuple, list[Evaluation]]:
    groups: dict[tuple, list[Evaluation]] = {}
    for evaluation in evaluations:
        groups.setdefault(tuple(getattr(evaluation, key) for key in keys), []).append(evaluation)
    return groups
