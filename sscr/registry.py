"""The MLflow model registry: register an evaluated run's model, promote it to ``@champion`` if it is better.

Versions are never deleted or overwritten; every promotion decision, both
scores and the previous champion are tags on the candidate version, and
promotions are serialised so that two at once leave the better champion.

A version is registered only when its three sources agree on one checkpoint
(its SHA-256): the training record (``run.json``), the evaluation
(``metrics.json``) and the checkpoint file itself. The model comes from the
MLflow run tagged with that SHA-256, and the version carries it as a tag, so
registering the same checkpoint again finds its version instead of adding one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from sscr import integrity
from sscr.fsutil import check_writable, sha256_file, write_text
from sscr.metrics import flat_metrics
from sscr.tracking import CHECKPOINT_TAG, MODEL_URI_TAG, configure, find_run_by_tag, redact, tracking_uri

#: Tag of a registered version: the SHA-256 of the checkpoint its model was logged from.
VERSION_CHECKPOINT_TAG = "checkpoint_sha256"


class LineageError(ValueError):
    """The training record, the metrics and the checkpoint do not name the same weights; nothing is registered."""


@dataclass
class PromotionDecision:
    """What promotion decided for one model version, recorded on the version as tags."""

    model_name: str
    version: str
    promoted: bool
    metric: str
    candidate_score: float
    champion_version: str | None
    champion_score: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON files and Prefect artifacts."""
        return asdict(self)


