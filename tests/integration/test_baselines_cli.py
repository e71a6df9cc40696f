"""`meddenoise baselines` writes evaluation folders that the report reads beside the networks."""

from __future__ import annotations

from meddenoise.cli import main
from meddenoise.evaluation import files
from meddenoise.report.build import build_report
from meddenoise.report.document import find_table


def test_baselines_are_evaluation_folders_the_report_reads(make_prepared, tmp_path, capsys):
    data = make_prepared(n=24, size=32, patients=12)
    out = tmp_path / "report-root" / "extra"
    argv = ["baselines", "--data", str(data), "--out", str(out), "--methods", "noisy", "gaussian",
            "--levels", "0.1", "0.2", "--tune-limit", "4", "--samples", "1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "gaussian at std 0.2" in printed and "sigma" in printed
    # each slow stage says so on its own line, so a log (no terminal, no bar) shows progress too
    assert "gaussian at noise std 0.2: tuning " in printed and " setting(s) on 4 val images" in printed
    assert "  tuned in " in printed and "gaussian at noise std 0.2: denoising " in printed
    for name in ("noisy_std0.1", "gaussian_std0.1", "noisy_std0.2", "gaussian_std0.2"):
        info = files.read_info(out / name)
        assert info["kind"] == "baseline" and files.is_done(out / name)
        rows = files.read_rows(out / name / files.PER_IMAGE_FILE)
        assert {row["split"] for row in rows} == {"test"}
    assert files.read_info(out / "gaussian_std0.2")["params"]["sigma"] > 0
    report = build_report(tmp_path / "report-root")
    table = find_table(report.blocks, "Table VI")
    assert table.column("Method") == ["Noisy input", "Gaussian filter"]
    assert table.columns[1:] == ["PSNR / SSIM at std 0.1", "PSNR / SSIM at std 0.2"]


def test_unknown_method_is_a_clean_error(make_prepared, tmp_path, capsys):
    data = make_prepared(n=12, size=32, patients=6)
    assert main(["baselines", "--data", str(data), "--out", str(tmp_path / "o"), "--methods", "wiener"]) == 2
    assert "--methods" in capsys.readouterr().err
