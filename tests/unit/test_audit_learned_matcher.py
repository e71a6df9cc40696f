"""The privacy audit runs the learned patient embedding beside the pixel matcher, on real NIH patients it
was not fitted on, and the report section shows both."""

from __future__ import annotations

import pytest

from meddenoise.noise.spec import NoiseSpec
from meddenoise.privacy.audit import run_audit
from meddenoise.privacy.verdict import markdown_section


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from meddenoise.cli import main

    out = tmp_path_factory.mktemp("nih") / "prepared"
    assert main(["prepare", "--source", "nih-sample", "--size", "64", "--out", str(out), "--quiet"]) == 0
    return out


def test_the_learned_matcher_is_scored_only_on_patients_it_was_not_fitted_on(sample):
    from meddenoise.data.cache import load_prepared

    result = run_audit(sample, noise=NoiseSpec(mean=0.1, std=0.2), max_queries=40, device="cpu")
    learned = result["learned_matcher"]
    data = load_prepared(sample)
    even = {row["patient_id"] for row in data.records if int(row["patient_id"]) % 2 == 0}
    assert learned["excluded_patients"] == len(even)  # the shipped weights were fitted on even NIH ids
    assert learned["excluded_images"] == sum(1 for row in data.records if row["patient_id"] in even)
    level = learned["levels"][0]
    reid = level["reidentification"]
    assert 0.0 <= reid["top1"] <= 1.0 and reid["top1"] > reid["chance_top1"]
    assert "top1" in level["linkage"]
    # the leak score's ranking (embedding candidates, then the registered correlation) on the same queries
    registered = level["registered"]
    assert registered["reidentification"]["queries"] == reid["queries"]
    assert registered["reidentification"]["top1"] > reid["chance_top1"]
    assert registered["linkage"]["queries"] == level["linkage"]["queries"]
    text = markdown_section(result)
    assert "A stronger attacker: the learned patient embedding" in text
    assert "reid@1 with registration" in text and "registered correlation" in text
    assert f"The {len(even)} patient(s) it was fitted on" in text
