"""MLflow runs: the tracking store, runs with provenance, resilient metric logging, data-set inputs.

The logged model is :mod:`sscr.serving`'s, the model registry :mod:`sscr.registry`'s.

Default store: ``sqlite:///mlflow.db`` with artifacts in ``mlartifacts/``, both
in the working directory and git-ignored (a SQLite store elsewhere keeps its
``mlartifacts/`` beside its database file). ``MLFLOW_TRACKING_URI`` overrides
it, so a team's remote server (PostgreSQL backend, shared artifact store)
works unchanged. Credentials inside URIs are never logged or printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import mlflow
    import torch

# MLflow is imported inside the functions that use it: the training and inference code that imports this
# module then runs where MLflow is not installed (a GPU node; benchmarks/gpu_check.py), as long as it logs nothing.

from sscr import stores

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: Tag of a training run: the SHA-256 of its best checkpoint (updated whenever it improves). A checkpoint
#: carries no run id (it would make every retrain a different file), so this tag is how evaluation and
#: registration find the run that trained a checkpoint.
CHECKPOINT_TAG = "sscr.checkpoint_sha256"
#: Tag of a training run: the SHA-256 of its last checkpoint (finds the run to resume).
LAST_CHECKPOINT_TAG = "sscr.last_checkpoint_sha256"
#: Tag of a training run: the URI of the model it logged.
MODEL_URI_TAG = "sscr.model_uri"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def redact(text: str) -> str:
    """Hide ``user:password@`` in any URI inside ``text``."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", str(text))


def tracking_uri() -> str:
    """The tracking URI in use: ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.db`` in the working directory.

    The default is made absolute so that a process that changes directory
    (or MLflow's per-URI store cache) never mixes two stores. A relative SQLite path
    is the project's: under DVC (``DVC_ROOT``, which ``dvc exp run --temp`` and DVC's
    queue point at the project, not at their temporary copy) it is resolved there, so an
    experiment's runs and versions land in the project's store, not in a copy deleted
    after the run.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        base = Path(os.environ.get("DVC_ROOT") or Path.cwd())
        uri = f"sqlite:///{(base / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


_CHECKED: set[str] = set()  # store URIs already checked for damage in this process


def configure(uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at ``uri`` or :func:`tracking_uri`; returns the URI."""
    import mlflow

    uri = uri or tracking_uri()
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        # Hand credentials to MLflow the supported way, so no URL MLflow prints or stores carries them.
        os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username or "")
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parts.password or "")
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        uri = urllib.parse.urlunsplit(parts._replace(netloc=host))
    if uri.startswith("http"):
        # Fail over to the local fallback within seconds instead of MLflow's multi-minute retry loop.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    if uri not in _CHECKED:
        stores.check_sqlite(uri, "the MLflow tracking store")  # a damaged store is refused before any write
        _CHECKED.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


class NoTrackingStore(ValueError):
    """A model URI needs an MLflow store that is not there (reading must not create an empty one)."""


def require_store(purpose: str, uri: str | None = None) -> str:
    """The tracking URI to read ``purpose`` (e.g. ``models:/sscr@champion``) from; refuse one that is not there.

    Reading a registered model from a store that does not exist would make MLflow create an
    empty ``mlflow.db`` (and then not find the model); a server that does not answer would
    be retried for minutes. Checked: SQLite files, ``file:`` stores and local paths must
    exist, an HTTP(S) server must answer its ``/health``. Other databases are left to MLflow.
    """
    uri = uri or tracking_uri()
    shown = redact(uri)
    origin = ("the store named by MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
              else f"MLFLOW_TRACKING_URI is not set, so the default {DEFAULT_TRACKING_URI} in the working directory is used")
    fix = ("run from the project directory that holds mlflow.db, or set MLFLOW_TRACKING_URI to the store the model "
           "was registered in (e.g. MLFLOW_TRACKING_URI=sqlite:////path/to/project/mlflow.db or http://host:5000)")
    parts = urllib.parse.urlsplit(uri)
    missing = None
    if parts.scheme == "sqlite":
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        if database and database != ":memory:" and not database.startswith("file:") and not Path(database).is_file():
            missing = database
    elif parts.scheme in ("", "file"):
        path = urllib.parse.unquote(parts.path) if parts.scheme == "file" else uri
        if not Path(path).is_dir():
            missing = path
    elif parts.scheme in ("http", "https"):
        # urllib, not requests: the served model's code imports only what its requirements install
        from urllib.request import urlopen

        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        base = urllib.parse.urlunsplit(parts._replace(netloc=host)).rstrip("/")
        try:
            with urlopen(f"{base}/health", timeout=10):  # an HTTP error status raises too
                pass
        except (OSError, ValueError) as err:
            raise NoTrackingStore(f"{purpose} needs an MLflow tracking store, and the server {shown} ({origin}) does "
                                  f"not answer ({type(err).__name__}): start it, or {fix}") from None
    if missing is not None:
        raise NoTrackingStore(f"{purpose} needs an MLflow tracking store, and there is none: {missing} does not "
                              f"exist ({origin}); {fix}")
    return uri



