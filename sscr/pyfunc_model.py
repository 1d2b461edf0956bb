"""The MLflow "model from code" entry point: the logged SSCR model is :class:`sscr.serving.SSCRPyfunc`.

MLflow stores this file with the model and runs it at load time, so nothing
is unpickled; the weights come from the checkpoint artifact, loaded with
``weights_only=True``.
"""

from mlflow.models import set_model

from sscr.serving import SSCRPyfunc

set_model(SSCRPyfunc())
