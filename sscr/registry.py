"""The MLflow model registry: register an evaluated run's model; ``@champion`` and ``@challenger``, decided on validation.

**Rule 1.** A version takes ``@champion`` only when it beats the current champion
beyond noise on the validation split: image by image on the same validation images,
the mean PSNR difference must reach ``registry.min_gain`` (no smaller than the
measured seed-to-seed spread) and its paired bootstrap interval must lie above zero
(:func:`sscr.evidence.compare`). A version that does not becomes ``@challenger``. The
test split is for reporting: its scores are tags on the version, never the decision.

**Who moves the champion.** ``dvc repro`` (stage ``register``, or ``sscr register``)
of a model trained with the committed ``params.yaml`` applies rule 1. An experiment
never moves it by itself: a ``dvc exp run`` (DVC sets ``DVC_EXP_NAME`` for its
stages), a Prefect run with parameters (which is a DVC experiment) or a model trained
with other params than the committed ones registers at most ``@challenger``.
``sscr promote`` (or the ``promote`` deployment) applies rule 1 to any version, or
moves the champion with ``--force`` and a reason, recorded.

**History.** Every decision is one tag ``promotion.<n>`` on the version (JSON: what
acted, the outcome, both validation scores, the split, the number of images, the
interval, the margin, the rule; the test scores for reference). Later decisions add
``promotion.<n+1>``; none is ever overwritten. Versions are never deleted; decisions
are serialised under a lock, so two at once leave the better champion.

A version is registered only when its three sources agree on one checkpoint (its
SHA-256): the training record (``run.json``), the evaluation (``metrics.json``, and
the validation scores) and the checkpoint file itself. The model comes from the MLflow
run tagged with that SHA-256, and the version carries it as a tag, so registering the
same checkpoint again finds its version instead of adding one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from mlflow.tracking import MlflowClient

from sscr import integrity, stores
from sscr.config import RegistryConfig, flatten, parse_params
from sscr.evidence import SCORES_FILE, Comparison, EvidenceError, SplitScores, compare, rule_text
from sscr.fsutil import check_writable, sha256_file, write_text
from sscr.metrics import flat_metrics
from sscr.tracking import CHECKPOINT_TAG, MODEL_URI_TAG, configure, find_run_by_tag, redact, tracking_uri

#: Tag of a registered version: the SHA-256 of the checkpoint its model was logged from.
VERSION_CHECKPOINT_TAG = "checkpoint_sha256"
#: Tags of a version's decisions: ``promotion.1``, ``promotion.2``, ... (JSON each; never overwritten).
DECISION_PREFIX = "promotion."
#: Tags of a version's validation evidence: where its per-image scores are (an artifact of its run) and their hash.
SCORES_PATH_TAG = "validation.scores"
SCORES_SHA_TAG = "validation.scores_sha256"
#: The training params that say *what* is trained; these keys only say where or on what it ran.
WHERE_NOT_WHAT = frozenset({
    "data.root", "data.base_url", "data.on_error", "masks.dir", "masks.workers", "train.res_dir",
    "train.metrics_dir", "train.experiment_name", "train.device", "train.num_workers",
})
TRAINING_GROUPS = ("data", "masks", "model", "loss", "train")


class LineageError(ValueError):
    """The training record, the metrics and the checkpoint do not name the same weights; nothing is registered."""


class RegistryError(ValueError):
    """A registry request that cannot be carried out (unknown version, no file record, ...); nothing was changed."""


@dataclass
class PromotionDecision:
    """What one decision did to one model version, as recorded on the version (tag ``promotion.<number>``)."""

    model_name: str
    version: str
    outcome: str            # "champion" | "challenger" | "unchanged" (already the champion)
    action: str             # what asked: "dvc repro (stage register)", "sscr promote", ...
    metric: str
    candidate_score: float | None   # validation mean of the candidate
    champion_version: str | None
    champion_score: float | None    # validation mean of the champion before
    reason: str
    rule: str = ""
    evidence: dict[str, Any] | None = None
    experiment: str | None = None   # why this may not move the champion by itself
    forced: str | None = None       # the recorded reason of `--force`
    test: dict[str, Any] = field(default_factory=dict)  # test-split scores, for reference only
    number: int = 0
    at: str = ""

    @property
    def promoted(self) -> bool:
        """True when this decision moved ``@champion`` to the version."""
        return self.outcome == "champion"

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON files and Prefect artifacts (``promoted`` included)."""
        return {**asdict(self), "promoted": self.promoted}

    def record(self) -> str:
        """The JSON stored as the version's tag ``promotion.<number>`` (bounded: MLflow truncates at 8000)."""
        data = {key: value for key, value in self.as_dict().items()
                if key not in ("model_name", "version", "number") and value not in (None, {}, "")}
        return json.dumps(data, sort_keys=True)

    def line(self) -> str:
        """One line for a terminal."""
        where = {"champion": "@champion", "challenger": "@challenger"}.get(self.outcome, "unchanged")
        return f"{self.model_name} v{self.version}: {where} ({self.reason})"


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


