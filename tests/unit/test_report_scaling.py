"""Table V believes a speed-up only when the runs allow it: an impossible speed-up, a run that did not
learn and a change of load are flagged, and flagged figures never reach a summary sentence."""

from __future__ import annotations

import json
import os

import numpy as np

from meddenoise.evaluation import files
from meddenoise.report.build import build_report
from meddenoise.report.collect import collect
from meddenoise.report.document import BulletList, find_table
from meddenoise.report.scaling import table_speedup

IMAGES = [f"img{i:02d}" for i in range(8)]


def _run(root, name, *, seconds, steps, world, batch, load, psnr=None, method="unet", std=0.1):
    """An engine run folder (summary.csv, config.json) and, when `psnr` is given, its evaluation."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    row = {"world_size": world, "train_seconds": seconds, "global_steps": steps,
           "cpu_seconds": seconds * world, "load_average_start": load}  # fmt: skip
    files.write_rows(run / "summary.csv", list(row), [row])
    (run / "config.json").write_text(json.dumps({"config": {"batch_size": batch}}))
    if psnr is not None:
        _evaluation(run / "evaluation" / "test", method, std, psnr, "ddp" if world > 1 else "single", run)
    return run


def _evaluation(folder, method, std, psnr, strategy, run=None, kind="network"):
    folder.mkdir(parents=True)
    rows = [{"image_id": i, "patient_id": i, "method": method, "strategy": strategy, "noise_std": std,
             "psnr": psnr + 0.01 * k, "ssim": 0.5} for k, i in enumerate(IMAGES)]  # fmt: skip
    files.write_rows(folder / files.PER_IMAGE_FILE, files.PER_IMAGE_COLUMNS, rows)
    info = {"kind": kind, "method": method, "strategy": strategy, "seed": 0, "split": "test",
            "noise": {"mean": 0.1, "std": std}, "data": {"folder": "d", "source": "folder"}}  # fmt: skip
    if run is not None:
        info["run_dir_relative"] = os.path.relpath(run, folder)
    files.write_info(folder, info)


def _plan(root, entries):
    (root / "reproduce.json").write_text(json.dumps({"timing": entries}))


def test_impossible_speedup_and_unconverged_run_are_flagged_and_never_summarised(tmp_path):
    _evaluation(tmp_path / "baselines" / "noisy", "noisy", 0.1, 17.06, "", kind="baseline")
    # U-Net: the single run was slowed by other load (57 s) and the DDP run never learned (17.65 dB)
    _run(tmp_path, "unet_single", seconds=57.4, steps=100, world=1, batch=8, load=3.0, psnr=25.74)
    _run(tmp_path, "unet_ddp", seconds=15.7, steps=50, world=2, batch=8, load=0.3, psnr=17.65)
    # U-Net++: an honest controlled comparison on a quiet machine, two repeats each
    for repeat, (single, ddp) in enumerate(((20.0, 12.0), (21.0, 12.5))):
        quality = {"psnr": 26.0} if repeat == 0 else {}
        _run(tmp_path, f"unetpp_single_{repeat}", seconds=single, steps=100, world=1, batch=8, load=0.2,
             method="unetpp", psnr=quality.get("psnr"))  # fmt: skip
        _run(tmp_path, f"unetpp_ddp_{repeat}", seconds=ddp, steps=100, world=2, batch=4, load=0.25,
             method="unetpp", psnr=quality.get("psnr") and 25.8)  # fmt: skip
    entries = [
        {"folder": "runs/unet_single", "method": "unet", "noise_std": 0.1, "strategy": "single"},
        {"folder": "runs/unet_ddp", "method": "unet", "noise_std": 0.1, "strategy": "ddp"},
    ]
    for repeat in (0, 1):
        for strategy in ("single", "ddp"):
            folder = f"runs/unetpp_{strategy}_{repeat}"
            entries.append({"folder": folder, "method": "unetpp", "noise_std": 0.1, "strategy": strategy})
    _plan(tmp_path, entries)
    result, sentences = table_speedup(collect(tmp_path))
    rows = {(row[0], row[2]): row for row in result.table.rows}
    column = result.table.columns.index
    unet_ddp = rows[("U-Net", "DDP")]
    assert unet_ddp[column("Speed-up")] == f"{57.4 / 15.7:.2f}x"
    flags = unet_ddp[column("Flags")]
    assert (
        "timing disturbed" in flags
        and "did not converge: not comparable" in flags
        and "load changed" in flags
    )
    assert unet_ddp[column("Protocol")].startswith("paper") and unet_ddp[column("Global batch")] == "16"
    honest = rows[("U-Net++", "DDP")]
    assert honest[column("Flags")] == "" and honest[column("Protocol")].startswith("controlled")
    assert honest[column("TT (s): median [min-max]")] == "12.2 [12.0-12.5, 2 runs]"
    assert honest[column("Speed-up")] == f"{np.median([20.0, 21.0]) / np.median([12.0, 12.5]):.2f}x"
    summary = " ".join(sentences)
    assert "U-Net++ at std 0.1" in summary and "medians of 2 and 2 runs" in summary
    assert "3.66" not in summary and "U-Net at std" not in summary  # the flagged figure is not claimed
    assert "1 speed-up figure(s) carry a flag" in summary

    report = build_report(tmp_path)
    table = find_table(report.blocks, "Table V")
    assert any("did not converge" in note for note in table.notes)
    bullets = [
        b for b in report.blocks if isinstance(b, BulletList) and any("speed-up" in i for i in b.items)
    ]
    assert bullets and not any("3.66" in item for item in bullets[0].items)


def test_overlapping_repeats_are_flagged_as_within_spread_and_not_summarised(tmp_path):
    _evaluation(tmp_path / "baselines" / "noisy", "noisy", 0.1, 17.06, "", kind="baseline")
    # one device 6.4 s and 9.6 s, DDP 7.2 s and 7.5 s: the medians differ (8.0 vs 7.35) but the ranges overlap
    entries = []
    for repeat, (single, ddp) in enumerate(((6.4, 7.2), (9.6, 7.5))):
        quality = 26.0 if repeat == 0 else None
        _run(
            tmp_path, f"single_{repeat}", seconds=single, steps=100, world=1, batch=8, load=0.8, psnr=quality
        )
        _run(tmp_path, f"ddp_{repeat}", seconds=ddp, steps=100, world=2, batch=4, load=0.9,
             psnr=quality and 25.9)  # fmt: skip
        for strategy in ("single", "ddp"):
            entries.append({"folder": f"runs/{strategy}_{repeat}", "method": "unet", "noise_std": 0.1,
                            "strategy": strategy})  # fmt: skip
    _plan(tmp_path, entries)
    result, sentences = table_speedup(collect(tmp_path))
    column = result.table.columns.index
    ddp = next(row for row in result.table.rows if row[2] == "DDP")
    assert ddp[column("Flags")] == "within run-to-run spread"
    assert ddp[column("Speed-up")] == f"{8.0 / 7.35:.2f}x"  # the figure stays in the table, flagged
    summary = " ".join(sentences)
    assert "less time than one device" not in summary and "1 speed-up figure(s) carry a flag" in summary


def _timed_pair(root, single_seconds, ddp_seconds):
    """One-device and DDP runs of U-Net (controlled protocol, quiet machine), one evaluated repeat each."""
    _evaluation(root / "baselines" / "noisy", "noisy", 0.1, 17.06, "", kind="baseline")
    entries = []
    for strategy, seconds_list in (("single", single_seconds), ("ddp", ddp_seconds)):
        for repeat, seconds in enumerate(seconds_list):
            world, batch = (1, 8) if strategy == "single" else (2, 4)
            psnr = (26.0 if strategy == "single" else 25.9) if repeat == 0 else None
            _run(root, f"{strategy}_{repeat}", seconds=seconds, steps=100, world=world, batch=batch, load=0.2,
                 psnr=psnr)  # fmt: skip
            entries.append({"folder": f"runs/{strategy}_{repeat}", "method": "unet", "noise_std": 0.1,
                            "strategy": strategy})  # fmt: skip
    _plan(root, entries)
    result, sentences = table_speedup(collect(root))
    column = result.table.columns.index
    ddp = next(row for row in result.table.rows if row[2] == "DDP")
    return ddp[column("Flags")], " ".join(sentences)


def test_a_single_timed_run_per_side_gives_no_speedup_sentence(tmp_path):
    flags, summary = _timed_pair(tmp_path, [20.0], [11.0])
    assert flags == "fewer than 2 timed repeats"
    assert "less time than one device" not in summary and "1 speed-up figure(s) carry a flag" in summary


def test_ranges_apart_by_less_than_the_margin_give_no_speedup_sentence(tmp_path):
    # separated (9.6 < 10.0), but the slower range starts only 4% above the faster one's end
    flags, summary = _timed_pair(tmp_path, [10.0, 10.2], [9.5, 9.6])
    assert flags == "within run-to-run spread" and "less time than one device" not in summary


def test_repeated_and_clearly_separated_times_give_a_speedup_sentence(tmp_path):
    flags, summary = _timed_pair(tmp_path, [20.0, 21.0], [12.0, 12.5])
    assert flags == "" and "less time than one device" in summary and "medians of 2 and 2 runs" in summary
    assert "ranges 12.0-12.5 s and 20.0-21.0 s" in summary
