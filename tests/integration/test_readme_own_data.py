"""The README's "Using it on your own data" block runs as written, on a folder of real radiographs (60 images
of the embedded NIH sample copied flat, NIH-style names giving the patient ids)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from time_limits import RUN

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- readme-own-data: begin -->", 1)[1].split("<!-- readme-own-data: end -->", 1)[0]
    body = re.search(r"```bash\n(.*?)```", block, re.S).group(1)
    return [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_own_data_block_runs_as_written(tmp_path):
    from meddenoise.data.sources.nih_sample import SAMPLE_FOLDER

    commands = readme_commands()
    assert commands and all(command.startswith(".venv/bin/meddenoise ") for command in commands)
    images = sorted((SAMPLE_FOLDER / "images").glob("*.png"))[:60]
    (tmp_path / "my_cxr").mkdir()
    for image in images:
        shutil.copy(image, tmp_path / "my_cxr" / image.name)
    venv = REPO / ".venv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if (venv / "bin" / "meddenoise").is_file():
        (tmp_path / ".venv").symlink_to(venv)  # the README's own spelling, verbatim
        runnable = commands
    else:  # tests run from another environment: the same command through this interpreter
        runnable = [c.replace(".venv/bin/meddenoise", f"{sys.executable} -m meddenoise", 1) for c in commands]
    for command in runnable:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=RUN)  # fmt: skip
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
    assert (tmp_path / "runs" / "mine" / "summary.csv").is_file()
    assert len(list((tmp_path / "denoised" / "mine").glob("*.png"))) == len(images)
    assert (tmp_path / "shared" / "mine" / "README.md").is_file()
    report = (tmp_path / "runs" / "report.md").read_text()
    assert "## Summary of findings" in report and "Gaussian filter" in report