# ---------------------------------------------------------------- versions, their records and evidence


def get_version(model_name: str, version: str | int) -> Any:
    """The model version, or :class:`RegistryError` naming the versions there are."""
    client = MlflowClient()
    try:
        return client.get_model_version(model_name, str(version))
    except mlflow.exceptions.MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    numbers = sorted(int(v.version) for v in client.search_model_versions(f"name='{model_name}'"))
    there = f"versions {_ranges(numbers)}" if numbers else "no versions"
    raise RegistryError(f"registered model {model_name!r} has no version {version} ({there} in "
                        f"{redact(tracking_uri())}); pass one of them, e.g. `sscr promote --version "
                        f"{numbers[-1] if numbers else 1}`" + ("" if numbers else ", after `dvc repro`"))


def _ranges(numbers: list[int]) -> str:
    parts, start = [], None
    for index, number in enumerate(numbers):
        start = number if start is None else start
        if index + 1 == len(numbers) or numbers[index + 1] != number + 1:
            parts.append(str(start) if start == number else f"{start}-{number}")
            start = None
    return ", ".join(parts)


def decisions(model_name: str, version: str | int) -> list[dict[str, Any]]:
    """Every decision recorded on the version, oldest first (each with its ``number``)."""
    tags = get_version(model_name, version).tags
    found = []
    for key, value in tags.items():
        number = key.removeprefix(DECISION_PREFIX)
        if key.startswith(DECISION_PREFIX) and number.isdigit():
            with contextlib.suppress(json.JSONDecodeError):
                found.append({"number": int(number), **json.loads(value)})
    return sorted(found, key=lambda decision: decision["number"])


def _require_file_record(model_name: str, candidate: Any) -> None:
    if integrity.DIGEST_TAG not in candidate.tags:
        raise RegistryError(
            f"registered model {model_name} version {candidate.version} has no {integrity.DIGEST_TAG} record of "
            "its files, so `sscr serve` and `sscr infer` would refuse to load it: not promoted. Register its run "
            "again (`sscr register`), or record the files if you trust the store: python -c \"from sscr import "
            f"tracking, integrity; tracking.configure(); integrity.record('{model_name}', '{candidate.version}')\"")


def attach_validation(model_name: str, version: str, run_id: str, scores: SplitScores) -> None:
    """Store ``scores`` with the version: an artifact of its run (a path of its own, never overwritten) and tags."""
    client = MlflowClient()
    text = scores.to_json()
    sha = hashlib.sha256(text.encode()).hexdigest()
    folder = f"validation/{sha[:16]}"
    with tempfile.TemporaryDirectory(prefix="sscr-scores-") as directory:
        local = Path(directory) / SCORES_FILE
        local.write_text(text)
        client.log_artifact(run_id, str(local), folder)
    for key, value in {
        SCORES_PATH_TAG: f"{folder}/{SCORES_FILE}", SCORES_SHA_TAG: sha,
        "validation.split": scores.split, f"validation.{scores.metric}": f"{scores.mean:.6f}",
        "validation.n_images": str(scores.n_images), "validation.digest": scores.digest,
    }.items():
        client.set_model_version_tag(model_name, version, key, value)


def validation_scores(model_name: str, version: Any) -> SplitScores | None:
    """The version's per-image validation scores, checked against their recorded SHA-256; None when it has none."""
    path, sha = version.tags.get(SCORES_PATH_TAG), version.tags.get(SCORES_SHA_TAG)
    if not path or not sha:
        return None
    with tempfile.TemporaryDirectory(prefix="sscr-scores-") as directory:
        try:
            local = Path(MlflowClient().download_artifacts(version.run_id, path, directory))
        except (mlflow.exceptions.MlflowException, OSError) as err:
            raise EvidenceError(f"the validation scores of {model_name} v{version.version} ({path} of run "
                                f"{version.run_id}) cannot be read ({err}); restore the artifact store") from None
        text = local.read_text()
    if hashlib.sha256(text.encode()).hexdigest() != sha:
        raise EvidenceError(f"the validation scores of {model_name} v{version.version} ({path} of run "
                            f"{version.run_id}) differ from the SHA-256 recorded at registration; restore them")
    return SplitScores.from_dict(json.loads(text), f"{model_name} v{version.version} {path}")


