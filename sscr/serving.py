"""The logged model: SSCR as an MLflow pyfunc with a request contract, how it is logged, and how it is loaded.

MLflow stores the model "from code" (:mod:`sscr.pyfunc_model` instantiates
:class:`SSCRPyfunc`), so nothing is unpickled at load time; the weights come from the
checkpoint artifact, loaded with ``weights_only=True``. The logged model carries what a
fresh environment needs: a wheel of this package (its source at log time) and
``requirements.txt`` pinning torch and the other libraries the model imports
(:func:`serving_requirements`). A model for inference comes from a checkpoint path or
from an MLflow model URI; registered versions are checked against the sha256 of their
files recorded at registration before anything of them is imported
(:mod:`sscr.integrity`).

The request contract (:meth:`SSCRPyfunc.predict`, README "Serving"): ``cloudy``
(B, 13, H, W) and, for SAR models, ``sar`` (B, 2, H, W), numbers in [0, 1] or NaN
(no data), at most :data:`MAX_REQUEST_PIXELS` pixels (B x H x W) per request.
Violations are refused with HTTP 400 (413 for size) and a one-line reason, raised as
:class:`RequestError`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, REQUEST_LIMIT_EXCEEDED
from torch import nn

from sscr import integrity, tracking
from sscr.bands import S1_CHANNELS, S1_DB_RANGE, S2_CHANNELS, S2_DN_MAX
from sscr.checkpoint import BEST_CHECKPOINT, CheckpointError, build_from_checkpoint
from sscr.config import DEFAULT_MASK_KIND
from sscr.fsutil import atomic_path
from sscr.models import for_inference, select_device
from sscr.predict import predict_arrays

log = logging.getLogger(__name__)

MAX_REQUEST_PIXELS = 512 * 512
"""Pixels (B x H x W) one request may hold: one 512 x 512 patch or four of 256 x 256 px. Larger areas: ``sscr infer``,
which tiles a scene of any size with bounded memory. At this size a request takes seconds on 2 CPU cores, well under
MLflow's 60 s request timeout (``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``)."""
MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""Largest request body ``sscr serve`` reads: refused with 413 from its Content-Length before a byte of it is read
(or once that many bytes of a chunked upload arrived), so it never reaches MLflow's JSON parser, which holds about
6x the body in memory. It carries :data:`MAX_REQUEST_PIXELS` of S2 and S1 at up to 16 characters per number
(6 decimals; L1C DN / 10000 has 4); full float32 ``repr``s of that many pixels (76 MiB) exceed it."""
MAX_JSON_DEPTH = 16
"""Deepest nesting of a JSON request ``sscr serve`` passes on (a request is 6 deep: the object, ``inputs``, and
(B, C, H, W)); deeper is refused with 400 before parsing, where MLflow answered 500 with a traceback."""
SERVING_DISTRIBUTIONS = ("torch", "mlflow", "numpy", "scipy", "pydantic", "PyYAML", "s2cloudless")
"""The libraries the logged model's code imports (tests/test_serving.py checks this against the imports)."""
_WHEEL_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


class RequestError(mlflow.exceptions.MlflowException):
    """A request the served model refuses: an HTTP status (400, or 413 for size) and a one-line reason.

    MLflow's scoring server answers an MlflowException raised by the model with its
    message and status code, but first rewrites the message to
    ``Failed to predict data '<the whole request>'``: the message here ignores that
    rewrite, so the answer is the reason alone, never the request's data.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        self._reason = reason
        self.status = status
        super().__init__(reason, error_code=REQUEST_LIMIT_EXCEEDED if status == 413 else INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:  # type: ignore[override]
        """The one-line reason."""
        return self._reason

    @message.setter
    def message(self, _value: str) -> None:
        pass  # the scoring server's rewrite would echo the request's data

    def get_http_status_code(self) -> int:
        """The HTTP status of the answer (MLflow maps no error code to 413, so it is kept here)."""
        return self.status


def _value_range(name: str, values: np.ndarray) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def _as_array(name: str, value: Any, channels: int, what: str) -> np.ndarray:
    """A (B, channels, H, W) float32 array from the request's ``name``, or RequestError saying why not."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a nested list of numbers (B, {channels}, H, W) {what}") from None
    if array.ndim != 4 or array.shape[1] != channels:
        raise RequestError(f"{name} has shape {tuple(array.shape)}, expected (B, {channels}, H, W) {what}")
    if 0 in array.shape:
        raise RequestError(f"{name} has shape {tuple(array.shape)}: it holds no pixel")
    if np.isinf(array).any():
        raise RequestError(f"{name} holds infinite values; use NaN for no data")
    return array


