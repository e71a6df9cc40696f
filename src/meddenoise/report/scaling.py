"""Table V: training-time saving of multi-device strategies against one device, with the checks that decide
whether a speed-up figure may be believed.

Two protocols are told apart by what the runs recorded (optimizer steps, batch per device, devices):
- paper: the batch per device is fixed, so the global batch grows with the devices and the run takes
  proportionally fewer optimizer steps (the paper's set-up; its "speed-up" mixes strategy and step count);
- controlled: the global batch and the optimizer steps equal one device's, so only the strategy differs.

Each compared configuration may have been trained several times (reproduce interleaves one-device and
multi-device runs and repeats them); the table shows the median training time and the spread (min-max).

Flags, printed next to the figure (a flagged figure never enters a summary sentence):
- "timing disturbed": a speed-up above the number of devices, impossible for pure data parallelism;
- "did not converge: not comparable": test PSNR less than 1 dB above the noisy input, or more than 1 dB below
  the one-device run (a run that did not learn may be fast for the wrong reason);
- "load changed": the machine's 1-minute load average at the start of training differed by more than half
  between the compared runs (and the higher one was at least 0.5), so they did not see the same machine;
- "fewer than 2 timed repeats": one of the compared configurations was timed only once, so nothing shows how
  much the time moves from run to run;
- "within run-to-run spread": both were timed at least twice, but their min-max ranges are not separated by
  a margin of 10% (the slower one's fastest run at least 10% above the faster one's slowest run), so the
  repeats do not show a difference in time, whatever the medians say.

A speed-up sentence is written only for an unflagged figure: at least 2 repeats of each side, ranges
separated by the margin, and none of the other flags.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from meddenoise.report.collect import (
    Collection,
    Evaluation,
    RunHistory,
    method_label,
    method_sort_key,
    number,
    strategy_label,
    strategy_sort_key,
)
from meddenoise.report.document import Table

PAPER_MODELS = ("unet", "unetpp")
FLAG_DISTURBED = "timing disturbed"
FLAG_NOT_CONVERGED = "did not converge: not comparable"
FLAG_LOAD = "load changed"
FLAG_SPREAD = "within run-to-run spread"
FLAG_FEW_REPEATS = "fewer than 2 timed repeats"
MIN_REPEATS = 2
SEPARATION_MARGIN = 0.10  # the slower range must start at least 10% above the end of the faster one
CONVERGENCE_MARGIN_DB = 1.0
LOAD_CHANGE = 0.5
LOAD_FLOOR = 0.5  # below this the machine counts as idle: 0.1 against 0.3 is no disturbance
PROTOCOL_LABELS = {
    "": "-",
    "paper": "paper (batch per device fixed)",
    "controlled": "controlled (equal global batch and steps)",
    "?": "not recorded",
}


@dataclasses.dataclass
class Timed:
    """The runs of one compared configuration (all repeats) and what they recorded."""

    method: str
    noise_std: float
    strategy: str
    protocol: str
    histories: list[RunHistory]

    def values(self, read) -> list[float]:
        found = [read(h) for h in self.histories]
        return [float(v) for v in found if v is not None and math.isfinite(float(v))]

    @property
    def seconds(self) -> list[float]:
        return self.values(lambda h: h.train_seconds)

    @property
    def cpu_seconds(self) -> list[float]:
        return self.values(lambda h: number(h.summary.get("cpu_seconds")))

    @property
    def loads(self) -> list[float]:
        return self.values(lambda h: number(h.summary.get("load_average_start")))

    @property
    def devices(self) -> int | None:
        worlds = {h.world_size for h in self.histories if h.world_size}
        return max(worlds) if worlds else None

    @property
    def steps(self) -> int | None:
        steps = {h.global_steps for h in self.histories if h.global_steps is not None}
        return max(steps) if steps else None

    @property
    def global_batch(self) -> int | None:
        batches = {h.batch_size * (h.world_size or 1) for h in self.histories if h.batch_size}
        return max(batches) if batches else None


def derive_protocol(history: RunHistory, single: RunHistory | None) -> str:
    """ "controlled" when a multi-device run took as many optimizer steps as one device, "paper" when it took
    fewer (its global batch grew), "?" when the runs do not say."""
    if single is None or history.global_steps is None or single.global_steps is None:
        return "?"
    return "controlled" if history.global_steps == single.global_steps else "paper"


def timed_configurations(collection: Collection) -> list[Timed]:
    """The timed runs grouped by (model, noise level, strategy, protocol): reproduce's list when it wrote one,
    else every evaluated U-Net / U-Net++ run, one repeat each."""
    entries = list(collection.timing)
    if not entries:
        for evaluation in collection.networks():
            history = collection.history(evaluation)
            # Federated runs are not a way to use more devices for one training (own report section).
            federated = evaluation.strategy.startswith("federated-")
            private = evaluation.strategy.endswith("+dp-sgd")  # a privacy mode: its time is not a speed-up
            if evaluation.method in PAPER_MODELS and history is not None and not federated and not private:
                entries.append(
                    {
                        "method": evaluation.method,
                        "noise_std": evaluation.noise_std,
                        "strategy": evaluation.strategy,
                        "protocol": "",
                        "history": history,
                    }
                )
    singles = {
        (e["method"], float(e["noise_std"])): e["history"] for e in entries if e["strategy"] == "single"
    }
    groups: dict[tuple, list[RunHistory]] = {}
    for entry in entries:
        key_level = float(entry["noise_std"])
        protocol = ""
        if entry["strategy"] != "single":
            protocol = entry.get("protocol") or derive_protocol(
                entry["history"], singles.get((entry["method"], key_level))
            )
        groups.setdefault((entry["method"], key_level, entry["strategy"], protocol), []).append(
            entry["history"]
        )
    return [Timed(*key, histories) for key, histories in groups.items()]


def _quality(collection: Collection, timed: Timed) -> float | None:
    """Mean test PSNR of the evaluated run(s) of this configuration (repeats beyond the first are not
    evaluated)."""
    folders = {h.run_dir.resolve() for h in timed.histories}
    runs = [e for e in collection.networks() if e.run_dir is not None and e.run_dir in folders]
    if not runs:
        return None
    return float(np.mean([np.nanmean(e.values("psnr")) for e in runs]))


def _noisy_psnr(collection: Collection, noise_std: float, runs: Sequence[Evaluation]) -> float | None:
    """Mean PSNR of the noisy input on the same images as `runs` (the `noisy` baseline), if evaluated."""
    noisy = [
        e for e in collection.baselines() if e.method == "noisy" and math.isclose(e.noise_std, noise_std)
    ]
    if not noisy or not runs:
        return None
    by_id = dict(zip(noisy[0].image_ids(), noisy[0].values("psnr")))
    shared = [by_id[i] for i in runs[0].image_ids() if i in by_id]
    return float(np.mean(shared)) if shared else None


def flags_for(
    timed: Timed,
    single: Timed | None,
    speedup: float | None,
    psnr: float | None,
    single_psnr: float | None,
    noisy_psnr: float | None,
) -> list[str]:
    """The reasons not to believe one speed-up figure (module docstring); empty when none applies."""
    flags = []
    devices = timed.devices or 1
    if speedup is not None and speedup > devices:
        flags.append(FLAG_DISTURBED)
    not_learned = psnr is not None and noisy_psnr is not None and psnr < noisy_psnr + CONVERGENCE_MARGIN_DB
    fell_behind = psnr is not None and single_psnr is not None and psnr < single_psnr - CONVERGENCE_MARGIN_DB
    single_not_learned = (
        single_psnr is not None
        and noisy_psnr is not None
        and single_psnr < noisy_psnr + CONVERGENCE_MARGIN_DB
    )
    if not_learned or fell_behind or single_not_learned:
        flags.append(FLAG_NOT_CONVERGED)
    if single is not None:
        loads = single.loads + timed.loads
        if len(loads) >= 2:
            high, low = max(loads), min(loads)
            if high >= LOAD_FLOOR and high - low > LOAD_CHANGE * high:
                flags.append(FLAG_LOAD)
    if single is None or min(len(single.seconds), len(timed.seconds)) < MIN_REPEATS:
        flags.append(FLAG_FEW_REPEATS)
    elif not ranges_separated(single.seconds, timed.seconds):
        flags.append(FLAG_SPREAD)
    return flags


def ranges_separated(
    first: Sequence[float], second: Sequence[float], margin: float = SEPARATION_MARGIN
) -> bool:
    """True when both were measured at least `MIN_REPEATS` times and the slower one's fastest run took at
    least (1 + margin) times the faster one's slowest run: the repeats show a difference beyond their spread.
    """
    if min(len(first), len(second)) < MIN_REPEATS:
        return False
    fast, slow = (first, second) if np.median(first) <= np.median(second) else (second, first)
    return min(slow) >= (1.0 + margin) * max(fast)


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f} (1 run)"
    return f"{np.median(values):.1f} [{min(values):.1f}-{max(values):.1f}, {len(values)} runs]"


def table_speedup(collection: Collection, skipped: Sequence[dict[str, str]] = ()) -> tuple[Any, list[str]]:
    """Table V and the summary sentences of its unflagged figures."""
    from meddenoise.report.tables import TableResult

    configurations = timed_configurations(collection)
    singles = {(t.method, t.noise_std): t for t in configurations if t.strategy == "single"}
    columns = [
        "Model",
        "Noise std",
        "Setup",
        "Protocol",
        "Devices",
        "Global batch",
        "Steps",
        "PSNR (dB)",
        "TT (s): median [min-max]",
        "CPU (s)",
        "Load at start",
        "TS (%)",
        "Speed-up",
        "Flags",
    ]
    order = sorted(
        configurations,
        key=lambda t: (method_sort_key(t.method), t.noise_std, strategy_sort_key(t.strategy), t.protocol),
    )
    display, csv_rows, sentences, flagged = [], [], [], 0
    for timed in order:
        single = singles.get((timed.method, timed.noise_std))
        seconds = timed.seconds
        median = float(np.median(seconds)) if seconds else None
        base = float(np.median(single.seconds)) if single is not None and single.seconds else None
        reduction = speedup = None
        if base and median and timed.strategy != "single":
            reduction, speedup = 100.0 * (1.0 - median / base), base / median
        psnr = _quality(collection, timed)
        single_psnr = _quality(collection, single) if single is not None else None
        runs = [
            e for e in collection.networks() if e.method == timed.method and e.noise_std == timed.noise_std
        ]
        noisy = _noisy_psnr(collection, timed.noise_std, runs)
        flags = (
            [] if timed.strategy == "single" else flags_for(timed, single, speedup, psnr, single_psnr, noisy)
        )
        single_row = timed.strategy == "single"
        if single_row and psnr is not None and noisy is not None and psnr < noisy + CONVERGENCE_MARGIN_DB:
            flags = [FLAG_NOT_CONVERGED]
        cpu = timed.cpu_seconds
        display.append(
            [
                method_label(timed.method),
                f"{timed.noise_std:g}",
                strategy_label(timed.strategy),
                PROTOCOL_LABELS.get(timed.protocol, timed.protocol),
                str(timed.devices or "n/a"),
                str(timed.global_batch or "n/a"),
                str(timed.steps if timed.steps is not None else "n/a"),
                "n/a" if psnr is None else f"{psnr:.3f}",
                _spread(seconds),
                f"{np.median(cpu):.1f}" if cpu else "n/a",
                ", ".join(f"{load:.2f}" for load in timed.loads) or "n/a",
                "n/a" if reduction is None else f"{reduction:.2f}%",
                "n/a" if speedup is None else f"{speedup:.2f}x",
                "; ".join(flags),
            ]
        )
        csv_rows.append(
            {
                "method": timed.method,
                "noise_std": timed.noise_std,
                "strategy": timed.strategy,
                "protocol": timed.protocol,
                "devices": timed.devices,
                "global_batch": timed.global_batch,
                "optimizer_steps": timed.steps,
                "psnr_mean": psnr,
                "train_seconds_median": median,
                "train_seconds_all": " ".join(f"{s:.3f}" for s in seconds),
                "cpu_seconds_median": float(np.median(cpu)) if cpu else None,
                "load_average_start": " ".join(f"{x:.2f}" for x in timed.loads),
                "time_saving_percent": reduction,
                "speedup": speedup,
                "flags": "; ".join(flags),
            }
        )
        if timed.strategy == "single" or speedup is None:
            continue
        if flags:
            flagged += 1
            continue
        sentences.append(
            f"{strategy_label(timed.strategy)} ({PROTOCOL_LABELS.get(timed.protocol, timed.protocol)}) on "
            f"{timed.devices} devices trained {method_label(timed.method)} at std {timed.noise_std:g} in "
            f"{abs(reduction):.1f}% {'less' if reduction >= 0 else 'more'} time than one device "
            f"({speedup:.2f}x; medians of {len(seconds)} and {len(single.seconds) if single else 0} runs, "
            f"ranges {min(seconds):.1f}-{max(seconds):.1f} s and "
            f"{min(single.seconds):.1f}-{max(single.seconds):.1f} s, apart by at least "
            f"{SEPARATION_MARGIN:.0%})."
        )
    if flagged:
        sentences.append(
            f"{flagged} speed-up figure(s) carry a flag and are not summarised (see the Flags column)."
        )
    notes = [
        "TS (time saving) = 100 x (1 - TT / TT of one device), the paper's definition; speed-up = TT of one "
        "device / TT, both from the median training time over the repeated runs (validation excluded). "
        "Protocols: paper = batch per device fixed, so the global batch grows with the devices and the run "
        "takes fewer optimizer steps (its speed-up mixes strategy and step count); controlled = the same "
        "global batch and the same optimizer steps as one device, so only the strategy differs. CPU: process "
        "CPU time of the training loop, summed over processes; Load at start: the machine's 1-minute load "
        "average when each run began training.",
        f"Flags: '{FLAG_DISTURBED}' = speed-up above the number of devices; "
        f"'{FLAG_NOT_CONVERGED}' = test PSNR less than {CONVERGENCE_MARGIN_DB:g} dB above the noisy input "
        f"or more than {CONVERGENCE_MARGIN_DB:g} dB below the one-device run; '{FLAG_LOAD}' = the load "
        f"average at the start of the compared runs differed by more than {LOAD_CHANGE:.0%} of the higher "
        f"one; '{FLAG_FEW_REPEATS}' = one side was timed only once, so its run-to-run spread is unknown; "
        f"'{FLAG_SPREAD}' = both were timed at least twice but the slower one's fastest run is not at least "
        f"{SEPARATION_MARGIN:.0%} above the faster one's slowest run, so the repeats show no clear "
        "difference in time. Flagged figures are left out of the summary: a speed-up sentence needs at least "
        f"{MIN_REPEATS} repeats of each side and ranges separated by {SEPARATION_MARGIN:.0%}.",
    ]
    notes += [f"Not run: {item['what']}: {item['reason']}" for item in skipped]
    table = Table(
        columns, display, "Table V. Training-time saving of DP and DDP+AMP against one device", notes
    )
    return TableResult(table, csv_rows), sentences
