"""The NIH ChestX-ray14 sample embedded in the package: real patients, real metadata, repeat studies.

It is what the main job (`reproduce --preset quick`) and `prepare --source nih-sample` use, so that every
figure that needs patients (patient-level splits and intervals, re-identification, membership by patient,
DP-SGD per patient, federated sites by patient) is measured on people, not on poses of one CT. The folder
`meddenoise/data/nih_sample/` holds the images (256x256 8-bit PNG, downsized from the NIH release), the
matching rows of the NIH metadata CSV, PROVENANCE.json (sources, commits, sha256 of every file) and README.md
(licence and attribution). The images are read by the NIH loader, so patient ids come from the CSV.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from meddenoise.data.decode import DEFAULT_MAX_PIXELS
from meddenoise.data.sources.nih import NihSource
from meddenoise.errors import DataError

SAMPLE_FOLDER = Path(__file__).resolve().parents[1] / "nih_sample"
SAMPLE_CSV = "Data_Entry_sample.csv"
PROVENANCE = "PROVENANCE.json"
ATTRIBUTION = (
    "NIH ChestX-ray14 sample: images and metadata from the NIH Clinical Center "
    "(https://nihcc.app.box.com/v/ChestXray-NIHCC); Wang et al., ChestX-ray8, IEEE CVPR 2017"
)


def sample_folder() -> Path:
    if not (SAMPLE_FOLDER / SAMPLE_CSV).is_file():
        raise DataError(
            f"the embedded NIH sample is missing from this installation ({SAMPLE_FOLDER / SAMPLE_CSV}); "
            "reinstall meddenoise, or use the default source (the rendered set) or the nih source with its "
            "folder (root)",
            parameter="source",
        )
    return SAMPLE_FOLDER


def shipped_checksums(folder: Path | None = None) -> dict[str, str]:
    """{path relative to the sample folder: sha256} as recorded in PROVENANCE.json."""
    folder = folder or sample_folder()
    record = json.loads((folder / PROVENANCE).read_text())
    return {entry["path"]: entry["sha256"] for entry in record["files"]}


def checksum_mismatches(folder: Path | None = None) -> list[str]:
    """Files whose content differs from PROVENANCE.json, or that are missing, or that it does not list."""
    folder = folder or sample_folder()
    expected = shipped_checksums(folder)
    problems = []
    for relative, digest in sorted(expected.items()):
        path = folder / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{relative}: sha256 differs")
    unlisted = {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (PROVENANCE, "README.md")
    } - set(expected)
    problems += [f"{name}: not in {PROVENANCE}" for name in sorted(unlisted)]
    return problems


class NihSampleSource(NihSource):
    """The NIH loader over the embedded sample (its CSV gives the patient ids)."""

    name = "nih-sample"

    def __init__(
        self,
        count: int = 0,
        seed: int = 0,
        view_position: str = "",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        folder = sample_folder()
        super().__init__(
            root=str(folder),
            count=count,
            seed=seed,
            view_position=view_position,
            csv_path=str(folder / SAMPLE_CSV),
            max_pixels=max_pixels,
        )
        self.notes.append(ATTRIBUTION)
