"""Central-difference gradients: the oracle the backward passes are checked against."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Central differences have truncation error O(h²·f''') and roundoff error O(ε·|f|/h). In
# float64 (ε ≈ 1.1e-16) with |f| and f''' of order one, h = 1e-6 puts both near 1e-10 to 1e-12,
# four orders of magnitude below the 1e-6 relative error the checks allow.
H = 1e-6
MAX_RELATIVE_ERROR = 1e-6
# Below this analytic norm a gradient is structurally zero (see assert_gradient_close).
ZERO_NORM = 1e-10
MAX_ABSOLUTE_ERROR = 1e-8


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = H) -> np.ndarray:
    """∂f/∂x by central differences, perturbing `x` in place (f must read x each call).

    Every element is restored to its exact original value before the next one is perturbed.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: x must be contiguous so that writes reach the caller
    assert np.shares_memory(flat, x)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + h
        f_plus = f()
        flat[i] = original - h
        f_minus = f()
        flat[i] = original
        grad.reshape(-1)[i] = (f_plus - f_minus) / (2.0 * h)
    return grad


def assert_gradient_close(analytic: np.ndarray, numerical: np.ndarray, name: str) -> None:
    """Relative error ‖a − n‖ / (‖a‖ + ‖n‖) below MAX_RELATIVE_ERROR.

    A gradient that is zero by construction (the bias of an Affine feeding batch
    normalization: BN subtracts the batch mean, so shifting every row by the same bias changes
    nothing and db = 0) is computed as rounding noise around 0 by both methods, so the relative
    error would be noise divided by noise. For such arrays (analytic norm below ZERO_NORM) the
    absolute error ‖a − n‖ must instead be below MAX_ABSOLUTE_ERROR: the numerical estimate's
    own roundoff is about ε/h ≈ 1e-10 per element.
    """
    assert analytic.shape == numerical.shape, name
    assert np.all(np.isfinite(analytic)), name
    diff = float(np.linalg.norm(analytic - numerical))
    norm_a = float(np.linalg.norm(analytic))
    norm_n = float(np.linalg.norm(numerical))
    if norm_a < ZERO_NORM:
        assert diff < MAX_ABSOLUTE_ERROR, f"{name}: absolute error {diff:.3e} (gradient ≈ 0)"
        return
    relative = diff / (norm_a + norm_n)
    assert relative < MAX_RELATIVE_ERROR, f"{name}: relative error {relative:.3e}"
