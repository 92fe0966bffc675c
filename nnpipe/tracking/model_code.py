"""Model-from-code entry MLflow runs when it loads an nnpipe pyfunc model (so nothing is pickled)."""

import mlflow

from nnpipe.tracking.pyfunc import NnpipePyfunc

mlflow.models.set_model(NnpipePyfunc())
