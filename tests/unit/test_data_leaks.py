"""`meddenoise data leaks`: likely same-patient pairs across splits, with a threshold calibrated on data
whose patient ids are known, and no count claimed without one."""

from __future__ import annotations

import json

import numpy as np

from conftest import smooth_images
from meddenoise.cli import main
from meddenoise.data.cache import write_prepared
from meddenoise.data.records import ImageRecord
from meddenoise.data.splits import assign_splits
from meddenoise.privacy.matcher import Matcher


def _studies(patients: int, per_patient: int, seed: int) -> np.ndarray:
    """Repeat studies: each patient's anatomy (a smooth image) with a study's own exposure and detail."""
    anatomy = smooth_images(patients, 48, seed)
    detail = smooth_images(patients * per_patient, 48, seed + 100)
    rng = np.random.default_rng(seed)
    images = []
    for p in range(patients):
        for s in range(per_patient):
            gain, offset = rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.1)
            images.append(np.clip(gain * anatomy[p] + offset + 0.15 * detail[p * per_patient + s], 0, 1))
    return (np.stack(images) * 255).round().astype(np.uint8)


def _prepared(folder, images, patient_of, known: bool):
    records = [
        ImageRecord(f"img{i:03d}", patient_of[i] if known else f"img{i:03d}", "folder", f"x/{i}.png")
        for i in range(len(images))
    ]
    splits = assign_splits(records, seed=1, split_by="patient")
    origin = {"NIH file name" if known else "none": len(images)}
    write_prepared(folder, images, records, splits, {"source": "folder", "split_by": "patient",
                   "patient_id_origin": origin})  # fmt: skip
    return splits


