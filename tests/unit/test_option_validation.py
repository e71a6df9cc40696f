"""One validation of numeric options (finite, in the declared range, named in the message), config files
that cannot be read, strict flags and keys with "did you mean", and `--print-config` (TOML, then exit).

Each case is a row of docs/reliability.md ("Options and config files"); every refusal is one line on stderr
that names the option, exit status 2, and nothing trained."""

from __future__ import annotations

import sys

import pytest

from meddenoise.cli import all_parsers, build_parser, main
from meddenoise.config import config_from_mapping
from meddenoise.engine.config import TrainConfig
from meddenoise.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def refused(capsys, argv: list[str]) -> str:
    """Run the CLI, require exit status 2 and a one-line message; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def train_args(tmp_path, *extra: str) -> list[str]:
    return ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run"), "--quiet", *extra]


# -- issue 23, rows 1, 2, 4, 24: numbers that are not finite or out of range --------------------------------
@pytest.mark.parametrize(
    ("extra", "flag", "fragment"),
    [
        (["--norm", "group", "--dp-epsilon", "nan"], "--dp-epsilon", "must be a finite number"),
        (["--norm", "group", "--dp-noise-multiplier", "nan"], "--dp-noise-multiplier", "finite"),
        (["--norm", "group", "--dp-noise-multiplier", "inf"], "--dp-noise-multiplier", "finite"),
        (["--norm", "group", "--dp-epsilon", "inf"], "--dp-epsilon", "finite"),
        (["--norm", "group", "--dp-epsilon", "-1"], "--dp-epsilon", "dp_epsilon must be >= 0"),
        (["--norm", "group", "--dp-noise-multiplier", "1e9"], "--dp-noise-multiplier", "between 0 and"),
        (["--dp-delta", "1"], "--dp-delta", "dp_delta must be in (0, 1); got 1.0"),
        (["--dp-delta", "0"], "--dp-delta", "dp_delta must be in (0, 1)"),
        (["--weight-decay", "nan"], "--weight-decay", "finite"),
        (["--grad-clip", "nan"], "--grad-clip", "finite"),
        (["--grad-clip", "-1"], "--grad-clip", "grad_clip must be >= 0"),
        (["--lr", "inf"], "--lr", "finite"),
        (["--ema-decay", "1"], "--ema-decay", "ema_decay must be in [0, 1)"),
        (["--base-channels", "100000000000000000000"], "--base-channels", "between 1 and 1024"),
        (["--depth", "40"], "--depth", "depth must be between 0 and 12; got 40"),
        (["--noise-std", "nan"], "--noise-std", "finite"),
    ],
)
def test_train_refuses_numbers_that_are_not_finite_or_out_of_range(tmp_path, capsys, extra, flag, fragment):
    err = refused(capsys, train_args(tmp_path, *extra))
    assert fragment in err and flag in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_federated_refuses_an_infinite_dirichlet_alpha(tmp_path, capsys):
    argv = ["federated", "--out", str(tmp_path / "fed"), "--data", str(tmp_path), "--sites", "2"]
    err = refused(capsys, [*argv, "--partition", "dirichlet", "--alpha", "inf"])
    assert "--alpha" in err and "finite" in err
    err = refused(capsys, [*argv, "--partition", "dirichlet", "--alpha", "0"])
    assert "alpha must be > 0; got 0.0" in err


def test_shared_training_options_keep_their_bounds_in_federated(tmp_path, capsys):
    argv = ["federated", "--out", str(tmp_path / "fed"), "--data", str(tmp_path), "--sites", "2"]
    assert "--weight-decay" in refused(capsys, [*argv, "--weight-decay", "nan"])
    assert "between 1 and 1024" in refused(capsys, [*argv, "--base-channels", "5000"])


def test_the_same_rules_hold_for_toml_files_and_mappings(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("base_channels = 100000000000000000000\n")
    err = refused(capsys, train_args(tmp_path, "--config", str(tmp_path / "c.toml")))
    assert "base_channels must be between 1 and 1024" in err and "--base-channels" in err
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(TrainConfig, {"data": "d", "out": "o", "dp_epsilon": float("nan")})
    assert caught.value.parameter == "dp_epsilon"
    with pytest.raises(ConfigError, match="dp_delta must be in"):
        TrainConfig(data="d", out="o", dp_delta=2.0).check()  # a config made in code, checked directly


# -- issue 23, row 23: config files that are not TOML text ------------------------------------------------
@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (
            lambda p: (p / "c.toml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00"),
            "not a text (UTF-8) TOML file",
        ),
        (lambda p: (p / "c.toml").mkdir(), "is a folder"),
        (lambda p: (p / "c.toml").write_text("base_channels = 10^20\n"), "is not valid TOML"),
    ],
)
def test_unreadable_config_files_get_one_line(tmp_path, capsys, make, fragment):
    make(tmp_path)
    err = refused(capsys, train_args(tmp_path, "--config", str(tmp_path / "c.toml")))
    assert fragment in err and "c.toml" in err, err


# -- issue 23, row 3: an epsilon no noise multiplier can reach; row 5: delta against the patients ----------
def test_an_unreachable_epsilon_is_one_line_naming_the_budget(make_prepared, tmp_path, capsys):
    pytest.importorskip("opacus")
    data = make_prepared(n=24, size=16, patients=8)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--norm", "group"]
    argv += ["--base-channels", "4", "--depth", "2", "--epochs", "1", "--device", "cpu", "--quiet"]
    err = refused(capsys, [*argv, "--dp-epsilon", "1e-6"])
    assert "dp_epsilon 1e-06 cannot be reached with dp_delta 1e-05 over" in err and "--dp-epsilon" in err


def test_a_delta_not_below_one_over_the_patients_is_warned_about(make_prepared, tmp_path, capsys):
    pytest.importorskip("opacus")
    data = make_prepared(n=24, size=16, patients=8)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--norm", "group"]
    argv += ["--base-channels", "4", "--depth", "2", "--epochs", "1", "--device", "cpu", "--quiet"]
    assert main([*argv, "--dp-epsilon", "8", "--dp-delta", "0.5", "--no-evaluate-test"]) == 0
    err = capsys.readouterr().err
    assert "warning: dp_delta 0.5 is not well below 1 /" in err and "--dp-delta" in err


# -- issue 23, row 7 and model sizes: refused before any memory is asked for --------------------------------
def test_a_depth_the_images_cannot_take_is_refused_with_the_depth_that_fits(make_prepared, tmp_path, capsys):
    data = make_prepared(n=12, size=16, patients=4)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"]
    err = refused(capsys, [*argv, "--depth", "9"])
    assert "depth 9 is too deep for 16x16 images" in err and "at most depth 5" in err and "--depth" in err


def test_absurd_dncnn_layers_are_refused_with_the_range():
    from meddenoise.models import build_model

    with pytest.raises(ConfigError, match="at least 3 layers and at most 1000"):
        build_model("dncnn", num_layers=100000)


# -- issue 22, row 5: strict flags and keys ------------------------------------------------------------
def test_no_parser_accepts_abbreviations(tmp_path, capsys):
    assert all(parser.allow_abbrev is False for parser in all_parsers(build_parser()))
    with pytest.raises(SystemExit) as caught:
        main(train_args(tmp_path, "--dp-eps", "3"))
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --dp-eps 3 (did you mean --dp-epsilon?)" in err


def test_every_typo_of_a_config_file_is_reported_at_once_with_the_closest_key(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("epoch = 3\nnoise_meen = 0.1\n[noise]\nmeen = 0.2\nsdt = 0.1\n")
    err = refused(capsys, train_args(tmp_path, "--config", str(tmp_path / "c.toml")))
    assert "unknown key(s) in " in err and "epoch, noise_meen, noise.meen, noise.sdt;" in err
    for hint in ("epochs (for epoch)", "noise_mean (for noise_meen)", "noise.mean (for noise.meen)"):
        assert hint in err, err
    assert "noise.std (for noise.sdt)" in err


# -- issue 22, row 4: --print-config prints valid TOML and exits -------------------------------------------
def test_print_config_prints_toml_that_reads_back_and_runs_nothing(make_prepared, tmp_path, capsys):
    data = make_prepared(n=12, size=16, patients=4)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--device", "cpu", "--epochs", "2"]
    argv += ["--noise-std", "0.3", "--model-options", "residual=false", "--print-config"]
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 0
    printed = capsys.readouterr().out
    assert not out.exists()  # nothing trained, nothing written
    values = tomllib.loads(printed)
    assert values["evaluate_test"] is True and values["noise"]["std"] == 0.3 and "dose" not in values["noise"]
    assert "print_config" not in values
    (tmp_path / "printed.toml").write_text(printed)
    again = config_from_mapping(TrainConfig, values)
    from meddenoise.config import config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--config", str(tmp_path / "printed.toml")])
    assert config_from_args(TrainConfig, args) == again
    assert (again.epochs, again.noise.std, again.model_options) == (2, 0.3, ["residual=false"])


def test_print_config_hides_the_export_seed_and_exits(make_prepared, tmp_path, capsys):
    data = make_prepared(n=12, size=16, patients=4)
    out = tmp_path / "export"
    argv = ["obfuscate", "--data", str(data), "--out", str(out), "--private-map", str(tmp_path / "map.csv")]
    with pytest.raises(SystemExit):
        main([*argv, "--noise-seed", "987654321", "--print-config"])
    printed = capsys.readouterr().out
    assert "987654321" not in printed and "# seed = <secret>" in printed
    assert "seed" not in tomllib.loads(printed)["noise"] and not out.exists()