def check_request(model_input: Any, use_sar: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The request contract: (cloudy, sar) arrays ready for the model, or :class:`RequestError` with the reason."""
    if not isinstance(model_input, Mapping):
        raise RequestError('send {"inputs": {"cloudy": [...], "sar": [...]}}: named arrays, not a table or a list')
    expected = {"cloudy", "sar"} if use_sar else {"cloudy"}
    unknown = sorted(set(model_input) - {"cloudy", "sar"})
    if unknown:
        raise RequestError(f"unknown input(s) {', '.join(unknown)}; expected {' and '.join(sorted(expected))}")
    if "cloudy" not in model_input:
        raise RequestError(f"missing input cloudy (B, {S2_CHANNELS}, H, W), S2 L1C reflectance in [0, 1]")
    cloudy = _as_array("cloudy", model_input["cloudy"], S2_CHANNELS, "S2 L1C reflectance in [0, 1]")
    batch, _, height, width = cloudy.shape
    if batch * height * width > MAX_REQUEST_PIXELS:
        raise RequestError(
            f"request of {batch} x {height} x {width} = {batch * height * width:,} px exceeds the limit of "
            f"{MAX_REQUEST_PIXELS:,} px (B x H x W, e.g. one 512 x 512 patch): send smaller patches, or run "
            "`sscr infer` on the scene (any size, tiled)", status=413)
    span = _value_range("cloudy", cloudy)
    if span is None:
        raise RequestError("cloudy is NaN everywhere: there is no S2 pixel to predict from")
    if span[0] < 0 or span[1] > 1:
        hint = " (looks like L1C DN: divide by 10000)" if span[1] > 1 else ""
        raise RequestError(f"cloudy values span {span[0]:.4g}..{span[1]:.4g}, expected reflectance in [0, 1]{hint}")
    if not use_sar:
        if "sar" in model_input:
            log.info("this model takes no SAR: the request's sar is ignored")
        return cloudy, None
    if "sar" not in model_input:
        raise RequestError(f"this model fuses SAR: missing input sar (B, {S1_CHANNELS}, H, W), S1 VV and VH "
                           "normalised to [0, 1] as (dB + 25) / 25")
    sar = _as_array("sar", model_input["sar"], S1_CHANNELS, "S1 VV, VH normalised to [0, 1] as (dB + 25) / 25")
    if sar.shape[0] != batch or sar.shape[2:] != cloudy.shape[2:]:
        raise RequestError(f"sar has shape {tuple(sar.shape)} but cloudy {tuple(cloudy.shape)}: "
                           f"expected sar ({batch}, {S1_CHANNELS}, {height}, {width}), the same batch and pixels")
    empty = [index for index in range(batch) if np.isnan(sar[index]).all()]
    if empty:
        raise RequestError(f"sar is NaN everywhere in sample(s) {', '.join(map(str, empty[:5]))}: the model would "
                           "ignore SAR there; send S1 for the same area, or use a model without SAR")
    span = _value_range("sar", sar)
    if span is not None and (span[0] < 0 or span[1] > 1):
        hint = " (looks like dB: send (dB + 25) / 25, clipped to [0, 1])" if span[0] < 0 else ""
        raise RequestError(f"sar values span {span[0]:.4g}..{span[1]:.4g}, expected [0, 1]{hint}")
    return cloudy, sar


# ---------------------------------------------------------------- the guard in front of MLflow's scoring server

_JSON_KEPT = b'[]{}"\\/bfnrtu'  # brackets, quotes, and what may follow a backslash inside a string
_JSON_DROPPED = bytes(sorted(set(range(256)) - set(_JSON_KEPT)))
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPENING, _CLOSING = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def json_depth(body: bytes) -> int:
    """How deep the JSON text ``body`` nests (``{"a": [1]}``: 2), without parsing it.

    Everything but brackets, quotes and escapes is dropped (``bytes.translate``), strings are cut out,
    and the depth is a cumulative sum over what is left: 0.2 s for 76 MiB of numbers (on a loaded
    machine), and no recursion whatever the depth.
    """
    skeleton = np.frombuffer(_JSON_STRING.sub(b"", body.translate(None, _JSON_DROPPED)), np.uint8)
    steps = np.isin(skeleton, _OPENING).astype(np.int64) - np.isin(skeleton, _CLOSING)
    return int(np.cumsum(steps).max(initial=0))


class RequestGuard:
    """ASGI middleware that ``sscr serve`` puts in front of MLflow's scoring server.

    MLflow reads and parses a request body whole before the model sees it; this guard refuses
    a body over :data:`MAX_REQUEST_BYTES` with 413 from its Content-Length (or while a chunked
    upload arrives) and a JSON body nested deeper than :data:`MAX_JSON_DEPTH` with 400, in one
    line (``{"error_code": ..., "message": ...}`` as MLflow answers), and passes anything else on
    unchanged.
    """

    def __init__(self, app: Any, max_bytes: int = MAX_REQUEST_BYTES, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    def _too_large(self, size: str) -> tuple[int, str]:
        return 413, (f"the request body has {size} bytes, above the limit of {self.max_bytes:,} "
                     f"({self.max_bytes // 2**20} MiB): send fewer pixels per request (at most {MAX_REQUEST_PIXELS:,}, "
                     "numbers of at most 6 decimals), or run `sscr infer` on the scene (any size, tiled)")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Check an HTTP POST's size and nesting, then hand it (already read) to MLflow's app."""
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        if declared:
            if not declared.isdigit():
                await _answer(send, 400, "the Content-Length header is not a number")
                return
            if int(declared) > self.max_bytes:
                await _answer(send, *self._too_large(f"{int(declared):,}"))
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _answer(send, *self._too_large(f"more than {self.max_bytes:,}"))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b"json" in headers.get(b"content-type", b"") and json_depth(body) > self.max_depth:
            await _answer(send, 400, f"the JSON body nests deeper than {self.max_depth} levels (a request is 6: "
                                     '{"inputs": {"cloudy": [B][13][H][W]}}); refused unparsed')
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _answer(send: Any, status: int, message: str) -> None:
    """An MLflow-shaped error answer: ``{"error_code": ..., "message": ...}`` and the status; the connection closes."""
    code = "REQUEST_LIMIT_EXCEEDED" if status == 413 else "INVALID_PARAMETER_VALUE"
    payload = json.dumps({"error_code": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


# MLflow warns at class definition that predict() has no type hints (they are left out on purpose, since
# tensor-dict inputs have none MLflow supports) and resets the warning filters while doing so: mute display.
_show, warnings.showwarning = warnings.showwarning, lambda *args, **kwargs: None
try:

    class SSCRPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc wrapper: cloudy S2 (+ S1) in [0, 1] -> cloud-free S2 (and variance).

        Input: a dict of arrays, ``cloudy`` (B, 13, H, W) and, for SAR models, ``sar``
        (B, 2, H, W), both normalised as the benchmark does (S2 DN / 10000, S1 dB mapped
        from [-25, 0] to [0, 1]); NaN means no data. Checked by :func:`check_request`.
        The cloud mask the model was trained with is computed from ``cloudy`` with
        s2cloudless, only for models that take one. Output: a dict with ``mean``
        (B, 13, H, W) in [0, 1] and, for probabilistic models, ``var``.
        """

        # Untyped on purpose: MLflow turns type hints on these methods into a (here wrong) input schema.
        def load_context(self, context):
            model, state = build_from_checkpoint(context.artifacts["checkpoint"])
            self.model = for_inference(model, "cpu")
            self.mask_kind = state.get("config", {}).get("masks", {}).get("use")

        def predict(self, context, model_input, params=None):
            cloudy, sar = check_request(model_input, bool(self.model.use_sar))
            return predict_arrays(self.model, cloudy, sar, mask_kind=self.mask_kind)
finally:
    warnings.showwarning = _show


def _tensor_schema(arrays: Mapping[str, np.ndarray]) -> Any:
    """A tensor schema with free batch, height and width: (-1, bands, -1, -1) per named array."""
    from mlflow.types.schema import Schema, TensorSpec

    return Schema([TensorSpec(np.dtype(np.float32), (-1, a.shape[1], -1, -1), name) for name, a in arrays.items()])


# ---------------------------------------------------------------- what a fresh environment needs


def _pin(distribution: str) -> str:
    """``name==version`` of the installed distribution; torch without its local build label (+cpu, +cu121)."""
    version = importlib.metadata.version(distribution)
    if distribution == "torch":
        version = version.split("+")[0]
    return f"{distribution}=={version}"


def serving_requirements() -> list[str]:
    """Pinned requirements of the logged model's code (the wheel itself is added by :func:`log_model`)."""
    return [_pin(name) for name in SERVING_DISTRIBUTIONS]


def _source_digest(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _wheel_cache() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sscr" / "wheels"


def build_wheel(out_dir: str | Path | None = None) -> Path:
    """A wheel of this package as it is now, version ``<version>+g<source digest>``, without dependencies.

    Its dependencies are the model's ``requirements.txt`` (:func:`serving_requirements`), so a
    serving environment gets torch and what the model imports, not the training stack (DVC,
    Prefect, Optuna). Built with pip and setuptools from a copy of the package's files, so
    it works from a checkout and from an installed package alike; kept in ``out_dir``
    (default: ``~/.cache/sscr/wheels``), where a wheel of the same source is reused.
    """
    from sscr import __version__

    package = Path(__file__).resolve().parent
    version = f"{__version__}+g{_source_digest(package)}"
    out_dir = Path(out_dir) if out_dir is not None else _wheel_cache()
    built = sorted(out_dir.glob(f"sscr-{version}-*.whl"))
    if built:
        return built[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sscr-wheel-") as build:
        shutil.copytree(package, Path(build) / "src" / "sscr", ignore=_WHEEL_IGNORE)
        (Path(build) / "src" / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "sscr"\nversion = "{version}"\nrequires-python = ">=3.11"\ndependencies = []\n\n'
            '[tool.setuptools.packages.find]\ninclude = ["sscr*"]\n\n'
            '[tool.setuptools.package-data]\n"sscr" = ["splits.json"]\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
             "-w", str(Path(build) / "dist"), str(Path(build) / "src")], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"building the sscr wheel failed: {done.stderr.strip()[-1000:]}")
        wheel = next((Path(build) / "dist").glob("sscr-*.whl"))
        with atomic_path(out_dir / wheel.name) as partial:  # a wheel in the cache is complete
            shutil.copyfile(wheel, partial)
    return out_dir / wheel.name


def log_model(checkpoint: Path, use_sar: bool, example_size: int = 32) -> str:
    """Log the model as an MLflow pyfunc (output signature, input example, wheel, pinned requirements); its URI.

    The input is checked by the model itself (:func:`check_request`), not by an input
    signature: MLflow's schema enforcement answers a wrong shape with the whole request
    echoed back.
    """
    from mlflow.models import ModelSignature

    rng = np.random.default_rng(0)
    example = {"cloudy": rng.uniform(0, 0.3, (1, S2_CHANNELS, example_size, example_size)).astype(np.float32)}
    if use_sar:
        example["sar"] = rng.uniform(0.2, 0.8, (1, S1_CHANNELS, example_size, example_size)).astype(np.float32)
    wrapper = SSCRPyfunc()
    wrapper.load_context(type("Context", (), {"artifacts": {"checkpoint": str(checkpoint)}})())
    output = wrapper.predict(None, example)
    signature = ModelSignature(inputs=None, outputs=_tensor_schema(output))
    wheel = build_wheel()
    # Models from code: the logged model is this package's source file, not a pickled object.
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={"checkpoint": str(checkpoint), "sscr_wheel": str(wheel)}, signature=signature,
        input_example=example, pip_requirements=[*serving_requirements(), f"artifacts/{wheel.name}"],
    )
    return info.model_uri


# ---------------------------------------------------------------- loading a model for `sscr infer`


@dataclass
class LoadedModel:
    """A model ready for inference and where it came from (for the outputs' tags)."""

    model: nn.Module
    mask_kind: str | None
    """The cloud mask it was trained with (the checkpoint's ``masks.use``)."""
    source: str
    """The checkpoint path or the model URI as given."""
    version: str | None = None
    """Registered version (``NAME/VERSION``), run id, or the checkpoint's sha256 (first 16 hex digits)."""
    files: list[Path] = field(default_factory=list)
    """Local files it was read from (outputs must not overwrite them)."""


def load_model(source: str | Path, device: str = "auto") -> LoadedModel:
    """A model ready for inference (eval mode, on ``device``), the cloud-mask kind it was trained with, its origin.

    ``source`` is a checkpoint written by ``sscr train`` (``model_best.pt``), a run directory
    (its ``model_best.pt``: ``sscr train`` and ``sscr import-published`` write them) or an
    MLflow model URI (``models:/sscr@champion``, ``models:/sscr/3``,
    ``runs:/<run id>/model``) resolved against the tracking store of
    :func:`sscr.tracking.configure` (``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``).
    A registered version is downloaded and checked against the sha256 of its files
    recorded at registration before its stored code is imported
    (:func:`sscr.integrity.fetch_verified`); ``runs:/`` URIs have no such record.
    A local checkpoint touches no tracking store.
    """
    text = str(source)
    if "://" in text or text.startswith(("models:/", "runs:/")):
        loaded = _load_mlflow_model(text)
        loaded.model = for_inference(loaded.model, select_device(device))
        return loaded
    path = Path(text)
    if path.is_dir() and (path / BEST_CHECKPOINT).is_file():  # a run directory stands for its best weights
        path = path / BEST_CHECKPOINT
    if path.is_dir():
        hint = (f"{path} is an MLflow model directory: register it and pass models:/NAME/VERSION, or pass its "
                f"checkpoint {path / 'artifacts' / 'model_best.pt'}") if (path / "MLmodel").is_file() else (
            f"pass the checkpoint file inside it, e.g. {path / 'model_best.pt'}")
        raise CheckpointError(f"--model {path} is a directory, not a checkpoint: {hint}")
    if not path.exists():
        raise CheckpointError(f"--model {path} does not exist: pass a checkpoint written by `sscr train` "
                              "(results/<experiment>/model_best.pt) or a model URI such as models:/sscr@champion")
    model, state = build_from_checkpoint(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return LoadedModel(for_inference(model, select_device(device)), _mask_kind_of(state), str(path),
                       f"sha256:{digest}", [path])


def _mask_kind_of(state: dict[str, Any]) -> str | None:
    masks = (state.get("config") or {}).get("masks") or {}
    return masks.get("use", DEFAULT_MASK_KIND)


def _load_mlflow_model(uri: str) -> LoadedModel:
    tracking.configure(tracking.require_store(uri))  # before MLflow, which would create an empty mlflow.db
    where = f"tracking store {tracking.redact(tracking.tracking_uri())}"
    with tempfile.TemporaryDirectory(prefix="sscr-model-") as directory:
        try:
            resolved = integrity.registered_version(uri)
            if resolved is not None:
                local = integrity.fetch_verified(f"models:/{resolved[0]}/{resolved[1]}", directory)
                version = f"{resolved[0]}/{resolved[1]}"
            else:
                log.warning("%s is not a registered version: its files are not checked against a registry record "
                            "(sscr.integrity); register it to have them checked", uri)
                local, version = uri, uri.removeprefix("runs:/").split("/")[0]
            wrapper = mlflow.pyfunc.load_model(str(local)).unwrap_python_model()
        except mlflow.exceptions.MlflowException as err:
            raise ValueError(
                f"cannot load MLflow model {uri!r} from {where}: {str(err).splitlines()[0]}; check the name/alias/"
                "run id (`mlflow models` UI) or set MLFLOW_TRACKING_URI to the store the model was registered in"
            ) from None
    if not hasattr(wrapper, "model"):
        raise ValueError(f"MLflow model {uri!r} is not an SSCR model (logged by sscr.serving.log_model)")
    return LoadedModel(wrapper.model, getattr(wrapper, "mask_kind", DEFAULT_MASK_KIND), uri, version)


# ---------------------------------------------------------------- serving a registered version


def serve_command(model_dir: Path, host: str, port: int, workers: int = 1) -> tuple[list[str], dict[str, str]]:
    """The server command line and its environment for a verified local copy of a model.

    What ``mlflow models serve --env-manager local`` runs (uvicorn on MLflow's scoring server, the
    environment from MLflow's own :func:`mlflow.pyfunc.scoring_server.get_cmd`), with the app
    :mod:`sscr.serving_app`: the same scoring server behind :class:`RequestGuard`.
    """
    from mlflow.pyfunc import scoring_server

    _, env = scoring_server.get_cmd(str(model_dir), port, host, None, workers)
    command = [sys.executable, "-m", "uvicorn", "--host", host, "--port", str(port), "--workers", str(workers),
               "sscr.serving_app:app"]
    return command, env


def serve(uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1) -> int:
    """Serve a registered version after checking its files: MLflow's scoring server on the checked local copy.

    The version's files are downloaded and compared with the sha256 recorded at
    registration (:func:`sscr.integrity.fetch_verified`) before MLflow imports the
    stored ``pyfunc_model.py``; the server then loads that checked copy, not the store,
    behind :class:`RequestGuard` (:func:`serve_command`). Returns the server's exit code.
    """
    tracking.configure(tracking.require_store(uri))  # before MLflow, which would create an empty mlflow.db
    with tempfile.TemporaryDirectory(prefix="sscr-serve-") as directory:
        local = integrity.fetch_verified(uri, directory)
        print(f"sscr: {uri}: every file matches the registry's sha256 record; serving {local} on "
              f"http://{host}:{port}", file=sys.stderr, flush=True)
        command, env = serve_command(local, host, port, workers)
        server = subprocess.Popen(command, env=env)
        # stopping this command stops the server (then the checked copy is removed)
        previous = signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            return server.wait()
        except KeyboardInterrupt:
            server.terminate()
            return server.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- a request body from a patch


def request_body(cloudy_dn: np.ndarray, sar_db: np.ndarray | None = None) -> dict[str, Any]:
    """The request of the serving contract for one patch: ``{"inputs": {"cloudy": [1][13][H][W], "sar": ...}}``.

    ``cloudy_dn``: (13, H, W) L1C DN of the training convention (a SEN12MS-CR patch; for
    baseline >= 04.00 remove the offset first) -> reflectance DN / 10000 in [0, 1];
    ``sar_db``: (2, H, W) VV, VH in dB -> (dB + 25) / 25 after clipping to [-25, 0] dB, NaN
    (no SAR) sent as null. Values are rounded to what they carry (4 decimals of reflectance
    are whole DN; 6 of SAR), which keeps the JSON small. Checked with :func:`check_request`.
    """
    cloudy = np.round(np.clip(np.asarray(cloudy_dn, np.float64), 0, S2_DN_MAX) / S2_DN_MAX, 4)[None]
    inputs: dict[str, Any] = {"cloudy": cloudy}
    if sar_db is not None:
        low, high = S1_DB_RANGE
        sar = np.round((np.clip(np.asarray(sar_db, np.float64), low, high) - low) / (high - low), 6)[None]
        inputs["sar"] = sar
    check_request(inputs, use_sar=sar_db is not None)

    def nested(array: np.ndarray) -> list:
        return np.where(np.isnan(array), None, array).tolist()  # NaN -> null: standard JSON

    return {"inputs": {key: nested(value) for key, value in inputs.items()}}


def write_request(out: str | Path, s2: str | Path, s1: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the request body for the patch ``s2`` (13-band cloudy GeoTIFF of DN) and ``s1`` (2-band dB) to ``out``.

    Refused: patches of different sizes, a patch above the request limit, and an existing
    ``out`` unless ``overwrite``. Written atomically.
    """
    import json

    # here, not at the top: the served model's environment has no rasterio
    from sscr.data.io import read_raster

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: remove it, choose another --out, or pass --overwrite")
    cloudy_dn, cloudy_info = read_raster(s2, S2_CHANNELS, "S2 cloudy")
    sar_db = None
    if s1 is not None:
        sar_db, sar_info = read_raster(s1, S1_CHANNELS, "S1")
        if (sar_info.width, sar_info.height) != (cloudy_info.width, cloudy_info.height):
            raise ValueError(f"S1 {s1} is {sar_info.width} x {sar_info.height} px but S2 {s2} "
                             f"{cloudy_info.width} x {cloudy_info.height}: pass the two files of one patch")
    try:
        body = request_body(cloudy_dn, sar_db)
    except RequestError as err:
        raise ValueError(f"{s2}: {err._reason}") from None
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(body, separators=(",", ":")), encoding="utf-8")
    return out