# ---------------------------------------------------------------- the decision


def promote(model_name: str, version: str | int, alias: str = "champion", metric: str = "PSNR", *,
            challenger_alias: str = "challenger", min_gain: float = 0.0, confidence: float = 0.95,
            action: str = "sscr promote", experiment: str | None = None, force: str | None = None,
            test_metric: str | None = None) -> PromotionDecision:
    """Decide where ``version`` stands against ``@alias``, move the aliases, record the decision on the version.

    Rule 1 (:func:`sscr.evidence.compare` on the validation scores): beyond noise ->
    ``@alias`` (unless ``experiment`` says why this action may not move it), else
    ``@challenger_alias``. ``force`` (a reason) moves ``@alias`` regardless, recorded.
    A version without its file-hash record is refused (:class:`RegistryError`):
    never promoted into a champion nobody can load.
    """
    client = MlflowClient()
    version = str(version)
    if force is not None and not force.strip():
        raise RegistryError("--force needs a --reason: say why the rule is overridden (it is recorded with the "
                            "decision)")
    stores.check_writable(tracking_uri(), "the MLflow tracking store")  # a decision is written: refuse early
    with promotion_lock():
        candidate = get_version(model_name, version)
        _require_file_record(model_name, candidate)
        try:
            champion = client.get_model_version_by_alias(model_name, alias)
        except mlflow.exceptions.MlflowException:
            champion = None
        candidate_scores = validation_scores(model_name, candidate)
        candidate_score = candidate_scores.mean if candidate_scores else None
        decision = PromotionDecision(model_name, version, "challenger", action, metric, candidate_score,
                                     str(champion.version) if champion else None, None, "",
                                     rule=rule_text(metric, confidence, min_gain), experiment=experiment,
                                     forced=force.strip() if force else None)
        decision.test = _test_scores(test_metric or metric, candidate, champion)
        if champion is not None and champion.version == candidate.version:
            decision.outcome, decision.reason = "unchanged", f"version {version} already holds @{alias}"
            return decision  # asked again (a repeated `register`): nothing to decide, nothing recorded
        comparison = _compare(model_name, candidate_scores, champion, min_gain, confidence, decision)
        if comparison is not None:
            decision.evidence = comparison.as_dict()
        if decision.forced:
            decision.outcome = "champion"
            decision.reason = f"forced by {action}: {decision.forced}" + (
                f"; rule 1 alone says {comparison.summary()}" if comparison else "")
        elif champion is None:
            decision.outcome = "champion" if experiment is None else "challenger"
            decision.reason = f"no current @{alias}" if experiment is None else (
                f"no current @{alias}, but {experiment} does not move @{alias} by itself: promote it with "
                f"`sscr promote --version {version}`")
        elif comparison is not None and comparison.better and experiment is None:
            decision.outcome, decision.reason = "champion", f"beats v{champion.version}: {comparison.summary()}"
        elif comparison is not None and comparison.better:
            decision.reason = (f"{experiment} does not move @{alias} by itself; rule 1 would promote it: "
                               f"{comparison.summary()}; `sscr promote --version {version}` does")
        elif comparison is not None:
            decision.reason = f"does not beat v{champion.version}: {comparison.summary()}"
        _apply(client, decision, alias, challenger_alias)
    return decision


def _test_scores(metric: str, candidate: Any, champion: Any) -> dict[str, float]:
    """The test-split scores of both versions (tags ``metric.<metric>``): reported with the decision, not decided on."""
    scores = {}
    for role, version in (("candidate", candidate), ("champion", champion)):
        value = version.tags.get(f"metric.{metric}") if version is not None else None
        with contextlib.suppress(TypeError, ValueError):
            scores[f"{role}_test_{metric}"] = round(float(value), 6)
    return scores


