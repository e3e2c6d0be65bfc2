"""A trained network as an MLflow pyfunc model: inputs in, class labels out.

This file is an MLflow "model from code": `hpo best` passes its *path* as `python_model`, MLflow
copies it into the model directory and executes it (under a module name of its own) whenever
the model is loaded, and it declares the model with `set_model` at the bottom. Nothing is
pickled, so loading needs neither `hpo` nor the name `hpo.tracking.model` to be importable:
only `trainer`, which travels in the model's `code_paths` (MLflow puts the model's `code/`
directory first on `sys.path` before it runs this file). Hence this file imports nothing from
`hpo`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

NETWORK_ARTIFACT = "network"  # the key of the saved network in the model's artifacts


class NetworkClassifier(PythonModel):
    """`predict(x)` is `network.predict(x).argmax(axis=1)`: x (n, n_features) float32 in,
    (n,) int64 class labels out, exactly as the trainer computes them.

    `predict` is hinted `np.ndarray`, one of the hints from which MLflow 3 infers no
    signature (the signature, a float32 tensor, is given when the model is saved) and about
    which it does not warn; a pandas DataFrame of the features works as well.
    """

    def load_context(self, context: Any) -> None:
        from trainer import load_network

        self.network = load_network(context.artifacts[NETWORK_ARTIFACT])

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        # A pandas DataFrame (one column per feature) converts like an array.
        x = np.asarray(model_input, dtype=np.float32)
        return self.network.predict(x).argmax(axis=1).astype(np.int64)

    def __repr__(self) -> str:
        network = getattr(self, "network", None)
        return f"NetworkClassifier({network!r})" if network is not None else "NetworkClassifier()"


set_model(NetworkClassifier())
