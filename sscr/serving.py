"""The logged model: SSCR as an MLflow pyfunc, how it is logged, and how ``sscr infer`` loads a model.

MLflow stores the model "from code" (:mod:`sscr.pyfunc_model` instantiates
:class:`SSCRPyfunc`), so nothing is unpickled at load time; the weights come
from the checkpoint artifact, loaded with ``weights_only=True``. A model for
inference comes from a checkpoint path or from any MLflow model URI.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from torch import nn

from sscr import tracking
from sscr.bands import S1_CHANNELS, S2_CHANNELS
from sscr.checkpoint import build_from_checkpoint
from sscr.config import DEFAULT_MASK_KIND
from sscr.models import for_inference, select_device
from sscr.predict import predict_arrays

# MLflow warns at class definition that predict() has no type hints (they are left out on purpose, since
# tensor-dict inputs have none MLflow supports) and resets the warning filters while doing so: mute display.
_show, warnings.showwarning = warnings.showwarning, lambda *args, **kwargs: None
try:

    class SSCRPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc wrapper: cloudy S2 (+ S1) in [0, 1] -> cloud-free S2 (and variance).

        Input: a dict of arrays, ``cloudy`` (B, 13, H, W) and, for SAR models,
        ``sar`` (B, 2, H, W), both normalised as the benchmark does (S2 DN / 10000,
        S1 dB mapped from [-25, 0] to [0, 1]). The cloud mask the model was
        trained with is computed from ``cloudy`` with s2cloudless. Output: a dict
        with ``mean`` (B, 13, H, W) in [0, 1] and, for probabilistic models, ``var``.
        """

        # Untyped on purpose: MLflow turns type hints on these methods into a (here wrong) input schema.
        def load_context(self, context):
            model, state = build_from_checkpoint(context.artifacts["checkpoint"])
            self.model = for_inference(model, "cpu")
            self.mask_kind = state.get("config", {}).get("masks", {}).get("use")

        def predict(self, context, model_input, params=None):
            cloudy = np.asarray(model_input["cloudy"], dtype=np.float32)
            sar = model_input.get("sar") if hasattr(model_input, "get") else None
            sar = np.asarray(sar, dtype=np.float32) if sar is not None else None
            return predict_arrays(self.model, cloudy, sar, mask_kind=self.mask_kind)
finally:
    warnings.showwarning = _show


def _tensor_schema(arrays: Mapping[str, np.ndarray]) -> Any:
    """A tensor schema with free batch, height and width: (-1, bands, -1, -1) per named array."""
    from mlflow.types.schema import Schema, TensorSpec

    return Schema([TensorSpec(np.dtype(np.float32), (-1, a.shape[1], -1, -1), name) for name, a in arrays.items()])


def log_model(checkpoint: Path, use_sar: bool, example_size: int = 32) -> str:
    """Log the model as an MLflow pyfunc with signature and input example; returns its model URI."""
    from mlflow.models import ModelSignature

    rng = np.random.default_rng(0)
    example = {"cloudy": rng.uniform(0, 0.3, (1, S2_CHANNELS, example_size, example_size)).astype(np.float32)}
    if use_sar:
        example["sar"] = rng.uniform(0.2, 0.8, (1, S1_CHANNELS, example_size, example_size)).astype(np.float32)
    wrapper = SSCRPyfunc()
    wrapper.load_context(type("Context", (), {"artifacts": {"checkpoint": str(checkpoint)}})())
    output = wrapper.predict(None, example)
    signature = ModelSignature(inputs=_tensor_schema(example), outputs=_tensor_schema(output))
    # Models from code: the logged model is this package's source file, not a pickled object.
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={"checkpoint": str(checkpoint)}, signature=signature, input_example=example,
    )
    return info.model_uri


def load_model(source: str | Path, device: str = "auto") -> tuple[nn.Module, str | None]:
    """A model ready for inference (eval mode, on ``device``) and the cloud-mask kind it was trained with.

    ``source`` is a checkpoint written by ``sscr train`` (``model_best.pt``) or an
    MLflow model URI (``models:/sscr@champion``, ``models:/sscr/3``,
    ``runs:/<run id>/model``) resolved against the tracking store of
    :func:`sscr.tracking.configure` (``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``).
    The mask kind is the checkpoint's ``masks.use`` parameter.
    """
    text = str(source)
    if "://" in text or text.startswith(("models:/", "runs:/")):
        model, mask_kind = _load_mlflow_model(text)
    else:
        model, state = build_from_checkpoint(text)
        mask_kind = _mask_kind_of(state)
    return for_inference(model, select_device(device)), mask_kind


def _mask_kind_of(state: dict[str, Any]) -> str | None:
    masks = (state.get("config") or {}).get("masks") or {}
    return masks.get("use", DEFAULT_MASK_KIND)


def _load_mlflow_model(uri: str) -> tuple[nn.Module, str | None]:
    tracking.configure()
    try:
        wrapper = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(
            f"cannot load MLflow model {uri!r} from tracking store {tracking.redact(tracking.tracking_uri())}: "
            f"{str(err).splitlines()[0]}; check the name/alias/run id (`mlflow models` UI) or set "
            "MLFLOW_TRACKING_URI to the store the model was registered in"
        ) from None
    if not hasattr(wrapper, "model"):
        raise ValueError(f"MLflow model {uri!r} is not an SSCR model (logged by sscr.serving.log_model)")
    return wrapper.model, getattr(wrapper, "mask_kind", DEFAULT_MASK_KIND)
