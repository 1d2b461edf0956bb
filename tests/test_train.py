"""Training: tracked in MLflow, atomic checkpoints, resume after SIGKILL, NaN handling."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from sscr.checkpoint import load_checkpoint
from sscr.config import run_dir
from sscr.train import TrainingDiverged, train


def test_training_run_is_fully_tracked(tiny_params, capsys):
    result = train(tiny_params)
    assert result.epochs_done == 2 and len(result.history) == 2
    # each validation prints its scores in one line (issue 22: only the batch loss was shown)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("validation ")]
    assert [line.split(":")[0] for line in printed] == ["validation 1/2", "validation 2/2"]
    for line, row in zip(printed, result.history, strict=True):
        assert f"PSNR {row['val_PSNR']:.2f} dB, SSIM {row['val_SSIM']:.4f}" in line and "val loss" in line
        assert f"inside clouds PSNR {row['val_cloudy_PSNR']:.2f} dB" in line
    assert sum("(best so far by" in line for line in printed) >= 1
    folder = run_dir(tiny_params)
    for name in ("conf.json", "checkpoint_last.pt", "model_best.pt", "metrics.csv", "validation.csv", "run.json",
                 "mlflow_run.json"):
        assert (folder / name).exists(), name
    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.name"] == "sscr_lite"
    assert int(run.data.params["model.n_params"]) > 0
    assert run.data.tags["git.commit"]
    history = MlflowClient().get_metric_history(result.run_id, "val_PSNR")
    assert sorted(m.step for m in history) == [1, 2]
    assert math.isfinite(run.data.metrics["best_val_PSNR"])
    contexts = {inp.tags[0].value for inp in run.inputs.dataset_inputs}
    assert contexts == {"train", "val"}
    assert all(len(inp.dataset.digest) == 16 for inp in run.inputs.dataset_inputs)
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id)}
    assert {"checkpoints", "config", "figures", "training"} <= artifacts
    record = json.loads((folder / "run.json").read_text())  # the DVC-tracked record: no run id, the checkpoint's hash
    assert record["checkpoint_sha256"] == hashlib.sha256((folder / "model_best.pt").read_bytes()).hexdigest()
    assert "run_id" not in record and "model_uri" not in record
    info = json.loads((folder / "mlflow_run.json").read_text())  # untracked: the MLflow run and its model
    assert info["run_id"] == result.run_id and info["model_uri"]
    assert run.data.tags["sscr.checkpoint_sha256"] == record["checkpoint_sha256"]
    assert MlflowClient().get_run(result.run_id).data.tags["sscr.model_uri"] == info["model_uri"]
    # The logged model answers with cloud-free imagery from cloudy S2 + S1.
    model = mlflow.pyfunc.load_model(info["model_uri"])
    rng = np.random.default_rng(0)
    cloudy = rng.uniform(0, 0.5, (1, 13, 64, 64)).astype(np.float32)
    sar = rng.uniform(0, 1, (1, 2, 64, 64)).astype(np.float32)
    out = model.predict({"cloudy": cloudy, "sar": sar})
    assert out["mean"].shape == (1, 13, 64, 64)
    assert 0.0 <= out["mean"].min() and out["mean"].max() <= 1.0
    assert model.metadata.signature is not None


def test_checkpoint_holds_its_config_and_loads_weights_only(tiny_params):
    train(tiny_params, progress=False, log_model=False)
    state = load_checkpoint(run_dir(tiny_params) / "model_best.pt")
    assert state["model_name"] == "sscr_lite"
    assert state["config"]["train"]["epochs"] == 2
    assert state["model_config"]["encoder_widths"] == [8, 16]


def test_nan_loss_fails_cleanly_and_keeps_the_good_checkpoint(tiny_params, monkeypatch):
    import sscr.losses

    real_build = sscr.losses.build_loss
    calls = {"n": 0}

    def poisoned(cfg, scale_by):  # fault injection: the loss turns NaN on the first batch of epoch 2
        loss = real_build(cfg, scale_by)
        original = loss.forward

        def forward(output, target, mask=None):
            total, parts = original(output, target, mask)
            if not torch.is_grad_enabled():  # validation's loss (no_grad) is not a training batch
                return total, parts
            calls["n"] += 1
            return (total * float("nan"), parts) if calls["n"] > 3 else (total, parts)

        loss.forward = forward
        return loss

    monkeypatch.setattr(sscr.losses, "build_loss", poisoned)
    tiny_params.train.epochs = 3
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2"):
        train(tiny_params, progress=False, log_model=False)
    state = load_checkpoint(run_dir(tiny_params) / "checkpoint_last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    runs = mlflow.search_runs(experiment_names=["sscr"], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]


def _write_params(tmp_path: Path, params) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


@pytest.mark.parametrize("moment", ["train.batch:2:1", "train.validate:2", "checkpoint.write:2"])
def test_sigkill_then_resume_finishes_in_the_same_run(tiny_params, tmp_path, moment):
    tiny_params.train.epochs = 3
    params_file = _write_params(tmp_path, tiny_params)
    env = {**os.environ, "SSCR_FAULT": moment, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    command = [sys.executable, "-m", "sscr.cli", "train", "--params", str(params_file)]
    killed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = run_dir(tiny_params) / "checkpoint_last.pt"
    assert load_checkpoint(last)["epoch"] == 1  # the crash never leaves a corrupt or newer-than-real file
    env.pop("SSCR_FAULT")
    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = load_checkpoint(last)
    assert state["epoch"] == 3
    runs = mlflow.search_runs(experiment_names=["sscr"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in MlflowClient().get_metric_history(runs[0].info.run_id, "train_loss")]
    assert sorted(set(steps)) == [1, 2, 3]
    assert json.loads((run_dir(tiny_params) / "mlflow_run.json").read_text())["run_id"] == runs[0].info.run_id
    assert "run_id" not in state  # checkpoints hold no run id: the same training writes the same bytes
    assert not list(run_dir(tiny_params).glob(".*.partial"))  # the killed run's temporary file is gone too


def test_a_run_killed_before_its_first_checkpoint_leaves_the_previous_conf_and_weights(tiny_params, tmp_path):
    """Issue 13: conf.json was written before training, so a failed run left it describing other weights."""
    tiny_params.train.epochs = 1
    train(tiny_params, progress=False, log_model=False)
    folder = run_dir(tiny_params)
    conf, best = (folder / "conf.json").read_bytes(), (folder / "model_best.pt").read_bytes()
    tiny_params.train.lr = 0.5  # another configuration, killed before it validates anything
    env = {**os.environ, "SSCR_FAULT": "train.validate:1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    killed = subprocess.run([sys.executable, "-m", "sscr.cli", "train", "--params", str(_write_params(tmp_path,
                             tiny_params))], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (folder / "conf.json").read_bytes() == conf  # still the params model_best.pt was trained with
    assert (folder / "model_best.pt").read_bytes() == best
    assert json.loads(conf)["train"]["lr"] != 0.5


@pytest.mark.parametrize(("metric", "value"), [("SSIM", math.nan), ("MAE", math.inf), ("PSNR", -math.inf)])
def test_non_finite_validation_stops_the_run(tmp_path, metric, value):
    from sscr.train import TrainingDiverged, _check_finite

    val = {"PSNR": 20.0, "SSIM": 0.5, "MAE": 0.1, "cloudy_PSNR": math.nan, metric: value}
    with pytest.raises(TrainingDiverged, match=f"{metric} {value}.*epoch 3.*last good checkpoint"):
        _check_finite(val, 3, tmp_path / "checkpoint_last.pt")
    # A perfect prediction (+inf PSNR) and an undefined region metric are not failures.
    _check_finite({"PSNR": math.inf, "SSIM": 1.0, "cloudy_PSNR": math.nan}, 3, tmp_path / "checkpoint_last.pt")


def test_a_killed_run_evaluated_stays_unfinished_and_is_not_registered(tiny_params, tmp_path):
    """Issue 13: evaluating a killed run's model_best.pt marked it FINISHED, and register paired it with another model."""
    from sscr import registry
    from sscr.config import record_dir
    from sscr.evaluate import evaluate

    tiny_params.train.epochs = 3
    env = {**os.environ, "SSCR_FAULT": "train.validate:2", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    killed = subprocess.run([sys.executable, "-m", "sscr.cli", "train", "--params", str(_write_params(tmp_path,
                             tiny_params))], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    metrics = evaluate(tiny_params, progress=False)  # scores epoch 1's model_best.pt
    best = run_dir(tiny_params) / "model_best.pt"
    assert metrics["checkpoint_sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    runs = mlflow.search_runs(experiment_names=["sscr"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"  # killed: not FINISHED by being evaluated
    assert "test_PSNR" in runs[0].data.metrics  # the scores did reach the run that trained those weights
    # The killed run wrote no run.json: nothing to register, and a stale one from elsewhere does not pair.
    records = record_dir(tiny_params)
    assert not (records / "run.json").exists()
    (records / "run.json").write_text(json.dumps({"checkpoint": str(best), "checkpoint_sha256": "a" * 64}))
    with pytest.raises(registry.LineageError, match="aaaaaaaaaaaa"):
        registry.register_evaluated(records / "run.json", records / "metrics.json", model_name="killed")


def test_resume_refuses_other_params(tiny_params):
    train(tiny_params, progress=False, log_model=False)
    tiny_params.train.lr = 0.5
    from sscr.train import ResumeError

    with pytest.raises(ResumeError, match="train.lr"):
        train(tiny_params, resume=True, progress=False, log_model=False)


def test_the_seed_configuration_trains_and_its_checkpoint_rebuilds(tiny_params):
    """multisarv2 (asked for by its paper name) with the seed's ml loss, at a tiny width."""
    from sscr.checkpoint import build_from_checkpoint
    from sscr.config import parse_params

    raw = tiny_params.model_dump(mode="json")
    raw["model"].update(name="sscr", encoder_widths=[16], decoder_widths=[16, 16], use_mask=None)
    raw["loss"]["name"] = "ml"
    raw["train"]["epochs"] = 1
    params = parse_params(raw)
    result = train(params, progress=False, log_model=False)
    assert math.isfinite(result.best_val_psnr)
    assert {"train_l1", "train_one_minus_pearson"} <= set(result.history[0])
    state = load_checkpoint(result.best_checkpoint)
    assert state["model_name"] == "multisarv2" and state["model_config"]["use_mask"] is False
    model, _ = build_from_checkpoint(result.best_checkpoint)
    assert type(model).__name__ == "MultiSARv2"
    assert torch.equal(model.state_dict()["mask_conv.weight"], state["model"]["mask_conv.weight"])


# ---------------------------------------------------------------- the published protocol


def test_validation_loss_is_the_training_loss_on_the_val_split_and_picks_the_best_checkpoint(tiny_params):
    """``select_best: val_loss``: model_best.pt is the epoch of the lowest validation loss (ties: the later one)."""
    from torch.utils.data import DataLoader

    from sscr.checkpoint import build_from_checkpoint
    from sscr.data.dataset import build_dataset, model_inputs
    from sscr.losses import build_loss

    tiny_params.train.epochs = 3
    tiny_params.train.select_best = "val_loss"
    result = train(tiny_params, progress=False, log_model=False)
    losses = {int(row["epoch"]): row["val_loss"] for row in result.history}
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    lowest = min(losses.values())
    assert result.best_epoch == max(epoch for epoch, value in losses.items() if value == lowest)
    assert result.best_val_loss == lowest
    # The recorded validation loss is the mean over val batches of the training loss, in eval mode.
    model, state = build_from_checkpoint(result.best_checkpoint)
    assert state["epoch"] == result.best_epoch
    model.eval()
    loss_fn = build_loss(tiny_params.loss, model.scale_by)
    loader = DataLoader(build_dataset(tiny_params, "val"), batch_size=tiny_params.train.batch_size)
    with torch.no_grad():
        values = [float(loss_fn(model(**model_inputs(b, torch.device("cpu"))), b["target"])[0]) for b in loader]
    assert np.mean(values) == pytest.approx(lowest, rel=1e-5)
    info = json.loads((run_dir(tiny_params) / "run.json").read_text())
    assert info["select_best"] == "val_loss" and info["best_val_loss"] == pytest.approx(lowest)


@pytest.mark.parametrize(("select_best", "val", "best", "expected"), [
    ("val_loss", {"loss": 0.5, "PSNR": 10.0}, {"loss": 0.5, "psnr": 20.0}, True),  # published: <=, tie to later
    ("val_loss", {"loss": 0.6, "PSNR": 30.0}, {"loss": 0.5, "psnr": 20.0}, False),
    ("val_loss", {"loss": math.nan, "PSNR": 30.0}, {"loss": math.inf, "psnr": -math.inf}, False),
    ("PSNR", {"loss": 0.9, "PSNR": 30.0}, {"loss": 0.5, "psnr": 20.0}, True),
    ("PSNR", {"loss": 0.1, "PSNR": 20.0}, {"loss": 0.5, "psnr": 20.0}, False),
])
def test_best_checkpoint_rule(select_best, val, best, expected):
    from sscr.train import is_better

    assert is_better(val, best, select_best) is expected


def test_validation_schedule_follows_val_every_and_val_after():
    from sscr.config import TrainConfig
    from sscr.train import validation_due

    cfg = TrainConfig(epochs=7, val_every=2, val_after=3)
    assert [e for e in range(1, 8) if validation_due(cfg, e)] == [4, 6, 7]  # 7: the last epoch always
    assert [e for e in range(1, 8) if validation_due(TrainConfig(epochs=7), e)] == list(range(1, 8))


def test_pretrain_flag_selects_the_published_protocol(tmp_path):
    from sscr.cli import build_parser, load
    from sscr.config import PUBLISHED_PROTOCOL, flatten

    params_file = Path(__file__).resolve().parents[1] / "params.yaml"
    own = load(build_parser().parse_args(["train", "--params", str(params_file)]))
    assert own.train.crop_size == 64 and own.train.augment and own.train.select_best == "PSNR"
    seed = load(build_parser().parse_args(["train", "--params", str(params_file), "--pretrain", "--lr", "0.001"]))
    flat = flatten(seed)
    assert {key: flat[key] for key in PUBLISHED_PROTOCOL} == {**PUBLISHED_PROTOCOL, "train.lr": 0.001}  # the flag
    assert seed.train.crop_size is None and not seed.train.augment and seed.train.val_every == 1
    assert seed.train.select_best == "val_loss" and not seed.train.amp and seed.train.lr == 0.001
    # the protocol comes first: --set and the seed's own flags still change it
    mixed = load(build_parser().parse_args(["train", "--params", str(params_file), "--pretrain", "--val_every", "3",
                                            "--set", "train.augment=true"]))
    assert mixed.train.val_every == 3 and mixed.train.augment and mixed.train.crop_size is None


def test_training_view_without_augmentation_gives_the_samples_unchanged():
    from sscr.data.augment import TrainingView

    generator = torch.Generator().manual_seed(0)
    items = [{key: torch.rand(channels, 16, 16, generator=generator) for key, channels in
              (("sar", 2), ("cloudy", 13), ("target", 13), ("mask", 1))} for _ in range(8)]
    plain = TrainingView(items, crop_size=None, seed=1, flip=False)
    flipped = TrainingView(items, crop_size=None, seed=1, flip=True)
    assert all(torch.equal(plain[i][key], items[i][key]) for i in range(8) for key in items[i])
    changed = [i for i in range(8) if not torch.equal(flipped[i]["cloudy"], items[i]["cloudy"])]
    assert changed  # with 8 samples, some are flipped (3 in 4 each)
    for i in changed:  # the same flip for every input of a sample
        sample = flipped[i]
        flips = [dims for dims in ([-1], [-2], [-1, -2]) if torch.equal(sample["cloudy"], items[i]["cloudy"].flip(dims))]
        assert flips and all(torch.equal(sample[k], items[i][k].flip(flips[0])) for k in items[i])


def test_learning_rate_schedules():
    from sscr.config import TrainConfig
    from sscr.train import learning_rate_schedule

    def rates(schedule: str, steps_per_epoch: int, epochs: int, per_step: bool) -> list[float]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
        cfg = TrainConfig(lr=0.01, epochs=epochs, gamma=0.5, schedule=schedule)
        scheduler = learning_rate_schedule(optimizer, cfg, steps_per_epoch)
        seen = []
        for _ in range(epochs):
            for _ in range(steps_per_epoch):
                seen.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                if per_step:
                    scheduler.step()
            if not per_step:
                scheduler.step()
        return seen

    # the published schedule: lr x gamma after every epoch
    assert rates("exponential", 2, 3, per_step=False) == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    cosine = rates("cosine", 20, 10, per_step=True)  # 200 steps: 10 of warm-up
    decay = [0.01 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / 200))) for step in range(200)]
    assert cosine[:10] == pytest.approx([min(0.001 * (step + 1), decay[step]) for step in range(10)])  # warm-up
    assert cosine[10:] == pytest.approx(decay[10:])
    assert cosine[100] == pytest.approx(0.01 * (0.02 + 0.98 * 0.5))  # half-way down the cosine
    assert cosine[-1] == pytest.approx(0.01 * 0.02, rel=0.05)


