"""``sscr train --pretrain`` is the published training protocol, and the README's table says what it is.

The published script (github.com/RSIR25/sscr ``model/train_reconstruct.py``) trains with Adam,
an ExponentialLR stepped after every epoch, every whole patch of the split once per epoch, no
augmentation, validation after every epoch, the checkpoint of the lowest validation loss, float32.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from sscr.cli import build_parser, load, main
from sscr.config import PUBLISHED_MODEL_PROTOCOL, PUBLISHED_PROTOCOL, flatten
from sscr.train import learning_rate_schedule

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
README = ROOT / "README.md"
SECTION = "### The seed's command lines, one to one"
KEY_VALUE = re.compile(r"`((?:data|model|loss|train)\.[a-z_]+): ([^`]*)`")
FLAG = re.compile(r"`(--[a-z_]+(?: [^`]+)?)`")


def loaded(*argv: str) -> dict:
    """Flattened params of ``sscr train --params params.yaml <argv>``, as the command line loads them."""
    return flatten(load(build_parser().parse_args(["train", "--params", str(PARAMS), *argv])))


def protocol_table() -> list[list[str]]:
    """The rows of the first table of the README section on the seed's command lines (cells, header left out)."""
    text = README.read_text()
    section = text[text.index(SECTION):]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def test_readme_protocol_table_is_what_the_code_and_params_yaml_give():
    """Every `key: value` of the table, checked; every key of the protocol shown in both columns."""
    rows = protocol_table()
    assert len(rows) >= 10 and all(len(row) == 3 for row in rows)
    shown: dict[str, set[str]] = {}
    for label, published, ours in rows:
        flags = [part for flag in FLAG.findall(label) for part in flag.split(" ", 1)]
        context = " ".join(flags) or "default"
        with_protocol, without = loaded("--pretrain", *flags), loaded(*flags)
        published_pairs, our_pairs = KEY_VALUE.findall(published), KEY_VALUE.findall(ours)
        for key, value in published_pairs:
            assert with_protocol[key] == yaml.safe_load(value), f"{label}: sscr train --pretrain gives {key} = " \
                                                                 f"{with_protocol[key]!r}, the README says {value}"
        for key, value in our_pairs:
            assert without[key] == yaml.safe_load(value), f"{label}: params.yaml gives {key} = {without[key]!r}, " \
                                                          f"the README says {value}"
        assert {key for key, _ in published_pairs} <= {key for key, _ in our_pairs}, label  # both sides shown
        shown.setdefault(context, set()).update(key for key, _ in published_pairs)
    assert set(PUBLISHED_PROTOCOL) <= shown["default"]
    for model, forced in PUBLISHED_MODEL_PROTOCOL.items():
        assert set(forced) <= shown[f"--model {model}"], model


def test_pretrain_sets_every_published_choice_over_params_yaml():
    own, seed = loaded(), loaded("--pretrain")
    # params.yaml's CPU choices differ from the published ones in these; --pretrain resets each of them
    differing = {key for key in PUBLISHED_PROTOCOL if own[key] != PUBLISHED_PROTOCOL[key]}
    assert {"train.schedule", "train.repeats", "train.crop_size", "train.augment", "train.val_every",
            "train.select_best", "train.amp", "train.lr", "train.batch_size", "train.epochs"} <= differing
    assert {key: seed[key] for key in PUBLISHED_PROTOCOL} == PUBLISHED_PROTOCOL
    assert seed["data.split_match"] == own["data.split_match"] == "exact"  # an intended difference, kept


