"""Registry: rule 1 on validation evidence, @champion and @challenger, experiments, history, failures in one line."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sscr import integrity, registry
from sscr.config import record_dir, run_dir
from sscr.evidence import SCORES_FILE, SplitScores, compare
from sscr.train import MLFLOW_RUN_FILE

from sandbox import can_mount, in_namespace, subprocess_env

GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _run(params) -> dict:
    """The training record with its MLflow run id and model URI (kept apart: ids are not reproducible)."""
    return {**json.loads((record_dir(params) / "run.json").read_text()),
            **json.loads((run_dir(params) / MLFLOW_RUN_FILE).read_text())}


def committed(tmp_path: Path, params: dict) -> Path:
    """A git repository whose HEAD commits ``params`` as params.yaml; the file's path."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    for command in (["git", "init", "-q"], ["git", "add", "params.yaml"], ["git", "commit", "-qm", "params"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True, env={**os.environ, **GIT})
    return repo / "params.yaml"


def trained_with(params) -> dict:
    """The params the workspace's checkpoint was trained with (its conf.json)."""
    return json.loads((run_dir(params) / "conf.json").read_text())


def scores(values, digest: str = "d" * 64) -> SplitScores:
    """Validation scores of a made-up version on the same made-up images."""
    return SplitScores("val", "PSNR", "c" * 64, digest, {f"img{i:02d}": float(v) for i, v in enumerate(values)})


BASE = np.array([24.0, 31.5, 27.2, 35.1, 22.8, 29.9, 33.3, 26.4])


def test_register_stage_creates_version_one_as_champion_with_its_evidence(in_workspace, tmp_path):
    workspace, params = in_workspace
    records = record_dir(params)
    params_file = committed(tmp_path, trained_with(params))
    decision = registry.register_evaluated(records / "run.json", records / "metrics.json", model_name="stage-test",
                                           out=workspace / "register.json", params_file=params_file)
    assert decision.version == "1" and decision.outcome == "champion" and decision.promoted
    client = MlflowClient()
    version = client.get_model_version_by_alias("stage-test", "champion")
    assert str(version.version) == "1"
    metrics = json.loads((records / "metrics.json").read_text())
    validation = SplitScores.read(records / SCORES_FILE)
    assert version.tags["checkpoint_sha256"] == metrics["checkpoint_sha256"] == validation.checkpoint_sha256
    assert float(version.tags["metric.PSNR"]) == pytest.approx(metrics["test"]["PSNR"], abs=1e-5)  # reported
    assert float(version.tags["validation.PSNR"]) == pytest.approx(validation.mean, abs=1e-5)      # decided on
    assert int(version.tags["validation.n_images"]) == validation.n_images == 2  # tiny: 1 val ROI, 2 patches
    assert registry.validation_scores("stage-test", version) == validation  # kept with the version, intact
    (first,) = registry.decisions("stage-test", "1")
    assert first["outcome"] == "champion" and first["reason"] == "no current @champion"
    assert first["action"] == "sscr register" and "validation split" in first["rule"]
    assert json.loads((workspace / "register.json").read_text())["promoted"] is True
    # The same checkpoint registered again is the same version, and its history is not repeated.
    again = registry.register_evaluated(records / "run.json", records / "metrics.json", model_name="stage-test",
                                        params_file=params_file)
    assert again.version == "1" and again.outcome == "unchanged"
    assert len(MlflowClient().search_model_versions("name='stage-test'")) == 1
    assert len(registry.decisions("stage-test", "1")) == 1