def local_artifact_root(uri: str) -> Path:
    """Where a database store without an artifact server keeps artifacts: ``mlartifacts/`` beside the database.

    ``sqlite:///mlflow.db`` -> ``./mlartifacts``; ``sqlite:////data/mlflow.db`` -> ``/data/mlartifacts``
    (whatever the working directory); any other database (PostgreSQL, in-memory SQLite) ->
    ``./mlartifacts``.
    """
    from sqlalchemy.engine import make_url

    base = Path.cwd()
    if uri.startswith("sqlite:"):
        database = make_url(uri).database
        if database and database != ":memory:" and not database.startswith("file:"):
            base = Path(database).parent
    return (base / DEFAULT_ARTIFACT_DIR).resolve()


def experiment_id(name: str) -> str:
    """Id of experiment ``name``, created if needed (local store: artifacts under ``mlartifacts/``)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not tracking_uri().startswith(("http:", "https:", "databricks")):
        location = os.environ.get("MLFLOW_DEFAULT_ARTIFACT_ROOT") or local_artifact_root(tracking_uri()).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Created concurrently by another process.
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the code that runs: the working directory's repository, else the package's."""
    for where in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                    timeout=10, cwd=where).stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, check=True, timeout=10, cwd=where).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        return commit, bool(status.strip())
    return "", False


