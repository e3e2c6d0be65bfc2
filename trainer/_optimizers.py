"""The chapter's optimizers, each `update(params, grads)` on dicts of arrays keyed by name.

The base class owns the bookkeeping (per-key state, step count, validation); subclasses only
say how one array is updated. Updates happen in place, with scratch arrays allocated once per
key, so an update step allocates nothing. Because every rule here is elementwise, updating one
flat vector that holds all parameters is the same as updating each array: that is what the
training loop does with `MultiLayerNet.flat_params`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.floating]

# Hyperparameter constraints, declared as data:
# (lowest, highest, whether lowest is allowed, whether highest is allowed)
Bounds = tuple[float, float, bool, bool]
_POSITIVE = (0.0, math.inf, False, False)
_UNIT_OPEN_RIGHT = (0.0, 1.0, True, False)
_UNIT_OPEN = (0.0, 1.0, False, False)


def _check(name: str, value: Any, bounds: Bounds) -> float:
    low, high, low_ok, high_ok = bounds
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a number, but got {name}={value!r}")
    value = float(value)
    above = value > low or (low_ok and value == low)
    below = value < high or (high_ok and value == high)
    if not (math.isfinite(value) and above and below):
        interval = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
        raise ValueError(f"{name} must be in {interval}, but got {name}={value!r}")
    return value


def _adaptive_step(param: Array, grad: Array, h: Array, tmp: Array, lr: float, eps: float) -> None:
    """W ← W − lr·g/(√h + ε), the step AdaGrad and RMSprop share."""
    np.sqrt(h, out=tmp)
    tmp += eps
    np.divide(grad, tmp, out=tmp)
    tmp *= lr
    param -= tmp


class Optimizer:
    """Base class: subclasses declare `_constraints` and implement `_update_one`."""

    name: ClassVar[str]
    _constraints: ClassVar[dict[str, Bounds]] = {"lr": _POSITIVE}
    _n_state: ClassVar[int] = 0  # state arrays per parameter (velocity, second moment, ...)
    lr: float  # set by __init__, like each subclass's other keys in _constraints

    def __init__(self, **hyperparameters: float) -> None:
        for key, value in hyperparameters.items():
            setattr(self, key, _check(key, value, self._constraints[key]))
        self.iter = 0
        self._state: dict[str, list[Array]] = {}

    def update(self, params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
        """Apply one step in place to every array in `params`, using `grads` with the same keys."""
        if params.keys() != grads.keys():
            raise ValueError(
                f"params and grads must have the same keys, but got {sorted(params)} and "
                f"{sorted(grads)}"
            )
        self.iter += 1
        for key, param in params.items():
            state = self._state.get(key)
            if state is None:
                # The last array is scratch space for intermediate results.
                state = [np.zeros_like(param) for _ in range(self._n_state + 1)]
                self._state[key] = state
            self._update_one(param, grads[key], *state)

    def _update_one(self, *arrays: Any, **_: Any) -> None:
        """Step one array in place, called as `(param, grad, *state, tmp)`.

        Each subclass names its `_n_state` state arrays; `*Any, **Any` is how the base says
        "any arrays" to mypy, which reads it as `...`, so that every override matches.
        """
        raise NotImplementedError

    @classmethod
    def hyperparameter_names(cls) -> tuple[str, ...]:
        """The keyword arguments this optimizer takes, e.g. ("lr", "momentum")."""
        return tuple(cls._constraints)

    @property
    def hyperparameters(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in self._constraints}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent: W ← W − lr·∂L/∂W (Robbins & Monro, 1951)."""

    name = "sgd"

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr=lr)

    def _update_one(self, param: Array, grad: Array, tmp: Array) -> None:
        np.multiply(grad, self.lr, out=tmp)
        param -= tmp


class Momentum(Optimizer):
    """Momentum SGD (Polyak, 1964): v ← αv − lr·∂L/∂W, W ← W + v."""

    name = "momentum"
    _constraints: ClassVar[dict[str, Bounds]] = {"lr": _POSITIVE, "momentum": _UNIT_OPEN_RIGHT}
    _n_state = 1
    momentum: float

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(lr=lr, momentum=momentum)

    def _update_one(self, param: Array, grad: Array, v: Array, tmp: Array) -> None:
        v *= self.momentum
        np.multiply(grad, self.lr, out=tmp)
        v -= tmp
        param += v


