"""Sites and partitions: patients are never split across sites; partitions are seeded and cover everyone."""

from __future__ import annotations

import numpy as np
import pytest

from meddenoise.config import config_from_mapping
from meddenoise.data.cache import load_prepared, write_prepared
from meddenoise.data.records import ImageRecord
from meddenoise.errors import ConfigError, DataError
from meddenoise.federated.config import FederatedConfig, local_train_config
from meddenoise.federated.sites import (
    Site,
    choose_test_site,
    partition_folder,
    site_rows,
    sites_from_folders,
)


def _patients_of(sites, data):
    return [
        {data.records[r]["patient_id"] for r in site_rows(s, data.records, data.splits, "all")} for s in sites
    ]


@pytest.mark.parametrize(
    "partition, options", [("iid", {}), ("dirichlet", {"alpha": 0.1}), ("dirichlet", {"alpha": 5.0})]
)
def test_partitions_keep_patients_whole_and_cover_everyone(make_prepared, partition, options):
    folder = make_prepared(n=60, patients=20)
    data = load_prepared(folder)
    sites = partition_folder(data, str(folder), 3, partition, seed=1, **options)
    assert [s.name for s in sites] == ["site1", "site2", "site3"]
    patient_sets = _patients_of(sites, data)
    everyone = {row["patient_id"] for row in data.records}
    assert set().union(*patient_sets) == everyone
    assert sum(len(p) for p in patient_sets) == len(everyone)  # disjoint: no patient at two sites
    rows = [site_rows(s, data.records, data.splits, "all") for s in sites]
    assert sum(len(r) for r in rows) == len(data.records)
    for site in sites:  # every site can train and validate
        assert len(site_rows(site, data.records, data.splits, "train")) > 0
        assert len(site_rows(site, data.records, data.splits, "val")) > 0
    again = partition_folder(data, str(folder), 3, partition, seed=1, **options)
    assert again == sites


def test_iid_sites_are_near_equal_in_patients(make_prepared):
    data = load_prepared(make_prepared(n=60, patients=21))
    sizes = [len(s.groups) for s in partition_folder(data, "x", 3, "iid")]
    assert sizes == [7, 7, 7]


def test_small_alpha_makes_uneven_sites(make_prepared):
    folder = make_prepared(n=120, patients=40)
    data = load_prepared(folder)
    uneven = [len(s.groups) for s in partition_folder(data, str(folder), 3, "dirichlet", alpha=0.1, seed=0)]
    even = [len(s.groups) for s in partition_folder(data, str(folder), 3, "dirichlet", alpha=100.0, seed=0)]
    assert max(uneven) - min(uneven) > max(even) - min(even)


def _two_source_folder(tmp_path, shared_patient=False):
    records = []
    for i in range(24):
        source = "hospital-a" if i < 12 else "hospital-b"
        patient = f"{source}-p{i % 4}"
        if shared_patient and i == 20:
            patient = "hospital-a-p0"
        records.append(ImageRecord(f"img{i}", patient, source, f"x/{i}.png", patient))
    splits = ["train", "train", "val", "test"] * 6
    images = np.zeros((24, 8, 8), dtype=np.uint8)
    return write_prepared(tmp_path / "two", images, records, splits, {"source": "test"})


def test_by_source_is_one_site_per_source(tmp_path):
    folder = _two_source_folder(tmp_path)
    data = load_prepared(folder)
    sites = partition_folder(data, str(folder), 2, "by-source")
    assert [s.name for s in sites] == ["site1-hospital-a", "site2-hospital-b"]
    for site, source in zip(sites, ["hospital-a", "hospital-b"]):
        rows = site_rows(site, data.records, data.splits, "all")
        assert {data.records[r]["source"] for r in rows} == {source}
    with pytest.raises(ConfigError, match="sites = 2"):
        partition_folder(data, str(folder), 3, "by-source")


def test_by_source_refuses_a_patient_in_two_sources(tmp_path):
    folder = _two_source_folder(tmp_path, shared_patient=True)
    with pytest.raises(DataError, match="would split it across sites"):
        partition_folder(load_prepared(folder), str(folder), 2, "by-source")


def test_held_out_test_site_gives_all_its_images_to_test(make_prepared):
    folder = make_prepared(n=36, patients=12)
    data = load_prepared(folder)
    sites = choose_test_site(partition_folder(data, str(folder), 3, "iid"), "2")
    assert [s.role for s in sites] == ["train", "test", "train"]
    held = sites[1]
    assert len(site_rows(held, data.records, data.splits, "train")) == 0
    assert len(site_rows(held, data.records, data.splits, "val")) == 0
    assert len(site_rows(held, data.records, data.splits, "test")) == len(
        site_rows(Site(held.name, held.data, held.groups), data.records, data.splits, "all")
    )
    with pytest.raises(ConfigError, match="not one of the sites"):
        choose_test_site(sites, "site9")


