"""The verdict is written from the figures, and says so when linkage is at chance or a part was skipped."""

from __future__ import annotations

from meddenoise.privacy.verdict import format_table, level_sentences, markdown_section, summary_sentences


def _summary(mean):
    return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "count": 50}


def _level(std, top1, interval, reversal=None, reid=None):
    return {
        "noise_std": std,
        "noise_mean": 0.1,
        "distortion": {
            "obfuscated": {"psnr": _summary(14.0), "ssim": _summary(0.3)},
            "mean_removed": {"psnr": _summary(15.0), "ssim": _summary(0.35)},
            "two_copy_average": {"psnr": _summary(17.5), "ssim": _summary(0.5)},
        },
        "linkage": {
            "queries": 50,
            "gallery": 1000,
            "top1": top1,
            "top5": min(1.0, top1 * 2),
            "chance_top1": 0.001,
            "chance_top5": 0.005,
            "top1_interval": interval,
            "top5_interval": interval,
        },
        "reidentification": reid or {"skipped": "every gallery image belongs to one patient"},
        "reversal": reversal
        or {"receiver": {"skipped": "no --run given"}, "outsider": {"skipped": "no run"}},
    }


def _result(levels):
    return {
        "data": {"folder": "d", "sources": ["default"], "images": 1000, "patients": 1, "split": "test",
                 "queries": 50, "gallery": 1000},
        "settings": {"noise_mean": 0.1, "seed": 0, "matcher": {"feature_size": 32, "blur_sigma": 1.0}},
        "reference": {"reidentification_clean_queries": {"skipped": "one patient"}},
        "outsider_overlap": None,
        "levels": levels,
    }  # fmt: skip


def test_sentences_quote_the_figures():
    receiver = {"run": "r", "psnr": _summary(30.25), "ssim": _summary(0.9)}
    level = _level(0.3, 0.98, (0.9, 0.99), reversal={"receiver": receiver, "outsider": {"skipped": "none"}})
    text = " ".join(level_sentences(level, {}))
    assert "98.0% of 50" in text and "among 1000 clean images" in text and "chance 0.1%" in text
    assert "PSNR 30.25 dB (+16.25 dB over the released image)" in text
    assert "+2.50 dB over one copy" in text
    assert "Re-identification: not measured: every gallery image belongs to one patient." in text
    summary = " ".join(summary_sentences(_result([level])))
    assert "at least 98.0%" in summary and "980x the chance rate" in summary and "30.25 dB" in summary


def test_chance_level_linkage_is_not_called_a_leak():
    result = _result([_level(0.1, 0.9, (0.8, 0.95)), _level(0.3, 0.002, (0.0, 0.03))])
    summary = summary_sentences(result)
    assert any("at std 0.1:" in s and "at least 90.0%" in s for s in summary)
    assert any(s.startswith("At std 0.3 linkage top-1 (0.2%") and "not above chance" in s for s in summary)


def test_table_and_markdown_mark_skipped_parts():
    result = _result([_level(0.2, 1.0, (0.93, 1.0))])
    table = format_table(result).splitlines()
    assert table[0].split()[0] == "std" and table[1].split()[0] == "0.2"
    assert table[1].split()[-3:] == ["skip", "skip", "skip"]
    markdown = markdown_section(result)
    assert markdown.startswith("## Privacy audit") and "| 0.2 | 14.00 | 0.300 | 1.000 |" in markdown


def test_restoration_claims_stand_beside_a_gaussian_filter_on_the_same_queries():
    receiver = {"run": "r", "psnr": _summary(26.58), "ssim": _summary(0.8)}
    classical = {"method": "gaussian", "params": {"sigma": 1.5}, "tuned_on": "16 val images",
                 "psnr": _summary(26.94), "ssim": _summary(0.82)}  # fmt: skip
    reversal = {"receiver": receiver, "outsider": {"skipped": "none"}, "classical": classical}
    level = _level(0.2, 0.98, (0.9, 0.99), reversal=reversal)
    text = " ".join(level_sentences(level, {}))
    assert "a Gaussian filter gives 26.94 dB on the same queries (0.36 dB more" in text
    assert "no more than a plain filter" in text
    assert "Gaussian filter (sigma 1.5, tuned on 16 val images, no training): PSNR 26.94 dB" in text
    summary = " ".join(summary_sentences(_result([level])))
    assert "restores 26.58 dB PSNR" in summary and "a Gaussian filter gives 26.94 dB" in summary
    assert format_table(_result([level])).splitlines()[1].split()[-1] == "26.94"


def test_a_denoiser_below_the_released_image_is_not_called_a_reversal():
    receiver = {"run": "r", "psnr": _summary(11.75), "ssim": _summary(0.07)}
    level = _level(0.2, 0.98, (0.9, 0.99), reversal={"receiver": receiver, "outsider": {"skipped": "none"}})
    summary = " ".join(summary_sentences(_result([level])))
    assert "Reversible" not in summary
    assert "Not reversed by the receiver's denoiser: at std 0.2 its output is at 11.75 dB PSNR" in summary
