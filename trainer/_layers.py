"""The chapter's layers, each with `forward` and `backward` side by side.

Every layer writes into arrays it owns and reuses from call to call (`_Scratch`), so a training
step allocates almost nothing. The price is the usual one for reused buffers: an array returned
by `forward` or `backward` stays valid only until that layer is called again with the same batch
size. `MultiLayerNet` copies whatever it hands back to its caller.

`forward(x, train_flg)` caches only what `backward` needs, and only when `train_flg` is true, so
inference neither keeps activations for a backward pass nor draws dropout masks.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import DTypeLike, NDArray

Array = NDArray[np.floating]


class _Scratch:
    """Arrays reused across calls, one per (slot, shape): training steps allocate nothing."""

    _MAX_SHAPES = 16  # bounded: arbitrary predict() sizes must not grow memory forever

    def __init__(self, dtype: DTypeLike) -> None:
        self.dtype = np.dtype(dtype)
        self._arrays: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def get(self, slot: str, shape: tuple[int, ...]) -> np.ndarray:
        key = (slot, shape)
        array = self._arrays.get(key)
        if array is None:
            if len(self._arrays) >= self._MAX_SHAPES:
                self._arrays.clear()
            array = self._arrays[key] = np.empty(shape, self.dtype)
        return array

    def ones(self, n: int) -> np.ndarray:
        """A vector of n ones: `ones @ x` sums the rows of x through BLAS, about three times
        faster than `x.sum(axis=0)` at these sizes."""
        key = ("ones", (n,))
        array = self._arrays.get(key)
        if array is None:
            array = self.get("ones", (n,))
            array.fill(1.0)
        return array


class Affine:
    """Fully connected layer, `out = x @ W + b`.

    `W` (in, out), `b` (out,) and their gradients `dW`, `db` are arrays owned by the caller
    (views into the network's flat parameter and gradient vectors); `backward` writes into
    `dW` and `db` in place. The first layer of a network sets `needs_input_grad=False`:
    nobody needs the gradient with respect to the images, and skipping it saves the largest
    matrix product of the backward pass.
    """

    def __init__(
        self,
        W: Array,
        b: Array,
        dW: Array,
        db: Array,
        *,
        needs_input_grad: bool = True,
    ) -> None:
        self.W, self.b, self.dW, self.db = W, b, dW, db
        self.needs_input_grad = needs_input_grad
        self._scratch = _Scratch(W.dtype)
        self._x: Array | None = None

    def forward(self, x: Array, train_flg: bool = False) -> Array:
        out = self._scratch.get("out", (x.shape[0], self.W.shape[1]))
        np.matmul(x, self.W, out=out)
        out += self.b
        self._x = x if train_flg else None
        return out

    def backward(self, dout: Array) -> Array | None:
        x = self._x
        if x is None:
            raise RuntimeError("Affine.backward needs a forward pass with train_flg=True first")
        np.matmul(x.T, dout, out=self.dW)
        np.matmul(self._scratch.ones(dout.shape[0]), dout, out=self.db)
        if not self.needs_input_grad:
            return None
        dx = self._scratch.get("dx", x.shape)
        np.matmul(dout, self.W.T, out=dx)
        return dx

    def __repr__(self) -> str:
        n_in, n_out = self.W.shape
        return f"Affine({n_in} -> {n_out}, dtype={self.W.dtype})"


class Relu:
    """max(0, x), computed as `x * mask` with a 0/1 float mask.

    The mask is what the backward pass needs anyway, and on these sizes `np.maximum` (which
    propagates NaN) is slower than building the mask and multiplying by it.
    """

    name: ClassVar[str] = "relu"

    def __init__(self, dtype: DTypeLike = np.float32) -> None:
        self._scratch = _Scratch(dtype)
        self._mask: Array | None = None

    def forward(self, x: Array, train_flg: bool = False) -> Array:
        mask = self._scratch.get("mask", x.shape)
        out = self._scratch.get("out", x.shape)
        np.greater(x, 0, out=mask)
        np.multiply(x, mask, out=out)
        self._mask = mask if train_flg else None
        return out

    def backward(self, dout: Array) -> Array:
        if self._mask is None:
            raise RuntimeError("Relu.backward needs a forward pass with train_flg=True first")
        dx = self._scratch.get("dx", dout.shape)
        np.multiply(dout, self._mask, out=dx)
        return dx

    def __repr__(self) -> str:
        return "Relu()"


class Sigmoid:
    """1 / (1 + exp(-x)), evaluated as 0.5 + 0.5·tanh(x/2), which cannot overflow."""

    name: ClassVar[str] = "sigmoid"

    def __init__(self, dtype: DTypeLike = np.float32) -> None:
        self._scratch = _Scratch(dtype)
        self._out: Array | None = None

    def forward(self, x: Array, train_flg: bool = False) -> Array:
        out = self._scratch.get("out", x.shape)
        np.multiply(x, 0.5, out=out)
        np.tanh(out, out=out)
        out *= 0.5
        out += 0.5
        self._out = out if train_flg else None
        return out

    def backward(self, dout: Array) -> Array:
        out = self._out
        if out is None:
            raise RuntimeError("Sigmoid.backward needs a forward pass with train_flg=True first")
        dx = self._scratch.get("dx", dout.shape)
        np.subtract(1.0, out, out=dx)  # dy/dx = y (1 - y)
        dx *= out
        dx *= dout
        return dx

    def __repr__(self) -> str:
        return "Sigmoid()"


class Tanh:
    """tanh(x); its derivative 1 - tanh²(x) comes from the cached output."""

    name: ClassVar[str] = "tanh"

    def __init__(self, dtype: DTypeLike = np.float32) -> None:
        self._scratch = _Scratch(dtype)
        self._out: Array | None = None

    def forward(self, x: Array, train_flg: bool = False) -> Array:
        out = self._scratch.get("out", x.shape)
        np.tanh(x, out=out)
        self._out = out if train_flg else None
        return out

    def backward(self, dout: Array) -> Array:
        out = self._out
        if out is None:
            raise RuntimeError("Tanh.backward needs a forward pass with train_flg=True first")
        dx = self._scratch.get("dx", dout.shape)
        np.multiply(out, out, out=dx)
        np.subtract(1.0, dx, out=dx)
        dx *= dout
        return dx

    def __repr__(self) -> str:
        return "Tanh()"


ACTIVATIONS: dict[str, type[Relu] | type[Sigmoid] | type[Tanh]] = {
    "relu": Relu,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
}


class BatchNormalization:
    """Batch normalization (Ioffe & Szegedy, 2015, arXiv:1502.03167).

    Training normalizes with the batch's own mean and (biased) variance and updates running
    averages, `running = momentum·running + (1 - momentum)·batch`, as the book does; inference
    uses the running averages, so a prediction never depends on the rest of its batch.
    `gamma`, `beta` and their gradients are caller-owned views, as in `Affine`.
    """

    def __init__(
        self,
        gamma: Array,
        beta: Array,
        dgamma: Array,
        dbeta: Array,
        *,
        momentum: float = 0.9,
        eps: float = 1e-6,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), but got {momentum=}")
        if not eps > 0.0:
            raise ValueError(f"eps must be positive, but got {eps=}")
        self.gamma, self.beta, self.dgamma, self.dbeta = gamma, beta, dgamma, dbeta
        self.momentum, self.eps = momentum, eps
        dtype = gamma.dtype
        # Running mean and variance share one array, as do the batch's, so updating both
        # averages takes three NumPy calls instead of six.
        self._running = np.empty((2, gamma.shape[0]), dtype)
        self.running_mean, self.running_var = self._running
        self.running_mean[...] = 0.0
        self.running_var[...] = 1.0
        self._scratch = _Scratch(dtype)
        self._xhat: Array | None = None
        self._inv_std: Array | None = None

    def forward(self, x: Array, train_flg: bool = False) -> Array:
        out = self._scratch.get("out", x.shape)
        if not train_flg:
            inv_std = 1.0 / np.sqrt(self.running_var + self.eps)
            scale = self.gamma * inv_std
            np.multiply(x, scale, out=out)
            out += self.beta - self.running_mean * scale
            return out

        n = x.shape[0]
        averaging = self._scratch.get("averaging", (n,))
        averaging.fill(1.0 / n)
        batch = self._scratch.get("batch_stats", self._running.shape)
        mean, var = batch
        xhat = self._scratch.get("xhat", x.shape)
        np.matmul(averaging, x, out=mean)
        np.subtract(x, mean, out=xhat)
        np.multiply(xhat, xhat, out=out)  # out is free until the end: use it for (x - mean)²
        np.matmul(averaging, out, out=var)
        inv_std = np.add(var, self.eps)
        np.power(inv_std, -0.5, out=inv_std)
        xhat *= inv_std
        np.multiply(xhat, self.gamma, out=out)
        out += self.beta

        self._running *= self.momentum
        batch *= 1.0 - self.momentum
        self._running += batch
        self._xhat, self._inv_std = xhat, inv_std
        return out

    def backward(self, dout: Array) -> Array:
        xhat, inv_std = self._xhat, self._inv_std
        if xhat is None or inv_std is None:
            raise RuntimeError(
                "BatchNormalization.backward needs a forward pass with train_flg=True first"
            )
        n = dout.shape[0]
        ones = self._scratch.ones(n)
        dx = self._scratch.get("dx", dout.shape)
        np.matmul(ones, dout, out=self.dbeta)
        np.multiply(dout, xhat, out=dx)
        np.matmul(ones, dx, out=self.dgamma)
        # dx = γ/σ · (dout - (Σdout + x̂·Σ(dout·x̂)) / n): the three terms of the chain rule
        # through the batch mean and variance, collapsed and computed in place.
        np.multiply(xhat, self.dgamma, out=dx)
        dx += self.dbeta
        dx *= -1.0 / n
        dx += dout
        dx *= self.gamma * inv_std
        return dx

    def __repr__(self) -> str:
        return f"BatchNormalization({self.gamma.shape[0]}, momentum={self.momentum})"


class Dropout:
    """Inverted dropout (Srivastava et al., 2014, JMLR 15:1929).

    Training keeps each unit with probability `1 - dropout_ratio` and scales the kept ones by
    `1 / (1 - dropout_ratio)`; inference is the identity. The book's `Dropout` instead leaves
    training activations unscaled and multiplies by `1 - dropout_ratio` at inference. Both give
    the next layer the same expected input; the inverted form keeps inference free of any
    dropout arithmetic, which is why the frameworks use it.

    Masks come from 16 raw random bits per unit (half the cost of drawing floats), so the ratio
    is applied at a resolution of 1/65536; the scale uses the exact keep probability, so the
    expected activation is preserved exactly. `rng` draws the masks: the network gives each
    dropout layer its own generator, and a test can replace it to fix the mask.
    """

    _LEVELS = 1 << 16

    def __init__(
        self, dropout_ratio: float, rng: np.random.Generator, dtype: DTypeLike = np.float32
    ) -> None:
        if not 0.0 <= dropout_ratio < 1.0:
            raise ValueError(f"dropout_ratio must be in [0, 1), but got {dropout_ratio=}")
        self.dropout_ratio = dropout_ratio
        self.rng = rng
        self._threshold = np.uint16(min(round(dropout_ratio * self._LEVELS), self._LEVELS - 1))
        self.keep_prob = (self._LEVELS - int(self._threshold)) / self._LEVELS
        self._scratch = _Scratch(dtype)
        self._mask: Array | None = None

    def forward(self, x: Array, train_flg: bool = False) -> Array:
        if not train_flg:
            self._mask = None
            return x
        mask = self._scratch.get("mask", x.shape)
        out = self._scratch.get("out", x.shape)
        bits = self.rng.bit_generator.random_raw((x.size + 3) // 4).view(np.uint16)
        np.greater_equal(bits[: x.size].reshape(x.shape), self._threshold, out=mask)
        mask *= 1.0 / self.keep_prob
        np.multiply(x, mask, out=out)
        self._mask = mask
        return out

    def backward(self, dout: Array) -> Array:
        if self._mask is None:
            raise RuntimeError("Dropout.backward needs a forward pass with train_flg=True first")
        dx = self._scratch.get("dx", dout.shape)
        np.multiply(dout, self._mask, out=dx)
        return dx

    def __repr__(self) -> str:
        return f"Dropout(dropout_ratio={self.dropout_ratio})"


class SoftmaxWithLoss:
    """Softmax followed by mean cross-entropy, fused so the backward pass is `(y - t) / n`.

    The loss is computed as logsumexp(z) - z[t] on max-shifted logits, which stays finite where
    `log(softmax(z))` would underflow to log(0). Labels are integer class indices.
    """

    def __init__(self, dtype: DTypeLike = np.float32) -> None:
        self._scratch = _Scratch(dtype)
        self._probs: Array | None = None
        self._t: NDArray[np.integer] | None = None
        self._row_index = np.arange(0)

    def forward(self, x: Array, t: NDArray[np.integer], train_flg: bool = False) -> float:
        """Mean cross-entropy of logits x: (n, classes) against labels t: (n,)."""
        n, classes = x.shape
        rows = self._rows(n)
        # The row maximum of a transposed copy: reducing along the long axis is three times
        # faster than x.max(axis=1) on a (100, 10) array.
        transposed = self._scratch.get("transposed", (classes, n))
        np.copyto(transposed, x.T)
        row_max = self._scratch.get("row_max", (n,))
        np.maximum.reduce(transposed, axis=0, out=row_max)
        shifted = self._scratch.get("probs", x.shape)
        np.subtract(x, row_max[:, None], out=shifted)
        picked_sum = float(np.add.reduce(shifted[rows, t]))
        np.exp(shifted, out=shifted)
        sums = self._scratch.get("sums", (n,))
        np.matmul(shifted, self._scratch.ones(classes), out=sums)
        if train_flg:
            shifted /= sums[:, None]
            self._probs, self._t = shifted, t
        else:
            self._probs = self._t = None
        np.log(sums, out=sums)
        return (float(np.add.reduce(sums)) - picked_sum) / n

    def backward(self, dout: float = 1.0) -> Array:
        probs, t = self._probs, self._t
        if probs is None or t is None:
            raise RuntimeError(
                "SoftmaxWithLoss.backward needs a forward pass with train_flg=True first"
            )
        n = probs.shape[0]
        dx = probs  # the probabilities are not needed again: turn them into the gradient
        dx[self._rows(n), t] -= 1.0
        dx *= dout / n
        self._probs = None
        return dx

    def _rows(self, n: int) -> NDArray[np.intp]:
        if self._row_index.shape[0] != n:
            self._row_index = np.arange(n)
        return self._row_index

    def __repr__(self) -> str:
        return "SoftmaxWithLoss()"
