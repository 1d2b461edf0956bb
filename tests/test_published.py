"""Published checkpoints in and out: import -> evaluate -> register end to end, export in the published format.

The published checkpoint is ``tests/fixtures/published/published_run/``: ``model.pth.tar``
and ``conf.json`` written by the published code itself (``tools/published_reference.py``),
a ``multisarv2`` at width 16 trained one step with the seed's settings;
``published_run_unet/`` and ``published_run_utae/`` the same for the seed's line with
``--model unet`` and ``--model utae`` (the published single-date U-Net).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from sscr.checkpoint import checkpoint_record, load_checkpoint, save_atomic
from sscr.cli import main
from sscr.config import PUBLISHED_PROTOCOL, flatten, parse_params
from sscr.fsutil import sha256_file
from sscr.models import build_model, load_published
from sscr.models.published import PublishedFormatError, published_settings
from sscr.published import export_published

from tiny import TINY, deep_update

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "published"
PUBLISHED = FIXTURES / "published_run"


def _params_file(folder: Path, params) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


@pytest.fixture(scope="module")
def published_workspace(tmp_path_factory, tiny_sample):
    """One workspace (its own MLflow store) where ``sscr import-published`` ran once: (workspace, params, stdout).

    The run directory is ``<workspace>/results/published``. One store for the module: creating
    an MLflow SQLite store takes seconds, up to half a minute on a loaded machine.
    """
    import contextlib
    import io

    from sscr import tracking

    workspace = tmp_path_factory.mktemp("published")
    root, masks = tiny_sample
    params = parse_params(deep_update(TINY, {
        "data": {"root": str(root)}, "masks": {"dir": str(masks)},
        "train": {"res_dir": str(workspace / "results")},
        "evaluate": {"out_dir": str(workspace / "results" / "eval")},
    }))
    previous = Path.cwd()
    os.chdir(workspace)
    try:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        tracking.configure()
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            code = main(["import-published", str(PUBLISHED / "model.pth.tar"), "--out",
                         str(workspace / "results" / "published"), "--params", str(_params_file(workspace, params))])
        assert code == 0
    finally:
        os.chdir(previous)
    return workspace, params, output.getvalue()


@pytest.fixture
def in_published(published_workspace, monkeypatch):
    """chdir into the published workspace, MLflow on its store; returns (workspace, params, import stdout)."""
    from sscr import tracking

    monkeypatch.chdir(published_workspace[0])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    return published_workspace


def _inputs(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(1, 13, size, size, generator=generator) * 0.5, torch.rand(1, 2, size, size, generator=generator)


def test_published_checkpoint_imported_evaluated_and_registered(in_published, tmp_path, capsys):
    """``sscr import-published`` -> ``sscr evaluate`` -> ``sscr register``, as the README shows it."""
    workspace, tiny_params, printed = in_published
    params_file = _params_file(tmp_path, tiny_params)
    run = workspace / "results" / "published"
    assert "imported multisarv2 (epoch 1)" in printed and "ignored: " in printed
    # the run directory holds what a trained run holds, with the published weights and settings
    conf = parse_params(json.loads((run / "conf.json").read_text()))
    assert conf.model.name == "multisarv2" and conf.model.encoder_widths == [16] and conf.model.scale_by == 10.0
    assert conf.loss.name == "ml" and conf.train.lr == 0.001 and conf.data.root == tiny_params.data.root
    mapped = published_settings(json.loads((PUBLISHED / "conf.json").read_text())).overrides  # lr, epochs, ...
    assert {key: value for key, value in flatten(conf).items() if key in PUBLISHED_PROTOCOL} == \
        {key: mapped.get(key, value) for key, value in PUBLISHED_PROTOCOL.items()}
    assert conf.train.schedule == "exponential" and conf.train.repeats == 1 and conf.train.batch_size == 2
    state = load_checkpoint(run)  # a run directory stands for its model_best.pt
    published = torch.load(PUBLISHED / "model.pth.tar", weights_only=True)["state_dict_G"]
    assert state["model"].keys() == published.keys()
    assert all(torch.equal(state["model"][key], published[key]) for key in published)
    record = json.loads((run / "run.json").read_text())  # the record: which weights, no run id
    info = json.loads((run / "mlflow_run.json").read_text())  # the MLflow run and its logged model
    assert record["source"] == "published" and "run_id" not in record and "run_id" not in state
    assert record["checkpoint_sha256"] == info["checkpoint_sha256"] == sha256_file(run / "model_best.pt")
    assert info["model_uri"] and MlflowClient().get_run(info["run_id"]).data.tags[
        "sscr.checkpoint_sha256"] == record["checkpoint_sha256"]

    eval_dir = tmp_path / "eval_published"
    assert main(["evaluate", "--params", str(params_file), "--load_config", str(run / "conf.json"),
                 "--set", f"evaluate.out_dir={eval_dir}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())  # an imported run keeps its records with it
    assert metrics["model"] == "multisarv2" and metrics["n_images"] == 2 and np.isfinite(metrics["test"]["PSNR"])
    assert main(["register", "--params", str(params_file), "--run-json", str(run / "run.json"),
                 "--metrics", str(run / "metrics.json"), "--out", str(tmp_path / "register.json"),
                 "--set", "registry.model_name=published"]) == 0
    # an imported checkpoint's params are not the committed ones: it waits as @challenger until a person promotes it
    assert json.loads((tmp_path / "register.json").read_text())["outcome"] == "challenger"
    assert "sscr promote --version 1" in capsys.readouterr().out
    assert main(["promote", "--params", str(params_file), "--version", "1",
                 "--set", "registry.model_name=published"]) == 0
    assert "published v1: @champion" in capsys.readouterr().out

    client = MlflowClient()
    logged = client.get_run(info["run_id"])
    assert logged.data.tags["sscr.source"] == "published" and logged.data.params["model.name"] == "multisarv2"
    assert logged.data.metrics["test_PSNR"] == pytest.approx(metrics["test"]["PSNR"])
    version = client.get_model_version_by_alias("published", "champion")
    assert version.run_id == info["run_id"] and float(version.tags["metric.PSNR"]) == pytest.approx(
        metrics["test"]["PSNR"], abs=1e-5)
    # the registered model predicts what the published network predicts
    cloudy, sar = _inputs()
    with torch.no_grad():
        expected = load_published(PUBLISHED / "model.pth.tar")(cloudy, sar)["mean"].numpy()
    served = mlflow.pyfunc.load_model("models:/published@champion").predict({"cloudy": cloudy.numpy(),
                                                                            "sar": sar.numpy()})
    np.testing.assert_allclose(served["mean"], expected, rtol=1e-5, atol=1e-6)


def test_an_imported_run_is_what_infer_and_train_pretrained_take(in_published):
    from sscr.serving import load_model
    from sscr.train import _build_model

    workspace, tiny_params, _ = in_published
    run = workspace / "results" / "published"
    cloudy, sar = _inputs()
    with torch.no_grad():
        expected = load_published(PUBLISHED / "model.pth.tar")(cloudy, sar)
        loaded = load_model(run, device="cpu")  # `sscr infer --model RUN_DIR`
        got = loaded.model(cloudy, sar)
    torch.testing.assert_close(got["mean"], expected["mean"], rtol=1e-5, atol=1e-6)
    assert loaded.mask_kind == tiny_params.masks.use and loaded.files == [run / "model_best.pt"]
    # `sscr train --pretrained RUN_DIR` starts a multisarv2 of the same widths from the published weights
    raw = tiny_params.model_dump(mode="json")
    raw["model"].update(name="multisarv2", encoder_widths=[16], decoder_widths=[16, 16], use_mask=None)
    raw["loss"]["name"] = "ml"
    raw["train"]["pretrained"] = str(run)
    start = _build_model(parse_params(raw), torch.device("cpu"), pretrained=True)
    published = torch.load(PUBLISHED / "model.pth.tar", weights_only=True)["state_dict_G"]
    assert all(torch.equal(start.state_dict()[key], value) for key, value in published.items())


def test_export_writes_the_published_format(in_published, tmp_path):
    """Keys, nesting and types of the published save_model's file and conf.json; importing it back gives the same."""
    workspace, tiny_params, _ = in_published
    run, out = workspace / "results" / "published", tmp_path / "exported" / "demo"
    assert main(["export-published", str(run), "--out", str(out), "--params", str(_params_file(tmp_path, tiny_params))]) == 0
    ours = torch.load(out / "model.pth.tar", weights_only=True)
    published = torch.load(PUBLISHED / "model.pth.tar", weights_only=True)
    assert list(ours) == list(published) == ["epoch", "state_dict", "state_dict_G", "optimizer_G", "scheduler_G"]
    assert ours["epoch"] == published["epoch"] == 1
    for key in ("state_dict", "state_dict_G"):
        assert list(ours[key]) == list(published[key])
        assert all(torch.equal(ours[key][name], value) and ours[key][name].dtype == value.dtype
                   for name, value in published[key].items())
    assert list(ours["optimizer_G"]) == list(published["optimizer_G"]) == ["state", "param_groups"]
    ours_group, published_group = ours["optimizer_G"]["param_groups"][0], published["optimizer_G"]["param_groups"][0]
    assert list(ours_group) == list(published_group) and ours_group["params"] == published_group["params"]
    assert ours_group["lr"] == published_group["lr"] == 0.001
    assert list(ours["scheduler_G"]) == list(published["scheduler_G"])
    assert ours["scheduler_G"]["last_epoch"] == published["scheduler_G"]["last_epoch"] == 1
    # conf.json: the published script's keys and types, and it maps back to the same settings
    conf, published_conf = json.loads((out / "conf.json").read_text()), json.loads((PUBLISHED / "conf.json").read_text())
    assert set(conf) <= set(published_conf)
    assert all(type(conf[key]) is type(published_conf[key]) for key in conf), \
        {key: (conf[key], published_conf[key]) for key in conf if type(conf[key]) is not type(published_conf[key])}
    assert conf["experiment_name"] == "demo"
    assert published_settings(conf).overrides == published_settings(published_conf).overrides
    with torch.no_grad():
        cloudy, sar = _inputs()
        torch.testing.assert_close(load_published(out / "model.pth.tar")(cloudy, sar)["mean"],
                                   load_published(PUBLISHED / "model.pth.tar")(cloudy, sar)["mean"], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["unet", "utae"])