def test_the_seed_flags_set_the_exponential_schedule():
    """--lr and --gamma act as in the published script: lr, lr * gamma, lr * gamma^2, one step per epoch."""
    params = load(build_parser().parse_args(
        ["train", "--params", str(PARAMS), "--pretrain", "--lr", "0.001", "--gamma", "0.5", "--batch_size", "8"]))
    assert params.train.schedule == "exponential" and params.train.batch_size == 8
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=params.train.lr)
    schedule = learning_rate_schedule(optimizer, params.train, steps_per_epoch=3)
    rates = []
    for _ in range(3):
        rates.append(optimizer.param_groups[0]["lr"])
        for _ in range(3):  # the rate holds within an epoch
            optimizer.step()
            assert optimizer.param_groups[0]["lr"] == rates[-1]
        schedule.step()
    assert rates == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-12)


def test_pretrain_forces_what_the_published_script_forces_for_unet_and_utae(capsys):
    seed_flags = ["--pretrain", "--loss", "ml", "--batch_size", "8"]
    unet, utae = loaded(*seed_flags, "--model", "unet"), loaded(*seed_flags, "--model", "utae")
    assert (unet["loss.name"], unet["train.batch_size"]) == ("l2", 32)
    assert (utae["loss.name"], utae["train.batch_size"]) == ("l2", 8)
    assert "--pretrain: the published script trains unet with loss.name=l2, train.batch_size=32" in capsys.readouterr().err
    chosen = loaded(*seed_flags, "--model", "unet", "--set", "loss.name=l1")  # --set is ours: it wins
    assert (chosen["loss.name"], chosen["train.batch_size"]) == ("l1", 32)
    plain = loaded("--loss", "ml", "--batch_size", "8", "--model", "unet")  # without --pretrain: as asked
    assert (plain["loss.name"], plain["train.batch_size"]) == ("ml", 8)


def _column(path: Path, key: str) -> list[float]:
    with path.open() as handle:
        return [float(row[key]) for row in csv.DictReader(handle)]


@pytest.mark.slow  # a real training run through the command line, MLflow store and logged model included
def test_the_seed_training_line_logs_the_published_schedule(tiny_params, tiny_sample, tmp_path):
    """The README's seed line (tiny widths, CPU, 2 epochs) on params.yaml: the rate holds, every sample once."""
    root, masks = tiny_sample
    line = ["train", "--params", str(PARAMS), "--set", f"masks.dir={masks}", "--set", "data.patch_size=64",
            "--experiment_name", "demo", "--root3", str(root), "--model", "multisarv2", "--epochs", "2",
            "--lr", "0.001", "--batch_size", "8", "--gamma", "1.0", "--scale_by", "10.0", "--loss", "ml",
            "--use_sar", "--block_type", "mbconv", "--n_head", "16", "--device", "cpu", "--res_dir",
            str(tmp_path / "results"), "--rdm_seed", "1", "--pretrain", "--num_workers", "0",
            "--encoder_widths", "[8]", "--decoder_widths", "[8,8]"]
    assert main(line) == 0
    train_patches = 6  # tiny sample: 3 train ROIs of 2 patches
    history = tmp_path / "metrics" / "demo" / "metrics.csv"  # params.yaml's train.metrics_dir
    assert _column(history, "lr") == [0.001, 0.001]  # ExponentialLR, gamma 1.0 (params.yaml: cosine)
    assert _column(history, "train_samples") == [train_patches] * 2  # once each (params.yaml: repeats 2)
    assert _column(tmp_path / "metrics" / "demo" / "validation.csv", "epoch") == [1, 2]  # every epoch
    run = json.loads((tmp_path / "results" / "demo" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient()
    for metric, expected in (("lr", [0.001, 0.001]), ("train_samples", [train_patches] * 2)):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run, metric))
        assert logged == [(1, expected[0]), (2, expected[1])], metric
    params = client.get_run(run).data.params
    assert params["train.schedule"] == "exponential" and params["train.repeats"] == "1"
    assert params["train.crop_size"] == "None" and params["train.augment"] == "False"
    assert params["train.amp"] == "False" and params["train.select_best"] == "val_loss"
    record = json.loads((tmp_path / "metrics" / "demo" / "run.json").read_text())
    assert record["select_best"] == "val_loss"