def test_experiments_register_only_a_challenger(in_workspace, tmp_path, monkeypatch):
    """Issue 19: `dvc exp run` (DVC_EXP_NAME), other params than committed, or nothing committed: never @champion."""
    _, params = in_workspace
    records = record_dir(params)
    trained = trained_with(params)
    args = (records / "run.json", records / "metrics.json")

    monkeypatch.setenv("DVC_EXP_NAME", "bushy-kohl")
    decision = registry.register_evaluated(*args, model_name="exp-test", params_file=committed(tmp_path, trained))
    assert decision.outcome == "challenger" and "the DVC experiment 'bushy-kohl'" in decision.reason
    assert decision.action == "dvc exp run (bushy-kohl)"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("exp-test", "challenger").version) == decision.version
    with pytest.raises(Exception, match="alias champion not found"):
        client.get_model_version_by_alias("exp-test", "champion")
    monkeypatch.delenv("DVC_EXP_NAME")

    # Trained with other params than the committed ones (a hand-edited params.yaml, `sscr train --set`): the same.
    other = {**trained, "train": {**trained["train"], "epochs": trained["train"]["epochs"] + 5}}
    assert registry.experiment_reason(trained, other, environ={}) == (
        f"a model trained with other params than the committed params.yaml (train.epochs="
        f"{trained['train']['epochs']} (committed {trained['train']['epochs'] + 5}))")
    assert registry.experiment_reason(trained, None, environ={}).startswith("a model of params that are not committed")
    # Where it ran is not what was trained: paths, device and workers do not count.
    moved = {**trained, "data": {**trained["data"], "root": "/elsewhere"}, "train": {**trained["train"], "device": "cpu"}}
    assert registry.experiment_reason(trained, moved, environ={}) is None

    # `sscr promote` decides by rule 1: with no champion the challenger takes it, and the history has both.
    promoted = registry.promote("exp-test", decision.version)
    assert promoted.outcome == "champion"
    history = registry.decisions("exp-test", decision.version)
    assert [entry["outcome"] for entry in history] == ["challenger", "champion"]
    assert [entry["action"] for entry in history] == ["dvc exp run (bushy-kohl)", "sscr promote"]
    with pytest.raises(Exception, match="alias challenger not found"):  # it is the champion now, not a challenger
        client.get_model_version_by_alias("exp-test", "challenger")


def test_rule_one_decides_on_validation_beyond_noise(in_workspace):
    _, params = in_workspace
    run = _run(params)
    name = "rule-test"
    noise = np.random.default_rng(3).normal(0, 3, 8)
    noise -= noise.mean()
    candidates = {
        # version: (per-image validation PSNR, test PSNR tag)
        "1": (BASE, 30.0),
        "2": (BASE + 0.05, 45.0),          # the same on every image (+0.05 dB over v1): below the margin
        "3": (BASE + 0.60, 20.0),          # +0.6 dB on every image: beyond noise, though its test score is worse
        "4": (BASE + 1.20 + noise, 31.0),  # +0.6 dB over v3 on average, +-3 dB image to image: inside the noise
    }
    decisions = {}
    for version, (values, test_psnr) in candidates.items():
        assert registry.register(run["run_id"], {"PSNR": test_psnr}, name, run["model_uri"],
                                 validation=scores(values)) == version
        decisions[version] = registry.promote(name, version, min_gain=0.2)
    assert [decisions[v].outcome for v in "1234"] == ["champion", "challenger", "champion", "challenger"]
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "4"

    # Each decision carries its evidence: both validation scores, split, images, interval, margin, rule; test for reference.
    (two,) = registry.decisions(name, "2")
    evidence = two["evidence"]
    assert evidence["split"] == "val" and evidence["n_images"] == 8 and evidence["min_gain"] == 0.2
    assert evidence["candidate_mean"] == pytest.approx(BASE.mean() + 0.05)
    assert evidence["champion_mean"] == pytest.approx(BASE.mean())
    assert evidence["mean_difference"] == pytest.approx(0.05) and evidence["interval"] == pytest.approx([0.05, 0.05])
    assert evidence["better"] is False and two["champion_version"] == "1"
    assert two["test"] == {"candidate_test_PSNR": 45.0, "champion_test_PSNR": 30.0}  # never what decided
    assert "registry.min_gain = 0.2 dB" in two["rule"] and "95% paired bootstrap interval" in two["rule"]
    (four,) = registry.decisions(name, "4")
    low, high = four["evidence"]["interval"]
    assert four["champion_version"] == "3" and four["evidence"]["mean_difference"] == pytest.approx(0.6)
    assert low < 0 < high  # a gain above the margin, but inside the image-to-image noise: not promoted
    assert four["evidence"] == compare(scores(candidates["4"][0]), scores(candidates["3"][0]), 0.2).as_dict()