def test_published_unet_and_utae_go_in_and_back_out_exactly(in_published, tmp_path, name):
    """``sscr import-published`` then ``sscr export-published``: the published file's weights, strictly, unchanged."""
    _, tiny_params, _ = in_published
    source, run, out = FIXTURES / f"published_run_{name}", tmp_path / "imported" / name, tmp_path / "exported" / name
    params_file = _params_file(tmp_path, tiny_params)
    assert main(["import-published", str(source / "model.pth.tar"), "--out", str(run), "--params", str(params_file)]) == 0
    conf = parse_params(json.loads((run / "conf.json").read_text()))
    assert conf.model.name == name and conf.model.encoder_widths == [4, 8] and conf.loss.name == "l2"
    published = torch.load(source / "model.pth.tar", weights_only=True)
    assert load_checkpoint(run)["model"].keys() == published["state_dict_G"].keys()
    assert main(["export-published", str(run), "--out", str(out), "--params", str(params_file)]) == 0
    ours = torch.load(out / "model.pth.tar", weights_only=True)
    assert list(ours) == list(published) and ours["epoch"] == published["epoch"] == 1
    for key in ("state_dict", "state_dict_G"):
        assert list(ours[key]) == list(published[key])
        assert all(torch.equal(ours[key][k], v) and ours[key][k].dtype == v.dtype for k, v in published[key].items())
    exported_conf = json.loads((out / "conf.json").read_text())
    published_conf = json.loads((source / "conf.json").read_text())
    assert exported_conf["model"] == name and exported_conf["loss"] == "l2"
    assert published_settings(exported_conf).overrides == published_settings(published_conf).overrides
    cloudy, sar = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(load_published(out / "model.pth.tar")(cloudy, sar)["mean"],
                                   load_published(source / "model.pth.tar")(cloudy, sar)["mean"], rtol=0, atol=0)


