"""Print the headline figures of the benchmark result files of one device kind (e.g. `*_h100.json`).

python benchmarks/summarize.py benchmarks/results --kind cpu
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import format_table


def throughput(result: dict[str, Any]) -> str:
    settings = result["settings"]
    head = (
        f"training throughput, {settings['size']}x{settings['size']}, base {settings['base_channels']}, "
        f"batch {settings['batch_size']}, {settings['steps']} timed steps"
        + ("" if result.get("complete", True) else " (INCOMPLETE: stopped early)")
    )
    columns = [("model", "model"), ("config", "configuration"), ("images_per_second", "img/s"),
               ("mfu", "MFU"), ("speedup_vs_reference_fp32", "x ref fp32")]  # fmt: skip
    return f"{head}\n{format_table(result['results'], columns)}"


def epoch_time(result: dict[str, Any]) -> str:
    head = f"epoch wall time ({result['statistic']}), data {result['settings']['data']}"
    columns = [("config", "configuration"), ("train_seconds", "train s"), ("val_seconds", "val s"),
               ("epoch_wall_seconds", "epoch s"), ("reference_over_ours", "x ours")]  # fmt: skip
    return f"{head}\n{format_table(result['results'], columns)}"


def eval_speed(result: dict[str, Any]) -> str:
    return (
        f"evaluation speed: {result['images']} images of {result['image']}: scikit-image loop "
        f"{result['skimage_loop']['ms_per_image']} ms/image, best batched speed-up {result['best_speedup']}x"
    )


def time_to_quality(result: dict[str, Any]) -> str:
    ours = result["ours"]
    seconds = ours["seconds_to_target"]
    reached = f"{seconds:.1f} s (epoch {ours['epoch_reaching_target']})" if seconds else "not reached"
    return (
        f"time to quality: target {result['target']['val_psnr']:.3f} dB ({result['target']['how']}); "
        f"reference {result['reference']['seconds_to_selected']:.1f} s, ours {reached}"
    )


def cpu_overhead(result: dict[str, Any]) -> str:
    columns = [("pipeline", "pipeline"), ("epoch_median_seconds", "epoch s"),
               ("bare_median_seconds", "bare s"), ("ratio", "ratio"),
               ("ratio_of_minimums", "ratio (min)")]  # fmt: skip
    return f"CPU overhead ratio (target <= 1.05)\n{format_table(result['results'], columns)}"


def scaling(result: dict[str, Any]) -> str:
    columns = [("strategy", "strategy"), ("amp", "amp"), ("setting", "setting"), ("global_batch", "global"),
               ("images_per_second", "img/s"), ("speedup_vs_single", "x single")]  # fmt: skip
    skipped = "".join(f"\nskipped {s['strategy']} (amp {s['amp']}): {s['reason']}" for s in result["skipped"])
    return f"scaling ({result['backend']})\n{format_table(result['results'], columns)}{skipped}"


SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "train_throughput": throughput,
    "epoch_time": epoch_time,
    "eval_speed": eval_speed,
    "time_to_quality": time_to_quality,
    "cpu_overhead": cpu_overhead,
    "scaling": scaling,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of result files")
    parser.add_argument("--kind", required=True, help="device kind in the file names: cpu, h100, h200, ...")
    args = parser.parse_args(argv)
    found = 0
    for name, summary in SUMMARIES.items():
        path = args.folder / f"{name}_{args.kind}.json"
        if not path.is_file():
            continue
        found += 1
        result = json.loads(path.read_text())
        environment = result.get("environment", {})
        device = environment.get("device", result.get("device", "?"))
        load = environment.get("load_average_start")
        print(f"\n[{path.name}] {device}" + (f", load average at start {load[0]}" if load else ""))
        print(summary(result))
    if not found:
        print(f"no result files *_{args.kind}.json in {args.folder}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