def run_tags(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Provenance tags: git commit and dirty flag, DVC stage and experiment, command line."""
    commit, dirty = git_commit()
    tags = {
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "dvc.stage": os.environ.get("DVC_STAGE", ""),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "prefect.flow_run": os.environ.get("SSCR_FLOW_RUN", ""),
        "command": redact(" ".join(sys.argv))[:500],
    }
    tags.update(extra or {})
    return {key: value for key, value in tags.items() if value}


DEVICE_TAG = "sscr.device"
"""Tag of a training run: the device it trained on, ``cpu`` or ``cuda:<n> (<GPU name>)``."""
EVALUATE_DEVICE_TAG = "sscr.evaluate.device"
"""Tag that ``sscr evaluate`` adds to the run it evaluates: the device the test split ran on."""
GPU_EXTRA_HINT = "pip install 'sscr[gpu]' (nvidia-ml-py)"


def nvml_status() -> str:
    """``nvml`` when NVML answers (MLflow's system metrics then log GPU utilisation and memory), else why not."""
    try:
        import pynvml
    except ImportError:
        return f"off: nvidia-ml-py is not installed; {GPU_EXTRA_HINT}"
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as err:
        return f"off: NVML did not start ({err})"
    return "nvml"


def device_tags(device: torch.device, prefix: str = DEVICE_TAG) -> dict[str, str]:
    """The run's device as tags: ``<prefix>`` = ``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``; on CUDA also
    ``<prefix without .device>.gpu_metrics`` (:func:`nvml_status`), so a run without GPU metrics says why."""
    import torch

    if device.type != "cuda":
        return {prefix: device.type}
    index = device.index if device.index is not None else torch.cuda.current_device()
    tags = {prefix: f"cuda:{index} ({torch.cuda.get_device_name(index)})"}
    tags[prefix.removesuffix(".device") + ".gpu_metrics"] = nvml_status()
    return tags


def log_params_flat(flat: Mapping[str, Any]) -> None:
    """Log flattened params (credentials redacted; values stringified, lists as JSON)."""
    import mlflow

    clean = {}
    for key, value in flat.items():
        text = json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)
        clean[key] = redact(text)[:6000]
    mlflow.log_params(clean)


def log_dropped(split: str, dropped: Mapping[str, Sequence[object]], limit: int = 20, run_id: str | None = None) -> None:
    """Record on the active run (or on ``run_id``) what a stage left out of ``split``, so no sample disappears
    without a trace.

    Metrics ``data.<split>.dropped`` (total) and ``data.<split>.dropped.<reason>``; the tag
    ``data.<split>.dropped`` lists the first ``limit`` files with their reasons ("none" when nothing was).
    Given ``run_id``, it logs through the client, so the run's status is left as it is.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    counts = {reason: len(items) for reason, items in dropped.items()}
    metrics = {f"data.{split}.dropped": float(sum(counts.values())),
               **{f"data.{split}.dropped.{reason}": float(n) for reason, n in counts.items()}}
    first = [str(item) for items in dropped.values() for item in items][:limit]
    more = sum(counts.values()) - len(first)
    tag = ("\n".join(first) + (f"\n... and {more} more" if more else ""))[:5000] if first else "none"
    if run_id is None:
        mlflow.log_metrics(metrics)
        mlflow.set_tag(f"data.{split}.dropped", tag)
        return
    client = MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, f"data.{split}.dropped", tag)


def dataset_digest(files: list[Path], extra: str = "") -> str:
    """Fingerprint of a data set from its file names and sizes (cheap at 450 GiB, stable across clones)."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(files):
        digest.update(f"{path.parent.name}/{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def log_dataset(name: str, root: Path, files: list[Path], context: str, extra: str = "") -> None:
    """Record the data set as an MLflow input (name, source path, digest) with a context (train/val/test)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # a local path resolves to two equivalent local-artifact sources
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(root).resolve()))
    dataset = MetaDataset(source=source, name=name, digest=dataset_digest(files, extra))
    mlflow.log_input(dataset, context=context)


def find_run_by_tag(key: str, value: str, experiment_names: list[str] | None = None) -> Any | None:
    """The most recent run (any status) whose tag ``key`` is ``value``, in the named experiments (default: all).

    How a checkpoint finds the run that trained it (its SHA-256 is a tag of that run); a
    deterministic retrain gives the same checkpoint, and then the latest such run is it.
    """
    from mlflow.tracking import MlflowClient

    if not value:
        return None
    client = MlflowClient()
    if experiment_names:
        found = [client.get_experiment_by_name(name) for name in experiment_names]
        ids = [experiment.experiment_id for experiment in found if experiment is not None]
    else:
        ids = [experiment.experiment_id for experiment in client.search_experiments()]
    if not ids:
        return None
    runs = client.search_runs(ids, filter_string=f"tags.`{key}` = '{value}'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


class MetricLogger:
    """Logs metrics and tags to one run; if the tracking server is unreachable, buffers and retries.

    Nothing is lost silently: failed metric batches are appended to a JSONL fallback
    file (reported once on stderr), retried at every later call and at
    :meth:`close`; :func:`replay_fallback` uploads what is left later. Tags are
    kept in memory and retried the same way.
    """

    def __init__(self, run_id: str, fallback: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.fallback = Path(fallback)
        self.client = MlflowClient()
        self._pending: list[dict[str, Any]] = []
        self._tags: dict[str, str] = {}
        self._warned = False

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the run (empty values skipped), sent now or with the next successful flush."""
        self._tags.update({key: str(value) for key, value in tags.items() if value})
        self.flush()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` (non-finite values are skipped: MLflow rejects them on some stores)."""
        stamp = int(time.time() * 1000)
        self._pending.extend(
            {"key": key, "value": float(value), "step": int(step), "timestamp": stamp}
            for key, value in metrics.items() if np.isfinite(value)
        )
        self.flush()

    def flush(self) -> bool:
        """Send pending metrics and tags; True when nothing is left pending."""
        if not self._pending and not self._tags:
            return True
        from mlflow.entities import Metric, RunTag

        batch = self._pending
        try:
            if self._tags:
                self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._tags.items()])
                self._tags = {}
            for start in range(0, len(batch), 500):
                self.client.log_batch(self.run_id, metrics=[Metric(**m) for m in batch[start:start + 500]])
        except Exception as err:  # noqa: BLE001 - any transport error must not stop training
            self._spill(batch, err)
            return False
        self._pending = []
        if self.fallback.exists():
            self.fallback.unlink()
        return True

    def _spill(self, batch: list[dict[str, Any]], err: Exception) -> None:
        if batch:
            self.fallback.parent.mkdir(parents=True, exist_ok=True)
            with self.fallback.open("w") as handle:  # rewrite: the file always mirrors what is pending
                for metric in batch:
                    handle.write(json.dumps({"run_id": self.run_id, **metric}) + "\n")
        if not self._warned:
            print(f"sscr: MLflow tracking at {redact(tracking_uri())} is unreachable ({type(err).__name__}); "
                  f"training goes on, metrics are kept in {self.fallback} and retried", file=sys.stderr)
            self._warned = True

    def close(self) -> bool:
        """Final flush; reports the fallback file if the server is still unreachable."""
        done = self.flush()
        if not done and self._pending:
            print(f"sscr: {len(self._pending)} metric values could not reach MLflow; they are in "
                  f"{self.fallback}; upload them later with `sscr sync-metrics {self.fallback}`", file=sys.stderr)
        if not done and self._tags:
            print(f"sscr: the run's tags could not reach MLflow: {', '.join(f'{k}={v}' for k, v in self._tags.items())}",
                  file=sys.stderr)
        return done


def replay_fallback(path: str | Path) -> int:
    """Upload the metrics of a fallback JSONL file to their runs; returns how many were sent."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    path = Path(path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    client = MlflowClient()
    by_run: dict[str, list[Metric]] = {}
    for row in rows:
        by_run.setdefault(row.pop("run_id"), []).append(Metric(**row))
    for run_id, metrics in by_run.items():
        for start in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[start:start + 500])
    path.unlink()
    return len(rows)


@contextlib.contextmanager
def training_run(
    experiment: str,
    run_id: str | None = None,
    run_name: str | None = None,
    nested: bool = False,
    system_metrics: bool = True,
    tags: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, with ``run_id``) a run with provenance tags and system metrics.

    On an exception the run ends FAILED (KeyboardInterrupt: KILLED) and the
    exception propagates; otherwise it ends FINISHED.
    """
    import mlflow

    configure()
    exp_id = experiment_id(experiment)
    run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id, run_name=run_name,
                           nested=nested, log_system_metrics=system_metrics, tags=None if run_id else tags)
    try:
        if not run_id:
            mlflow.set_tags(run_tags())
        yield run
    except KeyboardInterrupt:
        _end_run("KILLED")
        raise
    except BaseException:
        _end_run("FAILED")
        raise
    else:
        _end_run("FINISHED")


def _end_run(status: str) -> None:
    """End the active run; if the server is unreachable, say so (the run stays RUNNING there) and go on."""
    import mlflow

    try:
        mlflow.end_run(status=status)
    except Exception as err:  # noqa: BLE001 - never let bookkeeping turn a result into a crash
        print(f"sscr: could not mark the MLflow run {status} ({type(err).__name__}); the tracking server at "
              f"{redact(tracking_uri())} is unreachable. Its metrics are kept locally; see above.", file=sys.stderr)
        # end_run popped the run before failing, but left its system-metrics thread running: stop it.
        with contextlib.suppress(Exception):
            from mlflow.tracking import fluent

            monitors = fluent.run_id_to_system_metrics_monitor
            run_id = fluent._last_active_run_id.get()
            if run_id in monitors:
                monitors.pop(run_id).finish()