def test_export_of_a_trained_run_keeps_its_optimiser_state(in_published, tmp_path):
    from sscr.train import train

    raw = in_published[1].model_dump(mode="json")
    raw["train"]["res_dir"] = str(tmp_path / "results")
    raw["model"].update(name="multisarv2", encoder_widths=[16], decoder_widths=[16, 16], use_mask=None)
    raw["loss"]["name"] = "ml"
    raw["train"].update(epochs=1, select_best="val_loss")
    result = train(parse_params(raw), progress=False, log_model=False)
    export_published(result.run_dir, tmp_path / "out")
    exported = torch.load(tmp_path / "out" / "model.pth.tar", weights_only=True)
    last = load_checkpoint(result.run_dir / "checkpoint_last.pt")
    assert exported["epoch"] == 1 and exported["scheduler_G"] == last["scheduler"]
    assert exported["optimizer_G"]["state"].keys() == last["optimizer"]["state"].keys()
    assert all(torch.equal(exported["optimizer_G"]["state"][i]["exp_avg"], last["optimizer"]["state"][i]["exp_avg"])
               for i in last["optimizer"]["state"])
    best = load_checkpoint(result.run_dir)["model"]
    assert all(torch.equal(exported["state_dict"][f"netG.{key}"], value) for key, value in best.items())


