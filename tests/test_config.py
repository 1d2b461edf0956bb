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