def test_decision_history_is_appended_never_overwritten(in_workspace):
    """Issue 19: `sscr promote --version 1` overwrote v1's promotion.decision; now each decision is a new tag."""
    _, params = in_workspace
    run = _run(params)
    name = "history-test"
    for values in (BASE + 1.0, BASE):
        registry.register(run["run_id"], {"PSNR": 30.0}, name, run["model_uri"], validation=scores(values))
    registry.promote(name, "1", min_gain=0.2)
    assert registry.promote(name, "2", min_gain=0.2).outcome == "challenger"
    before = dict(MlflowClient().get_model_version(name, "2").tags)
    # The same request again records nothing new; a forced promotion with its reason is appended.
    assert registry.promote(name, "2", min_gain=0.2).number == 1
    with pytest.raises(registry.RegistryError, match="--force needs a --reason"):
        registry.promote(name, "2", force=" ")
    forced = registry.promote(name, "2", min_gain=0.2, action="sscr promote --force", force="rollback: v1 drifts")
    assert forced.outcome == "champion" and forced.number == 2
    after = MlflowClient().get_model_version(name, "2").tags
    assert {key: after[key] for key in before} == before  # every earlier tag, the first decision included, as it was
    history = registry.decisions(name, "2")
    assert [entry["outcome"] for entry in history] == ["challenger", "champion"]
    assert history[1]["forced"] == "rollback: v1 drifts" and "rule 1 alone says" in history[1]["reason"]
    assert history[1]["evidence"]["better"] is False  # the evidence is recorded even when overridden
    # Back by rule 1: v1 beats v2 beyond noise.
    assert registry.promote(name, "1", min_gain=0.2).outcome == "champion"
    assert [entry["outcome"] for entry in registry.decisions(name, "1")] == ["champion", "champion"]


def test_no_comparison_without_the_same_validation_images(in_workspace):
    _, params = in_workspace
    run = _run(params)
    name = "pairing-test"
    registry.register(run["run_id"], {"PSNR": 30.0}, name, run["model_uri"], validation=scores(BASE))
    registry.register(run["run_id"], {"PSNR": 30.0}, name, run["model_uri"], validation=scores(BASE + 5, "e" * 64))
    registry.register(run["run_id"], {"PSNR": 40.0}, name, run["model_uri"])  # no validation scores at all
    registry.promote(name, "1")
    other_data = registry.promote(name, "2")
    assert other_data.outcome == "challenger" and "different validation images" in other_data.reason
    unscored = registry.promote(name, "3")
    assert unscored.outcome == "challenger" and "has no validation scores" in unscored.reason
    assert str(MlflowClient().get_model_version_by_alias(name, "champion").version) == "1"