def _lock_path() -> Path:
    uri = tracking_uri()
    key = hashlib.sha256(redact(uri).encode() + uri.encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sscr"
    base.mkdir(parents=True, exist_ok=True)
    return base / f"promotion-{key}.lock"


@contextlib.contextmanager
def promotion_lock(timeout: float = 300) -> Iterator[None]:
    """Serialise promotions: a PostgreSQL advisory lock on a PostgreSQL store, else a file lock.

    Two promotions at once would otherwise both read the old champion and
    both move the alias; under the lock the second sees the first's result.
    """
    uri = tracking_uri()
    if uri.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(5353835)"))
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(5353835)"))
        engine.dispose()
    else:
        from filelock import FileLock

        with FileLock(str(_lock_path()), timeout=timeout):
            yield


def _score(tags: Mapping[str, str], metric: str) -> float | None:
    value = tags.get(f"metric.{metric}")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def promote(model_name: str, version: str, alias: str = "champion", metric: str = "PSNR") -> PromotionDecision:
    """Move ``alias`` to ``version`` only if its ``metric`` tag beats the current holder's (higher wins).

    The decision, both scores and the previous champion are written as tags on
    the candidate version. Versions are never deleted or overwritten.
    """
    client = MlflowClient()
    with promotion_lock():
        candidate = client.get_model_version(model_name, version)
        score = _score(candidate.tags, metric)
        if score is None:
            raise ValueError(f"model version {model_name}/{version} has no metric.{metric} tag; evaluate it "
                             "first (`sscr evaluate`) and register it with its metrics (`sscr register`)")
        try:
            champion = client.get_model_version_by_alias(model_name, alias)
        except mlflow.exceptions.MlflowException:
            champion = None
        champion_score = _score(champion.tags, metric) if champion else None
        if champion is not None and champion.version == candidate.version:
            promoted, reason = False, f"version {version} already holds @{alias}"
        elif champion is None or champion_score is None:
            promoted, reason = True, f"no current @{alias}"
        elif score > champion_score:
            promoted, reason = True, f"{metric} {score:.4f} > champion v{champion.version} {champion_score:.4f}"
        else:
            promoted, reason = False, f"{metric} {score:.4f} <= champion v{champion.version} {champion_score:.4f}"
        if promoted:
            client.set_registered_model_alias(model_name, alias, version)
        decision = PromotionDecision(
            model_name, str(version), promoted, metric, score,
            str(champion.version) if champion else None, champion_score, reason,
        )
        if champion is not None and champion.version == candidate.version:
            return decision  # asked again (a repeated `register`): its recorded decision stays as it was
        for key, value in {
            "promotion.decision": "promoted" if promoted else "kept",
            "promotion.reason": reason,
            "promotion.candidate_score": f"{score:.6f}",
            "promotion.champion_version": decision.champion_version or "",
            "promotion.champion_score": "" if champion_score is None else f"{champion_score:.6f}",
        }.items():
            client.set_model_version_tag(model_name, str(version), key, value)
    return decision


def register(run_id: str, metrics: Mapping[str, float], model_name: str = "sscr", model_uri: str | None = None,
             checkpoint_sha256: str = "") -> str:
    """Register the run's logged model as a new version of ``model_name`` with metrics (and checkpoint) as tags."""
    tags = {f"metric.{key}": f"{value:.6f}" for key, value in metrics.items() if np.isfinite(value)}
    tags["run_id"] = run_id
    if checkpoint_sha256:
        tags[VERSION_CHECKPOINT_TAG] = checkpoint_sha256
    version = mlflow.register_model(model_uri or f"runs:/{run_id}/model", model_name, tags=tags)
    integrity.record(model_name, str(version.version))  # the sha256 of its files, checked before every load
    return str(version.version)


def version_of_checkpoint(model_name: str, checkpoint_sha256: str) -> str | None:
    """The version of ``model_name`` registered from the checkpoint with this SHA-256, if there is one."""
    versions = MlflowClient().search_model_versions(
        f"name='{model_name}' and tags.{VERSION_CHECKPOINT_TAG} = '{checkpoint_sha256}'")
    return str(min(int(v.version) for v in versions)) if versions else None


def _short(sha: str | None) -> str:
    return f"{sha[:12]}..." if sha else "none"


def check_lineage(run_json: Path, metrics_json: Path, checkpoint: Path) -> str:
    """The checkpoint's SHA-256, when the run record, the metrics and the checkpoint file all name it.

    Otherwise :class:`LineageError`, naming the three files and what each holds: a
    better score must never promote other weights than the ones it measured.
    """
    recorded = json.loads(run_json.read_text()).get("checkpoint_sha256")
    scored = json.loads(metrics_json.read_text()).get("checkpoint_sha256")
    actual = sha256_file(checkpoint) if checkpoint.is_file() else None
    if recorded and recorded == scored == actual:
        return recorded
    raise LineageError(
        f"the run record, the metrics and the checkpoint do not belong together: {run_json} records checkpoint "
        f"{_short(recorded)}, {metrics_json} scored {_short(scored)}, {checkpoint} is "
        f"{_short(actual) if actual else 'missing'}; evaluate the run's checkpoint (`dvc repro evaluate`) or "
        "retrain (`dvc repro train`), then register"
    )


def newest_version(model_name: str) -> str:
    """The highest version number registered under ``model_name``."""
    versions = MlflowClient().search_model_versions(f"name='{model_name}'")
    if not versions:
        raise ValueError(f"no registered versions of {model_name!r}; run `sscr register` first")
    return str(max(int(v.version) for v in versions))


def register_evaluated(run_json: str | Path, metrics_json: str | Path, model_name: str = "sscr",
                       alias: str = "champion", metric: str = "PSNR",
                       out: str | Path | None = None) -> PromotionDecision:
    """Stage ``register``: register the evaluated checkpoint's model with its test metrics, then promote.

    The training record ``run.json``, the evaluation ``metrics.json`` and the
    checkpoint ``run.json`` names must agree on its SHA-256 (:func:`check_lineage`);
    the model is the one logged by the MLflow run tagged with it. The same
    checkpoint registered again reuses its version (idempotent). ``out`` (the
    decision, JSON) is checked writable before the registry is touched, so a
    failure leaves the registry as it was.
    """
    configure()
    run_json, metrics_json = Path(run_json), Path(metrics_json)
    run = json.loads(run_json.read_text())
    checkpoint = Path(run.get("checkpoint") or run_json.parent / "model_best.pt")
    sha = check_lineage(run_json, metrics_json, checkpoint)
    metrics = flat_metrics(json.loads(metrics_json.read_text()))
    if metric not in metrics:
        raise ValueError(f"{metrics_json} has no {metric!r}; metrics are {sorted(metrics)}")
    if out is not None:
        try:
            check_writable(out)
        except OSError as err:
            raise ValueError(f"cannot write the register record {out} ({err.strerror or err}); nothing was "
                             "registered: make its directory writable or pass another --out") from None
    trained = find_run_by_tag(CHECKPOINT_TAG, sha, [run["experiment"]] if run.get("experiment") else None)
    if trained is None:
        raise LineageError(f"no MLflow run at {redact(tracking_uri())} trained {checkpoint} (sha256 {_short(sha)}); "
                           "train it with this tracking store (MLFLOW_TRACKING_URI), then register")
    model_uri = trained.data.tags.get(MODEL_URI_TAG)
    if not model_uri:
        raise LineageError(f"the MLflow run {trained.info.run_id} that trained {checkpoint} logged no model (status "
                           f"{trained.info.status}: killed or failed before its end); train to the end, then register")
    version = version_of_checkpoint(model_name, sha) or register(trained.info.run_id, metrics, model_name, model_uri,
                                                                 checkpoint_sha256=sha)
    decision = promote(model_name, version, alias=alias, metric=metric)
    if out is not None:
        write_text(out, json.dumps(decision.as_dict(), indent=2))
    return decision