class _CountingPatches(torch.utils.data.Dataset):
    """Three 32 px patches whose pixels say which patch they are; counts the reads."""

    def __init__(self) -> None:
        self.reads = 0

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> dict:
        self.reads += 1
        plane = torch.full((32, 32), float(index))
        return {"sar": plane.expand(2, 32, 32), "cloudy": plane.expand(13, 32, 32),
                "target": plane.expand(13, 32, 32), "mask": plane, "meta": {"sample_id": str(index)}}


def test_repeats_take_several_crops_of_each_patch_and_read_it_once():
    from sscr.data.augment import TrainingView

    patches = _CountingPatches()
    view = TrainingView(patches, crop_size=16, seed=1, repeats=4)
    assert len(view) == 12
    for epoch in (1, 2):
        view.epoch = epoch
        items = [view[i] for i in range(len(view))]
        assert [int(item["mask"][0, 0]) for item in items] == [0, 1, 2] * 4  # index i is patch i % 3
    assert patches.reads == 3  # each patch read once, then kept in memory
    assert items[0]["cloudy"].shape == (13, 16, 16)
    once = TrainingView(_CountingPatches(), crop_size=16, seed=1)
    assert len(once) == 3 and [once[i]["meta"]["sample_id"] for i in range(3)] == ["0", "1", "2"]
    once[0]
    assert once.dataset.reads == 4  # without repeats nothing is kept
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        TrainingView(patches, crop_size=16, seed=1, repeats=0)


def test_cosine_schedule_with_repeats_resumes_exactly(tiny_params, tmp_path):
    """A run stopped after epoch 1 and resumed ends with the weights and learning rates of an unbroken run."""
    tiny_params.train.schedule, tiny_params.train.repeats, tiny_params.train.lr = "cosine", 2, 0.003
    tiny_params.train.res_dir = tmp_path / "straight"
    straight = train(tiny_params, progress=False, log_model=False)
    tiny_params.train.res_dir = tmp_path / "broken"
    stopped = train(tiny_params, progress=False, log_model=False, on_epoch_end=lambda epoch, val: epoch == 1)
    assert stopped.stopped_early and stopped.epochs_done == 1
    resumed = train(tiny_params, resume=True, progress=False, log_model=False)
    assert [row["lr"] for row in resumed.history] == [row["lr"] for row in straight.history]
    # 6 training patches x 2 crops / batch 2 = 6 steps per epoch; the rate falls within each epoch
    assert straight.history[0]["lr"] > straight.history[1]["lr"] > 0
    a, b = load_checkpoint(straight.best_checkpoint)["model"], load_checkpoint(resumed.best_checkpoint)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
