"""The chapter's multilayer perceptron (the book's `MultiLayerNet` and `MultiLayerNetExtend`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._layers import (
    ACTIVATIONS,
    Affine,
    BatchNormalization,
    Dropout,
    SoftmaxWithLoss,
)

WEIGHT_INITS: tuple[str, ...] = ("he", "xavier")
DTYPES: tuple[str, ...] = ("float32", "float64")

Seed = int | np.random.Generator | None


def _init_std(weight_init_std: str | float, fan_in: int) -> float:
    """He (arXiv:1502.01852) keeps ReLU activations' variance; Xavier (Glorot & Bengio, 2010)
    suits sigmoid and tanh. The book uses the same 1/fan_in form of Xavier."""
    if weight_init_std == "he":
        return math.sqrt(2.0 / fan_in)
    if weight_init_std == "xavier":
        return math.sqrt(1.0 / fan_in)
    return float(weight_init_std)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, but got {name}={value!r}")
    return int(value)


def validate_architecture(
    *,
    hidden_size_list: Sequence[int],
    activation: str = "relu",
    weight_init_std: str | float = "he",
    use_batchnorm: bool = False,
    dropout_ratio: float = 0.0,
    weight_decay_lambda: float = 0.0,
    dtype: str | np.dtype | type = "float32",
) -> dict[str, Any]:
    """Check `MultiLayerNet`'s architecture arguments; return them normalised.

    Separate from the constructor so that a configuration can be checked, with the same
    messages, long before there is data to size a network for.
    """
    if isinstance(hidden_size_list, str | bytes) or not isinstance(hidden_size_list, Sequence):
        raise ValueError(
            f"hidden_size_list must be a list of positive integers, but got {hidden_size_list=!r}"
        )
    hidden = [_check_positive_int("hidden_size_list[]", h) for h in hidden_size_list]
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, but got {activation=!r}"
        )
    if isinstance(weight_init_std, str):
        if weight_init_std not in WEIGHT_INITS:
            raise ValueError(
                f"weight_init_std must be one of {list(WEIGHT_INITS)} or a positive number, "
                f"but got {weight_init_std=!r} (the book's 'relu' and 'sigmoid' are "
                f"'he' and 'xavier' here)"
            )
    elif not (
        _is_number(weight_init_std) and math.isfinite(weight_init_std) and weight_init_std > 0
    ):
        raise ValueError(
            f"weight_init_std must be one of {list(WEIGHT_INITS)} or a positive number, "
            f"but got {weight_init_std=!r}"
        )
    if not isinstance(use_batchnorm, bool | np.bool_):
        raise ValueError(f"use_batchnorm must be true or false, but got {use_batchnorm=!r}")
    if not (_is_number(dropout_ratio) and 0.0 <= dropout_ratio < 1.0):
        raise ValueError(f"dropout_ratio must be in [0, 1), but got {dropout_ratio=!r}")
    if not (
        _is_number(weight_decay_lambda)
        and math.isfinite(weight_decay_lambda)
        and weight_decay_lambda >= 0.0
    ):
        raise ValueError(
            f"weight_decay_lambda must be a finite number >= 0, but got {weight_decay_lambda=!r}"
        )
    try:
        dtype_name = np.dtype(dtype).name
    except TypeError:
        dtype_name = None
    if dtype_name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, but got {dtype=!r}")

    return {
        "hidden_size_list": hidden,
        "activation": activation,
        "weight_init_std": weight_init_std
        if isinstance(weight_init_std, str)
        else float(weight_init_std),
        "use_batchnorm": bool(use_batchnorm),
        "dropout_ratio": float(dropout_ratio),
        "weight_decay_lambda": float(weight_decay_lambda),
        "dtype": dtype_name,
    }


class MultiLayerNet:
    """A fully connected network trained with softmax cross-entropy.

    Each hidden layer is Affine → [BatchNormalization] → activation → [Dropout], then a final
    Affine feeds SoftmaxWithLoss, the layout of the book's `MultiLayerNetExtend`. The loss adds
    the L2 penalty ½·λ·ΣW² over every weight matrix (not biases, γ or β), as the book does.

    All parameters live in one contiguous vector, `flat_params`, with weights first; `params`
    holds named views into it (`W1`, `b1`, `gamma1`, `beta1`, ...), so updating either updates
    both. `flat_grads` mirrors it for gradients. Since every chapter-6 optimizer is elementwise,
    the training loop updates the flat vector in a handful of NumPy calls instead of a dozen
    per layer.

    Args:
        input_size: features per sample (784 for MNIST).
        hidden_size_list: width of each hidden layer, e.g. `[100] * 6`.
        output_size: number of classes.
        activation: "relu", "sigmoid" or "tanh".
        weight_init_std: "he", "xavier", or a number used as the standard deviation.
        use_batchnorm: insert batch normalization before each hidden activation.
        dropout_ratio: probability of dropping a hidden unit during training; 0 turns it off.
        weight_decay_lambda: λ of the L2 penalty (the book's `weight_decay_lambda`).
        dtype: "float32" (fast, the default) or "float64" (for gradient checks).
        seed: int, None or a `numpy.random.Generator`; drives initialisation and dropout masks.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size_list: Sequence[int],
        output_size: int,
        *,
        activation: str = "relu",
        weight_init_std: str | float = "he",
        use_batchnorm: bool = False,
        dropout_ratio: float = 0.0,
        weight_decay_lambda: float = 0.0,
        dtype: str | np.dtype | type = "float32",
        seed: Seed = None,
    ) -> None:
        input_size = _check_positive_int("input_size", input_size)
        output_size = _check_positive_int("output_size", output_size)
        if output_size < 2:
            raise ValueError(f"output_size must be at least 2 classes, but got {output_size=}")
        arch = validate_architecture(
            hidden_size_list=hidden_size_list,
            activation=activation,
            weight_init_std=weight_init_std,
            use_batchnorm=use_batchnorm,
            dropout_ratio=dropout_ratio,
            weight_decay_lambda=weight_decay_lambda,
            dtype=dtype,
        )
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list: list[int] = arch["hidden_size_list"]
        self.activation: str = arch["activation"]
        self.weight_init_std: str | float = arch["weight_init_std"]
        self.use_batchnorm: bool = arch["use_batchnorm"]
        self.dropout_ratio: float = arch["dropout_ratio"]
        self.weight_decay_lambda: float = arch["weight_decay_lambda"]
        self.dtype = np.dtype(arch["dtype"])

        init_rng, dropout_rng = np.random.default_rng(seed).spawn(2)
        self._allocate_parameters()
        self._initialize_parameters(init_rng)
        self._build_layers(dropout_rng)

    # -- construction --------------------------------------------------------------------------

    def _parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) in the book's order: W1, b1, gamma1, beta1, W2, ..."""
        sizes = [self.input_size, *self.hidden_size_list, self.output_size]
        shapes: list[tuple[str, tuple[int, ...]]] = []
        for i in range(1, len(sizes)):
            shapes += [(f"W{i}", (sizes[i - 1], sizes[i])), (f"b{i}", (sizes[i],))]
            if self.use_batchnorm and i < len(sizes) - 1:
                shapes += [(f"gamma{i}", (sizes[i],)), (f"beta{i}", (sizes[i],))]
        return shapes

    def _allocate_parameters(self) -> None:
        shapes = self._parameter_shapes()
        # Weights first, so that weight decay touches one contiguous slice.
        layout = sorted(shapes, key=lambda item: not item[0].startswith("W"))
        total = sum(math.prod(shape) for _, shape in shapes)
        self.flat_params = np.zeros(total, self.dtype)
        self.flat_grads = np.zeros(total, self.dtype)
        views: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        offset = 0
        for name, shape in layout:
            size = math.prod(shape)
            views[name] = (
                self.flat_params[offset : offset + size].reshape(shape),
                self.flat_grads[offset : offset + size].reshape(shape),
            )
            offset += size
        self._n_weights = sum(math.prod(s) for n, s in shapes if n.startswith("W"))
        decayed = self._n_weights if self.weight_decay_lambda else 0
        self._decay_scratch = np.empty(decayed, self.dtype)
        self.params: dict[str, NDArray[np.floating]] = {n: views[n][0] for n, _ in shapes}
        self._grads: dict[str, NDArray[np.floating]] = {n: views[n][1] for n, _ in shapes}

    def _initialize_parameters(self, rng: np.random.Generator) -> None:
        for name, value in self.params.items():
            if name.startswith("W"):
                # Drawn in float64 and then cast, so float32 and float64 networks built with
                # the same seed start from the same weights.
                std = _init_std(self.weight_init_std, fan_in=value.shape[0])
                value[...] = std * rng.standard_normal(value.shape)
            elif name.startswith("gamma"):
                value[...] = 1.0

    def _build_layers(self, dropout_rng: np.random.Generator) -> None:
        n_affine = len(self.hidden_size_list) + 1
        dropout_rngs = dropout_rng.spawn(n_affine)
        p, g = self.params, self._grads
        self.layers: list[Any] = []
        for i in range(1, n_affine + 1):
            self.layers.append(
                Affine(p[f"W{i}"], p[f"b{i}"], g[f"W{i}"], g[f"b{i}"], needs_input_grad=i > 1)
            )
            if i == n_affine:
                break
            if self.use_batchnorm:
                gamma, beta = f"gamma{i}", f"beta{i}"
                self.layers.append(BatchNormalization(p[gamma], p[beta], g[gamma], g[beta]))
            self.layers.append(ACTIVATIONS[self.activation](self.dtype))
            if self.dropout_ratio > 0.0:
                self.layers.append(Dropout(self.dropout_ratio, dropout_rngs[i - 1], self.dtype))
        self.last_layer = SoftmaxWithLoss(self.dtype)

    # -- the book's interface --------------------------------------------------------------------

    def predict(self, x: ArrayLike, train_flg: bool = False) -> NDArray[np.floating]:
        """Logits (n, output_size) for inputs x: (n, input_size); a fresh array."""
        return self._forward(self._as_input(x), train_flg).copy()

    def loss(self, x: ArrayLike, t: ArrayLike, train_flg: bool = False) -> float:
        """Mean softmax cross-entropy plus ½·λ·ΣW² on one batch."""
        x, t = self._as_batch(x, t)
        data_loss = self.last_layer.forward(self._forward(x, train_flg), t, train_flg)
        return data_loss + self.weight_decay_penalty()

    def accuracy(self, x: ArrayLike, t: ArrayLike, *, batch_size: int = 2048) -> float:
        """Fraction of samples whose largest logit is the label, computed in inference mode."""
        return self.evaluate(x, t, batch_size=batch_size)[1]

    def gradient(self, x: ArrayLike, t: ArrayLike) -> dict[str, NDArray[np.floating]]:
        """Backpropagated gradient of `loss(x, t, train_flg=True)`, keyed like `params`.

        The arrays are views into `flat_grads`, overwritten by the next call: copy them to keep
        them.
        """
        self.train_step(*self._as_batch(x, t))
        return self._grads

    def hidden_activations(self, x: ArrayLike) -> list[NDArray[np.floating]]:
        """Each hidden layer's activations for inputs x: (n, input_size), in inference mode.

        One fresh array (n, hidden_size_list[i]) per hidden layer, taken at the output of its
        activation function (after batch normalization, before dropout): what the book's
        ch06/weight_init_activation_histogram.py plots (its figures 6-10 to 6-14).
        """
        out = self._as_input(x)
        activations: list[NDArray[np.floating]] = []
        kinds = tuple(ACTIVATIONS.values())
        for layer in self.layers:
            out = layer.forward(out, False)
            if isinstance(layer, kinds):
                activations.append(out.copy())  # the layer reuses its output buffer
                if len(activations) == len(self.hidden_size_list):
                    break
        return activations

    # -- fast paths used by the training loop -----------------------------------------------------

    def train_step(self, x: NDArray[np.floating], t: NDArray[np.integer]) -> float:
        """Forward and backward on one batch; fills `flat_grads` and returns the data loss.

        Expects inputs already in the network's dtype and integer labels (the training loop
        converts them once); the returned loss omits the weight-decay term, which a divergence
        check does not need.
        """
        data_loss = self.last_layer.forward(self._forward(x, True), t, True)
        dout = self.last_layer.backward()
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        if self.weight_decay_lambda:
            n = self._n_weights
            decay = self._decay_scratch
            np.multiply(self.flat_params[:n], self.weight_decay_lambda, out=decay)
            self.flat_grads[:n] += decay
        return data_loss

    def evaluate(
        self, x: ArrayLike, t: ArrayLike, *, batch_size: int = 2048
    ) -> tuple[float, float]:
        """(loss, accuracy) over the whole of x in inference mode, in batches of `batch_size`.

        The loss is `loss(x, t)` as if computed in one batch: mean cross-entropy plus the
        weight-decay term.
        """
        x, t = self._as_batch(x, t)
        batch_size = _check_positive_int("batch_size", batch_size)
        n = x.shape[0]
        if n == 0:
            raise ValueError("evaluate needs at least one sample, but got an empty array")
        total_loss = 0.0
        correct = 0
        for start in range(0, n, batch_size):
            xb, tb = x[start : start + batch_size], t[start : start + batch_size]
            logits = self._forward(xb, False)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == tb))
            total_loss += self.last_layer.forward(logits, tb, False) * xb.shape[0]
        return total_loss / n + self.weight_decay_penalty(), correct / n

    def weight_decay_penalty(self) -> float:
        """½·λ·ΣW² over all weight matrices."""
        if not self.weight_decay_lambda:
            return 0.0
        weights = self.flat_params[: self._n_weights]
        return 0.5 * self.weight_decay_lambda * float(np.dot(weights, weights))

    def _forward(self, x: NDArray[np.floating], train_flg: bool) -> NDArray[np.floating]:
        for layer in self.layers:
            x = layer.forward(x, train_flg)
        return x

    def _as_input(self, x: ArrayLike) -> NDArray[np.floating]:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"x must have shape (n_samples, {self.input_size}), but got shape {x.shape}"
            )
        return np.ascontiguousarray(x, dtype=self.dtype)

    def _as_batch(
        self, x: ArrayLike, t: ArrayLike
    ) -> tuple[NDArray[np.floating], NDArray[np.intp]]:
        x, t = self._as_input(x), self._as_labels(t)
        if len(t) != len(x):
            raise ValueError(
                f"x and t must hold the same number of samples, but got {len(x)} inputs and "
                f"{len(t)} labels"
            )
        return x, t

    def _as_labels(self, labels: ArrayLike) -> NDArray[np.intp]:
        """Integer labels; one-hot rows (the book's `one_hot_label=True`) become indices."""
        t = np.asarray(labels)
        if t.ndim == 2:
            if t.shape[1] != self.output_size:
                raise ValueError(
                    f"one-hot labels must have shape (n_samples, {self.output_size}), "
                    f"but got shape {t.shape}"
                )
            t = t.argmax(axis=1)
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(
                f"t must be integer class labels (n_samples,) or one-hot (n_samples, "
                f"{self.output_size}), but got dtype {t.dtype} and shape {t.shape}"
            )
        if t.size and (t.min() < 0 or t.max() >= self.output_size):
            raise ValueError(
                f"labels must be in [0, {self.output_size}), but got values from "
                f"{t.min()} to {t.max()}"
            )
        return t.astype(np.intp, copy=False)

    # -- persistence support --------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (without the seed), enough to rebuild this architecture."""
        return {
            "input_size": self.input_size,
            "hidden_size_list": list(self.hidden_size_list),
            "output_size": self.output_size,
            "activation": self.activation,
            "weight_init_std": self.weight_init_std,
            "use_batchnorm": self.use_batchnorm,
            "dropout_ratio": self.dropout_ratio,
            "weight_decay_lambda": self.weight_decay_lambda,
            "dtype": self.dtype.name,
        }

    @property
    def batchnorm_layers(self) -> list[BatchNormalization]:
        return [layer for layer in self.layers if isinstance(layer, BatchNormalization)]

    def __repr__(self) -> str:
        sizes = "-".join(str(s) for s in [self.input_size, *self.hidden_size_list])
        return (
            f"MultiLayerNet({sizes}-{self.output_size}, activation={self.activation!r}, "
            f"weight_init_std={self.weight_init_std!r}, use_batchnorm={self.use_batchnorm}, "
            f"dropout_ratio={self.dropout_ratio}, "
            f"weight_decay_lambda={self.weight_decay_lambda}, dtype={self.dtype.name!r})"
        )
