"""The timed part of the grid end to end on CPU: a one-device run and a controlled 2-process DDP run,
interleaved and repeated, become Table V rows with medians, protocol, steps, CPU time and load."""

from __future__ import annotations

import dataclasses

import pytest

from meddenoise import reproduce
from meddenoise.report.document import find_table

pytestmark = pytest.mark.slow


def test_interleaved_repeated_timing_reaches_table_five(tmp_path, make_prepared, monkeypatch):
    data = make_prepared(n=24, size=32, patients=12)
    preset = dataclasses.replace(
        reproduce.PRESETS["smoke"],
        name="timing-test",
        models=("unet",),
        learned=(),
        clean_free=(),
        classical=("noisy",),
        noise_stds=(0.2,),
        multi_device_noise_stds=(0.2,),
        cpu_ddp=True,
        protocols=("controlled",),
        timing_repeats=2,
        privacy=False,
    )
    monkeypatch.setattr(reproduce, "gpu_count", lambda: 0)
    monkeypatch.setitem(reproduce.PRESETS, preset.name, preset)
    settings = reproduce.ReproduceConfig(
        preset=preset.name, out=str(tmp_path / "out"), data=str(data), device="cpu"
    )
    report = reproduce.reproduce(settings)
    assert (
        tmp_path / "out" / "timing" / "unet_std0.2_ddp-controlled_seed0_repeat1" / "summary.csv"
    ).is_file()
    from meddenoise.report.build import build_report

    blocks = build_report(tmp_path / "out").blocks
    table = find_table(blocks, "Table V")
    rows = {row[table.columns.index("Setup")]: row for row in table.rows}
    ddp = rows["DDP"]
    assert ddp[table.columns.index("Protocol")].startswith("controlled")
    assert ddp[table.columns.index("Steps")] == rows["1 device"][table.columns.index("Steps")]
    assert (
        ddp[table.columns.index("Global batch")]
        == rows["1 device"][table.columns.index("Global batch")]
        == "4"
    )
    assert ddp[table.columns.index("TT (s): median [min-max]")].endswith("2 runs]")
    assert ddp[table.columns.index("CPU (s)")] != "n/a" and ddp[table.columns.index("Load at start")] != "n/a"
    assert report.name == "report.md"