def test_site_folders_are_named_after_the_folders(tmp_path, make_prepared):
    a, b = make_prepared(), make_prepared()
    sites = sites_from_folders([str(a), str(b)])
    assert [s.data for s in sites] == [str(a), str(b)]
    assert len({s.name for s in sites}) == 2
    with pytest.raises(DataError, match="does not exist"):
        sites_from_folders([str(tmp_path / "missing")])


def test_config_checks_name_the_option():
    with pytest.raises(ConfigError, match="either site_data"):
        config_from_mapping(FederatedConfig, {"out": "o", "data": "d", "site_data": ["a"], "sites": 1})
    with pytest.raises(ConfigError, match="sites must be"):
        config_from_mapping(FederatedConfig, {"out": "o", "data": "d"})
    with pytest.raises(ConfigError, match="fraction"):
        config_from_mapping(FederatedConfig, {"out": "o", "data": "d", "sites": 2, "fraction": 0})
    with pytest.raises(ConfigError, match="lr"):
        config_from_mapping(FederatedConfig, {"out": "o", "data": "d", "sites": 2, "lr": -1})
    config = config_from_mapping(FederatedConfig, {"out": "o", "data": "d", "sites": 2, "model": "dncnn"})
    local = local_train_config(config, data="d", out="o")
    assert (local.model, local.data, local.lr) == ("dncnn", "d", config.lr)


def test_without_flower_the_command_says_how_to_install(monkeypatch, make_prepared, tmp_path, capsys):
    import importlib.util

    from meddenoise import cli

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("flwr", "ray") else real_find_spec(name, *a),
    )
    data = make_prepared()
    code = cli.main(["federated", "--data", str(data), "--sites", "2", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "pip install 'meddenoise[federated]'" in capsys.readouterr().err


def test_partition_unit_is_the_split_group(tmp_path):
    """The rendered default is one CT (one patient) in many pose groups: sites get whole groups."""
    records = [ImageRecord(f"img{i}", "one-ct", "default", f"x/{i}", f"pose{i // 3:02d}") for i in range(36)]
    splits = [["train", "val", "test"][(i // 3) % 3] for i in range(36)]
    folder = write_prepared(tmp_path / "poses", np.zeros((36, 8, 8), np.uint8), records, splits, {"s": 1})
    data = load_prepared(folder)
    sites = partition_folder(data, str(folder), 3, "iid")
    group_sets = [set(s.groups) for s in sites]
    assert sum(len(g) for g in group_sets) == 12 and set().union(*group_sets) == {
        f"pose{k:02d}" for k in range(12)
    }
    for site in sites:
        rows = site_rows(site, data.records, data.splits, "all")
        assert {data.records[r]["group"] for r in rows} == set(site.groups)


def test_an_empty_site_folder_is_one_line_naming_the_site(make_prepared, tmp_path, capsys):
    """Issue 23, row 17: `federated --site-data han64 emptysite` printed a 115-line Ray/Flower traceback."""
    pytest.importorskip("flwr")
    from meddenoise.cli import main

    good = make_prepared(n=16, size=16, patients=8)
    empty = tmp_path / "emptysite"
    empty.mkdir()
    argv = ["federated", "--site-data", str(good), str(empty), "--out", str(tmp_path / "fed"),
            "--rounds", "1", "--model", "unet", "--base-channels", "4", "--depth", "2",
            "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "site emptysite" in err[0] and "is not usable" in err[0]
    assert "Traceback" not in err[0]


def test_a_moved_federated_run_folder_still_resumes():
    """Issue 23, row 18: `federated --resume` after moving the run folder was refused (out differed)."""
    from types import SimpleNamespace

    from meddenoise.config import config_from_mapping
    from meddenoise.federated.config import FederatedConfig
    from meddenoise.federated.server import FederatedServer

    def identity(out, **extra):
        config = config_from_mapping(FederatedConfig, {"data": "d", "sites": 2, "out": out, **extra})
        return FederatedServer._identity(SimpleNamespace(config=config))

    assert identity("runs/fed") == identity("/elsewhere/fed")  # moved: the same run
    assert identity("runs/fed") != identity("runs/fed", seed=1)  # another seed: another run