def _compare(model_name: str, candidate: SplitScores | None, champion: Any, min_gain: float, confidence: float,
             decision: PromotionDecision) -> Comparison | None:
    """Rule 1 against ``champion``; None (and the reason on ``decision``) when there is no evidence to compare."""
    if champion is None:
        return None
    if candidate is None:
        decision.reason = (f"v{decision.version} has no validation scores (registered without them): not compared "
                           f"with v{champion.version}; evaluate its checkpoint (`sscr evaluate`) and register it "
                           "again, or `sscr promote --force --reason ...`")
        return None
    try:
        held = validation_scores(model_name, champion)
        if held is None:
            decision.reason = (f"champion v{champion.version} has no validation scores (registered before they were "
                               "recorded): no paired comparison; promote explicitly with `sscr promote --version "
                               f"{decision.version} --force --reason ...`")
            return None
        decision.champion_score = held.mean
        return compare(candidate, held, min_gain, confidence)
    except EvidenceError as err:
        decision.reason = f"not compared with v{champion.version}: {err}"
        return None


def _apply(client: MlflowClient, decision: PromotionDecision, alias: str, challenger_alias: str) -> None:
    """Move the aliases and append the decision to the version's history (a new tag, never an old one)."""
    existing = decisions(decision.model_name, decision.version)
    last = existing[-1] if existing else None
    if last and last.get("outcome") == decision.outcome and last.get("action") == decision.action \
            and last.get("champion_version") == decision.champion_version and not decision.forced:
        # The same request again (a forced `dvc repro` re-running `register`): its decision stands as recorded.
        decision.number, decision.at = last["number"], last.get("at", "")
        return
    decision.number = (last["number"] if last else 0) + 1
    decision.at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if decision.outcome == "champion":
        client.set_registered_model_alias(decision.model_name, alias, decision.version)
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            if str(client.get_model_version_by_alias(decision.model_name, challenger_alias).version) == decision.version:
                client.delete_registered_model_alias(decision.model_name, challenger_alias)
    elif decision.outcome == "challenger":
        client.set_registered_model_alias(decision.model_name, challenger_alias, decision.version)
    client.set_model_version_tag(decision.model_name, decision.version, f"{DECISION_PREFIX}{decision.number}",
                                 decision.record())


# ---------------------------------------------------------------- registration


def register(run_id: str, metrics: Mapping[str, float], model_name: str = "sscr", model_uri: str | None = None,
             checkpoint_sha256: str = "", validation: SplitScores | None = None) -> str:
    """Register the run's logged model as a new version of ``model_name`` with test metrics (and checkpoint) as tags.

    ``validation``: the checkpoint's per-image validation scores, stored with the version
    (:func:`attach_validation`) for later decisions.
    """
    tags = {f"metric.{key}": f"{value:.6f}" for key, value in metrics.items() if np.isfinite(value)}
    tags["run_id"] = run_id
    if checkpoint_sha256:
        tags[VERSION_CHECKPOINT_TAG] = checkpoint_sha256
    version = str(mlflow.register_model(model_uri or f"runs:/{run_id}/model", model_name, tags=tags).version)
    if validation is not None:
        attach_validation(model_name, version, run_id, validation)
    integrity.record(model_name, version)  # the sha256 of its files, checked before every load
    return version


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
        raise RegistryError(f"no registered versions of {model_name!r} in {redact(tracking_uri())}; run `dvc repro` "
                            "(or `sscr register`) first")
    return str(max(int(v.version) for v in versions))


def default_candidate(model_name: str, challenger_alias: str = "challenger") -> str:
    """What ``sscr promote`` decides on without ``--version``: the ``@challenger``, else the newest version."""
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, challenger_alias).version)
    except mlflow.exceptions.MlflowException:
        return newest_version(model_name)