class Nesterov(Optimizer):
    """Nesterov's accelerated gradient (Sutskever et al., 2013, ICML).

    In the form of Bengio et al. (2012, arXiv:1212.0901) that needs the gradient only at the
    stored parameters: v ← αv − lr·g, W ← W + αv − lr·g (equivalently W + α²v_old − (1 + α)·lr·g).
    This is the update of PyTorch's `SGD(nesterov=True)`. The book's code applies
    W ← W + α²v − (1 + α)·lr·g after it has already updated v, where the formula wants the
    velocity from before the update.
    """

    name = "nesterov"
    _constraints: ClassVar[dict[str, Bounds]] = {"lr": _POSITIVE, "momentum": _UNIT_OPEN_RIGHT}
    _n_state = 1
    momentum: float

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(lr=lr, momentum=momentum)

    def _update_one(self, param: Array, grad: Array, v: Array, tmp: Array) -> None:
        np.multiply(grad, self.lr, out=tmp)
        v *= self.momentum
        v -= tmp
        param -= tmp
        np.multiply(v, self.momentum, out=tmp)
        param += tmp


class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al., 2011, JMLR 12:2121): h ← h + g², W ← W − lr·g/(√h + ε)."""

    name = "adagrad"
    _n_state = 1
    eps: ClassVar[float] = 1e-7

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr=lr)

    def _update_one(self, param: Array, grad: Array, h: Array, tmp: Array) -> None:
        np.multiply(grad, grad, out=tmp)
        h += tmp
        _adaptive_step(param, grad, h, tmp, self.lr, self.eps)


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton, 2012, Coursera lecture 6.5).

    h ← ρh + (1 − ρ)g², W ← W − lr·g/(√h + ε), with the book's `decay_rate` ρ = 0.99.
    """

    name = "rmsprop"
    _constraints: ClassVar[dict[str, Bounds]] = {"lr": _POSITIVE, "decay_rate": _UNIT_OPEN}
    _n_state = 1
    decay_rate: float
    eps: ClassVar[float] = 1e-7

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99) -> None:
        super().__init__(lr=lr, decay_rate=decay_rate)

    def _update_one(self, param: Array, grad: Array, h: Array, tmp: Array) -> None:
        h *= self.decay_rate
        np.multiply(grad, grad, out=tmp)
        tmp *= 1.0 - self.decay_rate
        h += tmp
        _adaptive_step(param, grad, h, tmp, self.lr, self.eps)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015, arXiv:1412.6980), with the bias correction folded into lr.

    m ← m + (1 − β1)(g − m), v ← v + (1 − β2)(g² − v),
    W ← W − lr·√(1 − β2ᵗ)/(1 − β1ᵗ) · m/(√v + ε), as in the book's code.

    The moments are stored rescaled, m' = m/(1 − β1) and v' = v/(1 − β2), so that each update
    is m' ← β1·m' + g and v' ← β2·v' + g²: the same step in 10 array passes instead of 12.
    """

    name = "adam"
    _constraints: ClassVar[dict[str, Bounds]] = {
        "lr": _POSITIVE,
        "beta1": _UNIT_OPEN_RIGHT,
        "beta2": _UNIT_OPEN_RIGHT,
    }
    _n_state = 2
    eps: ClassVar[float] = 1e-7
    beta1: float
    beta2: float

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999) -> None:
        super().__init__(lr=lr, beta1=beta1, beta2=beta2)

    def _update_one(
        self, param: Array, grad: Array, m_scaled: Array, v_scaled: Array, tmp: Array
    ) -> None:
        t = self.iter
        lr_t = self.lr * math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        # m/(√v + ε) = (1 − β1)/√(1 − β2) · m'/(√v' + ε/√(1 − β2))
        root = math.sqrt(1.0 - self.beta2)
        m_scaled *= self.beta1
        m_scaled += grad
        v_scaled *= self.beta2
        np.multiply(grad, grad, out=tmp)
        v_scaled += tmp
        np.sqrt(v_scaled, out=tmp)
        tmp += self.eps / root
        np.divide(m_scaled, tmp, out=tmp)
        tmp *= lr_t * (1.0 - self.beta1) / root
        param -= tmp


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam)
}


def make_optimizer(name: str, **hyperparameters: float) -> Optimizer:
    """Build an optimizer by its name in `OPTIMIZERS`, e.g. `make_optimizer("adam", lr=1e-3)`."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"optimizer must be one of {sorted(OPTIMIZERS)}, but got {name!r}"
        ) from None
    allowed = set(cls.hyperparameter_names())
    unknown = sorted(set(hyperparameters) - allowed)
    if unknown:
        raise ValueError(
            f"optimizer {name!r} takes the hyperparameters {sorted(allowed)}, "
            f"but got unknown {unknown}"
        )
    return cls(**hyperparameters)
