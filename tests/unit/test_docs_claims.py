"""The shipped documents state no comparison results of their own: which method wins, by how much and with
what test comes from the generated report (docs/example-report/), so a sentence cannot outlive its numbers."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Verdict wording as earlier versions of these pages wrote it about the example run.
CLAIMS = re.compile(
    r"\bbeats? (U-Net|DnCNN|BM3D|the)|land between|Holm p <|\d+(\.\d+)?% less time|\(\d\.\d+x\)",
    re.IGNORECASE,
)


def test_readme_and_the_report_guide_quote_no_comparison_verdicts():
    offenders = []
    for name in ("README.md", "docs/report.md"):
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            if CLAIMS.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_pattern_catches_the_old_sentences():
    assert CLAIMS.search("U-Net++ beats U-Net at every level, paired Wilcoxon with Holm p < 0.05")
    assert CLAIMS.search("BM3D and the Gaussian filter land between the two")
    assert CLAIMS.search("DDP trained U-Net++ in 18.4% less time (1.23x)")
    assert not CLAIMS.search("When a classical method wins on the same images, the report says so")