def test_concurrent_promotions_leave_the_better_champion(in_workspace, tmp_path):
    workspace, params = in_workspace
    run = _run(params)
    name = "race-test"
    for values in (BASE + 1.0, BASE):
        registry.register(run["run_id"], {"PSNR": 30.0}, name, run["model_uri"], validation=scores(values))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"registry:\n  model_name: {name}\n  min_gain: 0.2\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "sscr.cli", "promote", "--params", str(params_file), "--version"]
    procs = [subprocess.Popen(command + [v], cwd=workspace, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for v in ("1", "2")]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    (better,), (worse,) = registry.decisions(name, "1"), registry.decisions(name, "2")
    # Both decisions are recorded, and whichever ran second saw the first one's result (the lock held).
    if worse["outcome"] == "champion":  # v2 ran first, with no champion yet
        assert "champion_version" not in worse
        assert better["outcome"] == "champion" and better["champion_version"] == "2"
        assert better["evidence"]["mean_difference"] == pytest.approx(1.0)
    else:  # v1 ran first
        assert better["outcome"] == "champion" and "champion_version" not in better
        assert worse["outcome"] == "challenger" and worse["champion_version"] == "1"
        assert worse["evidence"]["mean_difference"] == pytest.approx(-1.0)


def test_promote_refuses_unknown_versions_and_versions_without_their_file_record(in_workspace):
    _, params = in_workspace
    run = _run(params)
    import mlflow

    name = "refuse-test"
    registry.register(run["run_id"], {"PSNR": 30.0}, name, run["model_uri"], validation=scores(BASE))
    with pytest.raises(registry.RegistryError, match=r"has no version 9 \(versions 1 in .*--version 1"):
        registry.promote(name, "9")
    bare = mlflow.register_model(run["model_uri"], name).version  # not by `sscr register`: no file record
    with pytest.raises(registry.RegistryError, match=f"version {bare} has no {integrity.DIGEST_TAG} record"):
        registry.promote(name, str(bare), force="an unloadable champion")
    with pytest.raises(Exception, match="alias champion not found"):
        MlflowClient().get_model_version_by_alias(name, "champion")  # nothing moved
    assert registry.decisions(name, str(bare)) == []


def _sscr(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sscr.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=subprocess_env(**env))


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("sscr: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_registry_and_store_failures_are_one_line(in_workspace, tmp_path):
    """Issue 19: unknown version (a 28-line traceback), damaged mlflow.db or optuna.db (110 lines, or written into)."""
    workspace, params = in_workspace
    run = _run(params)
    registry.register(run["run_id"], {"PSNR": 30.0}, "cli-test", run["model_uri"], validation=scores(BASE))
    store = f"sqlite:///{workspace / 'mlflow.db'}"
    params_file = tmp_path / "params.yaml"
    params_file.write_text("registry:\n  model_name: cli-test\n")
    line = _one_line(_sscr(["promote", "--params", str(params_file), "--version", "9"], tmp_path,
                           MLFLOW_TRACKING_URI=store))
    assert "registered model 'cli-test' has no version 9 (versions 1 in" in line and "--version 1" in line
    assert "--force needs --reason" in _one_line(_sscr(["promote", "--params", str(params_file), "--force"], tmp_path,
                                                       MLFLOW_TRACKING_URI=store))

    # A damaged store is refused before anything is written to it: its bytes stay as they were.
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes((workspace / "mlflow.db").read_bytes()[:4096] + b"\x00garbage" * 4096)
    before = damaged.read_bytes()
    line = _one_line(_sscr(["promote", "--params", str(params_file)], tmp_path,
                           MLFLOW_TRACKING_URI=f"sqlite:///{damaged}"))
    assert f"the MLflow tracking store {damaged} is damaged" in line and "restore it from a backup" in line
    assert damaged.read_bytes() == before
    not_sqlite = tmp_path / "optuna.db"
    not_sqlite.write_bytes(b"this is not a database" * 100)
    before = not_sqlite.read_bytes()
    line = _one_line(_sscr(["tune", "--params", str(params_file), "--storage", f"sqlite:///{not_sqlite}",
                            "--n-trials", "1", "--no-progress"], tmp_path, MLFLOW_TRACKING_URI=store))
    assert f"the Optuna storage {not_sqlite} is damaged" in line
    assert not_sqlite.read_bytes() == before

    # Locked by another process: one line after SQLite's wait, nothing changed.
    locked = tmp_path / "locked.db"
    locked.write_bytes((workspace / "mlflow.db").read_bytes())
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        line = _one_line(_sscr(["promote", "--params", str(params_file), "--version", "1"], tmp_path,
                               MLFLOW_TRACKING_URI=f"sqlite:///{locked}"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert f"{locked} is locked by another process" in line


def test_read_only_store_is_one_line(in_workspace, tmp_path):
    if not can_mount(tmp_path):
        pytest.skip("needs root and mount namespaces for a read-only file system")
    workspace, params = in_workspace
    run = _run(params)
    registry.register(run["run_id"], {"PSNR": 30.0}, "ro-test", run["model_uri"], validation=scores(BASE))
    store = tmp_path / "store"
    store.mkdir()
    (store / "mlflow.db").write_bytes((workspace / "mlflow.db").read_bytes())
    before = (store / "mlflow.db").read_bytes()
    params_file = tmp_path / "params.yaml"
    params_file.write_text("registry:\n  model_name: ro-test\n")
    command = [sys.executable, "-m", "sscr.cli", "promote", "--params", str(params_file), "--version", "1"]
    result = subprocess.run(in_namespace(f'mount --bind -o ro "{store}" "{store}"', command), cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env=subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}",
                                               XDG_CACHE_HOME=str(tmp_path / "cache")))
    line = _one_line(result)
    assert f"{store / 'mlflow.db'} is read-only" in line or "cannot be opened" in line, line
    assert (store / "mlflow.db").read_bytes() == before


def test_only_database_errors_read_as_store_failures():
    """A "malformed" input file elsewhere is not reported as a damaged store; SQLite's own errors are, wrapped or not."""
    from sscr.stores import one_line

    assert one_line(ValueError("malformed GeoTIFF header in x.tif"), "the MLflow tracking store", "mlflow.db") is None
    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.Error as err:
            raise RuntimeError("the store failed") from err
    except RuntimeError as wrapped:
        line = one_line(wrapped, "the MLflow tracking store", "mlflow.db")
    assert line == ("the MLflow tracking store mlflow.db is locked by another process (a write in progress, or a "
                    "process that holds the lock): wait for it to finish or stop it, then retry")
