"""Clean-free targets through the real training loop (`fit`): the step never receives clean pixels, and a
tiny run's validation PSNR (against clean images, evaluation only) beats the obfuscated input."""

from __future__ import annotations

import json

import pytest

from meddenoise.engine import step as step_module


@pytest.mark.slow
@pytest.mark.parametrize("target", ["noise2noise", "neighbor2neighbor", "r2r"])
def test_fit_without_clean_pixels_beats_the_obfuscated_input(
    target, make_prepared, tiny_fit, tmp_path, monkeypatch
):
    seen_batches = []
    original_call = step_module.TrainStep.__call__

    def spying_call(self, batch, share, lr):
        seen_batches.append((batch.clean is None, len(batch.noisy)))
        return original_call(self, batch, share, lr)

    monkeypatch.setattr(step_module.TrainStep, "__call__", spying_call)
    data = make_prepared(n=48, size=32, patients=12, seed=1)
    run = tiny_fit(data, tmp_path / target, target, epochs=6)

    copies = 2 if target == "noise2noise" else 1
    assert len(seen_batches) >= 6 and all(batch == (True, copies) for batch in seen_batches)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = records[-1]
    assert last["val_psnr"] > last["noisy_val_psnr"] + 1.5, records
