"""The app ``sscr serve`` runs under uvicorn: MLflow's scoring server behind :class:`sscr.serving.RequestGuard`.

What ``mlflow models serve`` runs (``mlflow.pyfunc.scoring_server.app``), built the same way from the
model directory MLflow's command environment names, wrapped so that an oversize or too deeply nested
request is refused before MLflow reads and parses it. Importing this module loads the model.
"""

from __future__ import annotations

import os

from mlflow.pyfunc import scoring_server

from sscr.serving import RequestGuard

app = RequestGuard(scoring_server.init(
    scoring_server.load_model_with_mlflow_config(os.environ[scoring_server._SERVER_MODEL_PATH])))