def test_leaks_are_counted_with_a_calibrated_threshold(tmp_path, capsys):
    calibration = tmp_path / "nih"
    _prepared(calibration, _studies(12, 3, 0), [f"p{i // 3}" for i in range(36)], known=True)
    anonymous = tmp_path / "anonymous"
    truth = [f"q{i // 2}" for i in range(30)]
    splits = _prepared(anonymous, _studies(15, 2, 7), truth, known=False)
    true_leaks = {(2 * k, 2 * k + 1) for k in range(15) if splits[2 * k] != splits[2 * k + 1]}
    assert true_leaks  # the image-level split put repeat studies of some patients in different splits

    assert main(["data", "leaks", str(anonymous), "--calibrate", str(calibration), "--matcher", "pixel"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((anonymous / "leaks.json").read_text())
    assert (
        result["threshold_source"].startswith("calibrated on") and result["calibration"]["precision"] == 0.9
    )
    found = {(p["row_a"], p["row_b"]) for p in result["pairs"]}
    assert result["suspects"] == len(found)
    assert len(found & true_leaks) >= 0.8 * len(true_leaks)  # most real leaks found
    assert len(found & true_leaks) >= 0.8 * len(found)  # and few false ones
    assert f"{result['suspects']} likely same-patient pair(s) across splits" in printed
    # --group-similar is offered a threshold calibrated at a looser precision (false joins cost only balance)
    grouping = result["group_similar_threshold"]
    assert result["group_similar_precision"] == 0.7 and grouping <= result["threshold"]
    assert f"--group-similar {grouping:.4f} --similar-matcher pixel" in printed
    assert (anonymous / "leaks_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_calibration_pairs_are_ranked_and_no_count_is_claimed(tmp_path, capsys):
    anonymous = tmp_path / "anonymous"
    _prepared(anonymous, _studies(6, 2, 3), [f"q{i // 2}" for i in range(12)], known=False)
    assert main(["data", "leaks", str(anonymous), "--top", "0"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((anonymous / "leaks.json").read_text())
    assert result["suspects"] is None and result["threshold"] is None and result["pairs"]
    assert "no count of same-patient pairs is claimed" in printed


def test_prepare_group_similar_keeps_repeat_studies_in_one_split(tmp_path, image_files, capsys):
    images = _studies(8, 2, 11)
    root = tmp_path / "anonymous"
    for index, pixels in enumerate(images):
        image_files.png(root / f"scan_{index:03d}.png", pixels)
    base = ["prepare", "--source", "folder", "--root", str(root), "--size", "48", "--workers", "1", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert (
        main(
            [
                *base,
                "--out",
                str(tmp_path / "grouped"),
                "--group-similar",
                "0.95",
                "--similar-matcher",
                "pixel",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "--group-similar 0.95 (pixel matcher): 8 group(s) of similar images (16 images) kept in one split"
        in printed
    )
    assert "links then changed the split of" in printed and "(scores down to 0.85) together" in printed

    from meddenoise.data.cache import load_prepared

    def split_of(folder):
        data = load_prepared(folder)
        return {row["image_id"]: row["split"] for row in data.records}

    plain, grouped = split_of(tmp_path / "plain"), split_of(tmp_path / "grouped")
    pairs = [(f"scan_{2 * k:03d}.png", f"scan_{2 * k + 1:03d}.png") for k in range(8)]
    assert any(plain[a] != plain[b] for a, b in pairs)  # without it, repeat studies straddle splits
    assert all(grouped[a] == grouped[b] for a, b in pairs)
    assert (
        main(
            [
                "data",
                "leaks",
                str(tmp_path / "grouped"),
                "--threshold",
                "0.95",
                "--top",
                "0",
                "--matcher",
                "pixel",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "grouped" / "leaks.json").read_text())["suspects"] == 0
    summary = json.loads((tmp_path / "grouped" / "similar_groups.json").read_text())
    assert summary["link_margin"] == 0.1 and "images_moved_by_links" in summary
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "grouped")]) == 0
    assert (
        "similar images grouped (--group-similar 0.95): 8 group(s), 16 images kept together; "
        f"links (down to 0.85) changed the split of {summary['images_moved_by_links']} image(s)"
    ) in capsys.readouterr().out


def test_similar_margin_out_of_range_names_the_option(tmp_path, capsys):
    argv = ["prepare", "--source", "nih-sample", "--out", str(tmp_path / "x"), "--group-similar", "0.9"]
    assert main([*argv, "--similar-margin", "1.5"]) != 0
    assert "similar_margin" in capsys.readouterr().err


def test_a_calibration_folder_without_repeat_patients_is_named_as_the_reason(tmp_path, capsys):
    anonymous = tmp_path / "anonymous"
    _prepared(anonymous, _studies(6, 2, 3), [f"q{i // 2}" for i in range(12)], known=False)
    assert main(["data", "leaks", str(anonymous), "--calibrate", str(anonymous), "--top", "0"]) == 0
    printed = capsys.readouterr().out
    assert "has no patient with more than one image" in printed and "reaching precision" not in printed
    assert (
        main(["data", "leaks", str(anonymous), "--threshold", "0.9999", "--top", "0", "--matcher", "pixel"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "0 likely same-patient pair(s)" in printed and "may be optimistic" not in printed


def test_group_similar_moves_only_the_joined_groups(tmp_path):
    from meddenoise.data.cache import load_prepared
    from meddenoise.privacy.grouping import regroup_prepared

    # 10 patients with two studies each among 60 unrelated single images, split by image (ids hidden)
    repeats, singles = _studies(10, 2, 21), _studies(60, 1, 5)
    images = np.concatenate([repeats, singles])
    folder = tmp_path / "anonymous"
    truth = [f"q{i // 2}" for i in range(20)] + [f"s{i}" for i in range(60)]
    before = np.array(_prepared(folder, images, truth, known=False))
    straddling = [k for k in range(10) if before[2 * k] != before[2 * k + 1]]
    assert straddling  # the image-level split put some repeat studies in two splits

    summary = regroup_prepared(folder, 0.95, fractions=(0.5, 0.33, 0.17), matcher=Matcher())
    after = np.array(load_prepared(folder).splits)
    assert all(after[2 * k] == after[2 * k + 1] for k in range(10))  # every repeat pair in one split
    joined = {2 * k for k in range(10)} | {2 * k + 1 for k in range(10)}
    unrelated = [i for i in range(len(images)) if i not in joined]
    assert all(after[i] == before[i] for i in unrelated)  # nothing else was re-drawn
    # each straddling pair moves one image; the pairs already in one split stay
    assert summary["components_moved"] == len(straddling)
    assert summary["images_moved_to_another_split"] == int(np.sum(after != before)) == len(straddling)
    assert summary["joined_components"] == 10
    for share, wanted in zip(summary["fractions_after"], (0.5, 0.33, 0.17)):
        assert abs(share - wanted) <= 0.05


def test_group_similar_names_the_shares_when_it_refuses(tmp_path):
    from meddenoise.errors import DataError
    from meddenoise.privacy.grouping import move_joined_groups, regroup_prepared

    folder = tmp_path / "anonymous"
    _prepared(folder, _studies(10, 2, 21), [f"q{i // 2}" for i in range(20)], known=False)
    before = (folder / "manifest.csv").read_bytes()
    try:
        regroup_prepared(folder, 0.95, fractions=(0.5, 0.33, 0.17), matcher=Matcher(), max_shift=0.001)
    except DataError as error:
        message = str(error)
    else:
        raise AssertionError("a 0.1-point limit must refuse any move")
    assert "would become" in message and "requested 0.50 / 0.33 / 0.17" in message
    assert (folder / "manifest.csv").read_bytes() == before  # left as it was

    # a three-image group goes where two of its images are; a pair goes where the shares end closest to the
    # request (test is one image short)
    splits = np.array(["train", "val", "val", "test", "train", "train", "train", "train"])
    labels = np.array([1, 1, 1, 3, 3, 5, 6, 7])
    moved, images, groups = move_joined_groups(splits, labels, (0.5, 0.33, 0.17))
    assert moved.tolist() == ["val", "val", "val", "test", "test", "train", "train", "train"]
    assert (images, groups) == (2, 2)


def test_group_similar_links_pairs_just_below_the_threshold(tmp_path):
    from meddenoise.data.cache import load_prepared
    from meddenoise.privacy.grouping import regroup_prepared
    from meddenoise.privacy.leaks import score_pairs

    repeats, singles = _studies(10, 2, 21), _studies(60, 1, 5)
    images = np.concatenate([repeats, singles])
    folder = tmp_path / "anonymous"
    before = np.array(_prepared(folder, images, [f"q{i}" for i in range(80)], known=False))
    straddling = [k for k in range(10) if before[2 * k] != before[2 * k + 1]]
    assert straddling
    pairs = score_pairs(load_prepared(folder), Matcher())
    repeat_scores = [
        float(pairs.scores[2 * k][list(pairs.partners[2 * k]).index(2 * k + 1)]) for k in range(10)
    ]
    # a threshold no pair reaches, so nothing is joined; the margin reaches every repeat pair
    threshold = float(pairs.scores.max()) + 0.001
    margin = threshold - min(repeat_scores) + 0.001
    plain = tmp_path / "plain"
    import shutil

    shutil.copytree(folder, plain)
    unlinked = regroup_prepared(plain, threshold, fractions=(0.5, 0.33, 0.17), matcher=Matcher(), margin=0)
    assert unlinked["joined_components"] == 0 and unlinked["images_moved_to_another_split"] == 0
    assert (np.array(load_prepared(plain).splits) == before).all()

    summary = regroup_prepared(
        folder, threshold, fractions=(0.5, 0.33, 0.17), matcher=Matcher(), margin=margin
    )
    after = np.array(load_prepared(folder).splits)
    assert summary["joined_components"] == 0 and summary["images_moved_by_links"] > 0
    together = sum(after[2 * k] == after[2 * k + 1] for k in range(10))
    assert together > 10 - len(straddling)  # links brought split repeat studies together
    for share, old, wanted in zip(summary["fractions_after"], summary["fractions_before"], (0.5, 0.33, 0.17)):
        assert abs(share - wanted) <= max(0.01, abs(old - wanted)) + 1e-9  # the placement's tolerance


def test_group_similar_keeps_known_patients_whole(tmp_path):
    """A known patient's images stay together even when only one of them is joined to a similar image."""
    from meddenoise.data.cache import load_prepared
    from meddenoise.privacy.grouping import regroup_prepared

    # patient k{p}: image 3p (anatomy p) and image 3p+1 (an unrelated-looking study) carry the id; image 3p+2,
    # without an id, is another study of anatomy p; plus 40 unrelated images
    similar, unlike = _studies(12, 2, 31), _studies(12, 1, 77)
    images = np.stack([im for p in range(12) for im in (similar[2 * p], unlike[p], similar[2 * p + 1])])
    images = np.concatenate([images, _studies(40, 1, 9)])
    ids = [f"k{i // 3}" if i % 3 < 2 else f"anon{i}" for i in range(36)] + [f"s{i}" for i in range(40)]
    records = [ImageRecord(f"img{i:03d}", ids[i], "folder", f"x/{i}.png") for i in range(len(images))]
    splits = assign_splits(records, seed=2, split_by="patient")
    folder = tmp_path / "mixed"
    write_prepared(folder, images, records, splits, {"source": "folder", "split_by": "patient"})
    assert any(splits[3 * p] != splits[3 * p + 2] for p in range(12))  # the id-less studies sit elsewhere

    summary = regroup_prepared(folder, 0.95, fractions=(0.5, 0.33, 0.17), matcher=Matcher())
    assert summary["joined_components"] >= 10  # the id-less study joins its patient's similar image
    after = load_prepared(folder)
    by_patient: dict[str, set] = {}
    for row in after.records:
        by_patient.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(by_patient[f"k{p}"]) == 1 for p in range(12))  # no known patient was divided
    # most id-less studies joined their patient: one group, one split; the group is the known patient's
    groups = [after.records[i]["group"] for i in range(36)]
    joined = [p for p in range(12) if groups[3 * p + 2] == groups[3 * p]]
    assert len(joined) >= 10
    assert all(
        groups[3 * p].startswith("k") and after.splits[3 * p] == after.splits[3 * p + 2] for p in joined
    )


def test_group_similar_refusal_is_retried_and_an_off_split_is_not_blamed(tmp_path, image_files, capsys):
    from meddenoise.privacy.grouping import regroup_prepared

    # a folder of 3 images cannot match 0.5 / 0.33 / 0.17; with nothing joined, that is no reason to refuse
    tiny = tmp_path / "tiny"
    _prepared(tiny, _studies(3, 1, 4), ["a", "b", "c"], known=False)
    summary = regroup_prepared(tiny, 1.0, fractions=(0.5, 0.33, 0.17), matcher=Matcher(), margin=0)
    assert summary["images_moved_to_another_split"] == 0

    # a refused grouping is tried again by the next prepare, never skipped because the folder is reused
    root = tmp_path / "anonymous"
    for index, pixels in enumerate(_studies(8, 2, 11)):
        image_files.png(root / f"scan_{index:03d}.png", pixels)
    argv = ["prepare", "--source", "folder", "--root", str(root), "--size", "48", "--workers", "1",
            "--quiet", "--out", str(tmp_path / "out"), "--group-similar", "0.95", "--similar-matcher",
            "pixel", "--similar-max-shift", "0.001"]  # fmt: skip
    for _ in range(2):
        assert main(argv) != 0
        message = capsys.readouterr().err
        assert "points off" in message and "running prepare again tries the grouping again" in message
    assert not (tmp_path / "out" / "similar_groups.json").exists()