def test_what_has_no_published_counterpart_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lite = build_model("sscr_lite", encoder_widths=[8, 16], decoder_widths=[8, 16], n_head=2, d_model=16)
    save_atomic(checkpoint_record(lite, parse_params(TINY), 1), tmp_path / "lite" / "model_best.pt")
    with pytest.raises(PublishedFormatError, match="model 'sscr_lite' has no published counterpart"):
        export_published(tmp_path / "lite", tmp_path / "out")
    # a structure-mask gate the published MultiSARv2 does not have: refused in one line, nothing written
    gated = build_model("multisarv2", encoder_widths=[16], decoder_widths=[16], mask_beta=0.5)
    gated_params = {**TINY, "loss": {"name": "ml"}, "model": {"name": "multisarv2", "encoder_widths": [16],
                                                               "decoder_widths": [16], "mask_beta": 0.5}}
    save_atomic(checkpoint_record(gated, parse_params(gated_params), 1), tmp_path / "gated" / "model_best.pt")
    assert main(["export-published", str(tmp_path / "gated"), "--out", str(tmp_path / "gated_out")]) == 1
    error = capsys.readouterr().err
    assert "mask_beta = 0.5 has no published counterpart" in error and error.count("\n") == 1
    assert not (tmp_path / "gated_out").exists()
    conf = json.loads((PUBLISHED / "conf.json").read_text())
    (tmp_path / "multi_date.json").write_text(json.dumps({**conf, "pretrain": False, "input_t": 3}))
    out = tmp_path / "never"
    assert main(["import-published", str(PUBLISHED / "model.pth.tar"), "--config", str(tmp_path / "multi_date.json"),
                 "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("sscr: error: ") and "pretrain = False cannot be honoured" in error
    assert error.count("\n") == 1 and not out.exists()
    # a published checkpoint given where ours is expected says how to bring it in
    assert main(["evaluate", "--checkpoint", str(PUBLISHED / "model.pth.tar")]) == 1
    assert "sscr import-published" in capsys.readouterr().err
