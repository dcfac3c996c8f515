"""Row weights of a fit: checked, and scaled so that only their ratios matter."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import _check_sample_weight

__all__ = ["checked_sample_weight"]


def checked_sample_weight(sample_weight: Any, X: np.ndarray) -> np.ndarray:
    """``sample_weight`` for the rows of ``X`` (ones when None), divided by its largest
    value.

    A fit depends on the weights only through their ratios; dividing by the largest one
    keeps every sum, mean and count that the fit forms from them finite and exact whatever
    their scale (all ``1e-300``, or all ``1e300``).

    Raises
    ------
    ValueError
        If a weight is negative, or (scikit-learn's checks) NaN or infinite, or none is
        non-zero.
    """
    weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
    if np.any(weight < 0):
        raise ValueError("sample_weight must be non-negative.")
    return weight / weight.max()