def committed_params(params_file: str | Path = "params.yaml") -> dict[str, Any] | None:
    """``params_file`` as committed (git ``HEAD``), parsed; None outside git or when it is not committed."""
    path = Path(params_file).resolve()
    try:
        shown = subprocess.run(["git", "show", f"HEAD:./{path.name}"], cwd=path.parent, capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0:
        return None
    return yaml.safe_load(shown.stdout) or {}


def _training_params(raw: Mapping[str, Any]) -> dict[str, Any]:
    flat = flatten(parse_params(dict(raw)))
    return {key: value for key, value in flat.items()
            if key.split(".")[0] in TRAINING_GROUPS and key not in WHERE_NOT_WHAT}


def experiment_reason(trained: Mapping[str, Any] | None, committed: Mapping[str, Any] | None,
                      environ: Mapping[str, str] | None = None) -> str | None:
    """Why registering this model may not move ``@champion`` by itself; None when it may (rule 1 decides).

    It may when the model was trained with the committed params (what it is trained with:
    data, masks, model, loss and training settings; not where it ran) and not inside a DVC
    experiment (``DVC_EXP_NAME``, which DVC sets for the stages of ``dvc exp run``, also
    with ``--temp`` or a queue: a Prefect run with parameters is one).
    """
    environ = os.environ if environ is None else environ
    if environ.get("DVC_EXP_NAME"):
        return f"the DVC experiment {environ['DVC_EXP_NAME']!r}"
    if trained is None:
        return "a model without its training params (conf.json)"
    if committed is None:
        return "a model of params that are not committed (no params.yaml in git HEAD)"
    try:
        ours, theirs = _training_params(trained), _training_params(committed)
    except ValueError as err:  # ConfigError included: a record of another version of the schema
        return f"a model whose params cannot be compared with the committed params.yaml ({err})"
    differing = sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))
    if not differing:
        return None
    shown = ", ".join(f"{key}={json.dumps(ours.get(key))} (committed {json.dumps(theirs.get(key))})"
                      for key in differing[:3])
    return f"a model trained with other params than the committed params.yaml ({shown}" + (
        f" and {len(differing) - 3} more)" if len(differing) > 3 else ")")


def register_evaluated(run_json: str | Path, metrics_json: str | Path, model_name: str = "sscr",
                       alias: str = "champion", metric: str = "PSNR", out: str | Path | None = None, *,
                       registry: RegistryConfig | None = None, params_file: str | Path | None = None,
                       action: str | None = None, scores_json: str | Path | None = None) -> PromotionDecision:
    """Stage ``register``: register the evaluated checkpoint's model with its scores, then decide by rule 1.

    The training record ``run.json``, the evaluation ``metrics.json`` (test scores, for
    reporting) and ``val_images.json`` (validation scores, for the decision, default:
    beside ``metrics.json``) must name the checkpoint ``run.json`` names, and agree on its
    SHA-256 (:func:`check_lineage`); the model is the one logged by the MLflow run
    tagged with it. The same checkpoint registered again reuses its version (idempotent).
    ``params_file``: the params file whose committed version (git ``HEAD``) decides
    whether this may move ``@champion`` (:func:`experiment_reason`; None = may not).
    ``out`` (the decision, JSON) is checked writable before the registry is touched, so a
    failure leaves the registry as it was.
    """
    registry = registry or RegistryConfig(model_name=model_name, alias=alias, metric=metric)
    stores.check_writable(configure(), "the MLflow tracking store")
    run_json, metrics_json = Path(run_json), Path(metrics_json)
    run = json.loads(run_json.read_text())
    checkpoint = Path(run.get("checkpoint") or run_json.parent / "model_best.pt")
    sha = check_lineage(run_json, metrics_json, checkpoint)
    metrics = flat_metrics(json.loads(metrics_json.read_text()))
    if registry.metric not in metrics:
        raise ValueError(f"{metrics_json} has no {registry.metric!r}; metrics are {sorted(metrics)}")
    scores_json = Path(scores_json) if scores_json else metrics_json.parent / SCORES_FILE
    scores = SplitScores.read(scores_json)
    if scores.checkpoint_sha256 != sha:
        raise LineageError(f"{scores_json} scored checkpoint {_short(scores.checkpoint_sha256)}, not {checkpoint} "
                           f"({_short(sha)}); evaluate the run's checkpoint (`dvc repro evaluate`), then register")
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
    conf = checkpoint.parent / "conf.json"
    experiment = experiment_reason(json.loads(conf.read_text()) if conf.is_file() else None,
                                   committed_params(params_file) if params_file is not None else None)
    version = version_of_checkpoint(model_name, sha)
    if version is None:
        version = register(trained.info.run_id, metrics, model_name, model_uri, checkpoint_sha256=sha,
                           validation=scores)
    elif SCORES_PATH_TAG not in get_version(model_name, version).tags:
        attach_validation(model_name, version, trained.info.run_id, scores)  # registered before scores were kept
    if action is None:
        action = "dvc repro (stage register)" if os.environ.get("DVC_STAGE") else "sscr register"
        if os.environ.get("DVC_EXP_NAME"):
            action = f"dvc exp run ({os.environ['DVC_EXP_NAME']})"
    decision = promote(model_name, version, registry.alias, registry.metric, challenger_alias=registry.challenger,
                       min_gain=registry.min_gain, confidence=registry.confidence, action=action,
                       experiment=experiment)
    if out is not None:
        write_text(out, json.dumps(decision.as_dict(), indent=2))
    return decision
