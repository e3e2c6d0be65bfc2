"""One `.npz` file per trained network: its config, parameters and batch-norm statistics."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from ._network import MultiLayerNet

_FORMAT = "hpo-multilayernet-1"


def save_network(network: MultiLayerNet, path: str | os.PathLike[str]) -> Path:
    """Write `network` to `path` (exactly that name; no `.npz` is appended) and return it."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "format": np.array(_FORMAT),
        "config": np.array(json.dumps(network.config)),
    }
    arrays |= {f"param/{name}": value for name, value in network.params.items()}
    for i, layer in enumerate(network.batchnorm_layers, start=1):
        arrays[f"running_mean/{i}"] = layer.running_mean
        arrays[f"running_var/{i}"] = layer.running_var
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        # Any: mypy cannot tell that no key is savez's own keyword `allow_pickle` (a bool)
        np.savez(f, **cast(dict[str, Any], arrays))
    os.replace(tmp, path)  # never leave a half-written network under the real name
    return path


def load_network(path: str | os.PathLike[str]) -> MultiLayerNet:
    """Rebuild the network saved by `save_network`; it predicts exactly as the saved one did."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such network file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a saved network ({error})") from None
    if arrays.get("format") is None or str(arrays["format"]) != _FORMAT:
        raise ValueError(f"{path}: not a saved network (expected format {_FORMAT!r})")

    try:
        network = MultiLayerNet(**json.loads(str(arrays["config"])))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: its network config is invalid ({error})") from None
    targets = {f"param/{name}": value for name, value in network.params.items()}
    for i, layer in enumerate(network.batchnorm_layers, start=1):
        targets[f"running_mean/{i}"] = layer.running_mean
        targets[f"running_var/{i}"] = layer.running_var
    for key, target in targets.items():
        stored = arrays.get(key)
        if stored is None or stored.shape != target.shape:
            raise ValueError(f"{path}: {key} is missing or has the wrong shape")
        target[...] = stored
    return network
