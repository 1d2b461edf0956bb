"""params.yaml schema: defaults, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sscr.config import ConfigError, Params, apply_override, flatten, load_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_file_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.masks.use in params.masks.kinds


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "train.epochz: unknown key" in str(err.value)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: many\ndata:\n  source: s3\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "train.epochs" in str(err.value) and "'many'" in str(err.value)
    assert "data.source" in str(err.value)


def test_overrides_parse_values_as_yaml(tmp_path):
    params = load_params(tmp_path / "missing.yaml", ["train.epochs=3", "model.encoder_widths=[8, 16]",
                                                     "model.use_sar=false", "model.name=sscr"])
    assert params.train.epochs == 3
    assert params.model.encoder_widths == [8, 16]
    assert params.model.use_sar is False
    assert params.model.name == "multisarv2"  # the paper's name for the seed's network, stored canonically
    with pytest.raises(ConfigError, match="group.key=value"):
        apply_override({}, "train.epochs")


def test_flatten_gives_dotted_keys():
    flat = flatten(Params())
    assert flat["train.lr"] == Params().train.lr
    assert flat["data.synth.seed"] == 0
    assert all(not isinstance(value, dict) for value in flat.values())


@pytest.mark.parametrize(("override", "key"), [
    ("train.lr=.inf", "train.lr"), ("train.lr=.nan", "train.lr"), ("loss.w_ssim=-.inf", "loss.w_ssim"),
    ("model.scale_by=.nan", "model.scale_by"), ("evaluate.coverage_bins=[0.0, .inf]", "evaluate.coverage_bins.1"),
    ("tune.lr_range=[0.001, .inf]", "tune.lr_range.1"), ("tune.timeout=.inf", "tune.timeout"),
])
def test_non_finite_settings_are_refused_with_their_key(tmp_path, override, key):
    """`lr: .inf` trained, exited 0 and wrote -Infinity into run.json (issue 13): refused at config time now."""
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "missing.yaml", [override])
    assert f"{key}: Input should be a finite number" in str(err.value)


def test_the_cli_refuses_a_non_finite_learning_rate_in_one_line(tmp_path, capsys, monkeypatch):
    from sscr import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  lr: .inf\n")
    assert cli.main(["train"]) == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert message[-1].strip() == "train.lr: Input should be a finite number (got inf)"
    assert not (tmp_path / "results").exists()
