"""Discrete features: columns recorded to a resolution (counts, prices in cents, values
with a fixed number of decimals), found from the data, dequantised over their cells in
training, and restored to their grid in samples."""

from __future__ import annotations

import numpy as np

__all__ = [
    "GRID_TOLERANCE",
    "constant_features",
    "dequantize",
    "find_discrete_features",
    "snap_to_grid",
]

#: Tolerance, in cells, within which every value of a column must sit on its grid.
GRID_TOLERANCE = 1e-3
#: Most cells a column's range may span to count as discrete (beyond this the resolution is
#: far below any useful density detail and the grid test is at the mercy of rounding).
MAX_CELLS = 10**7


def find_discrete_features(X: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """The recording resolution of each column that lies on a grid, 0 for the others.

    A column counts as discrete when a value repeats among the rows of positive weight and
    every value lies (within :data:`GRID_TOLERANCE` of a cell) on the grid ``x_min + k r``,
    where ``r`` is the smallest gap between distinct values: integer counts, prices in cents,
    measurements recorded to a fixed number of decimals, binary columns. A column that holds
    one integer value (below about ``1e12`` in magnitude) in every such row, a count or a
    code that never varied, counts as discrete with ``r = 1``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    sample_weight : array-like of shape (n_samples,), default=None
        Rows of weight 0 are ignored.

    Returns
    -------
    ndarray of shape (n_features,)
        The grid step ``r`` of each discrete column, 0 for continuous columns.

    Examples
    --------
    >>> import numpy as np
    >>> from skffjord import find_discrete_features
    >>> X = np.column_stack([[0, 1, 1, 3], [0.5, 1.5, 1.5, 2.0], [0.1, 0.25, 0.3, 0.7]])
    >>> find_discrete_features(X)
    array([1. , 0.5, 0. ])
    """
    X = np.asarray(X, dtype=np.float64)
    if sample_weight is not None:
        X = X[np.asarray(sample_weight) > 0]
    resolution = np.zeros(X.shape[1])
    for j in range(X.shape[1]):
        values = np.unique(X[:, j])
        if len(values) == 1 and X.shape[0] > 1 and _integer_cell(float(values[0])):
            resolution[j] = 1.0
            continue
        if len(values) < 2 or len(values) == X.shape[0] or not np.all(np.isfinite(values)):
            continue
        span = values[-1] - values[0]
        step = float(np.min(np.diff(values)))
        if not step > 0 or span / step > MAX_CELLS:
            continue
        step = span / round(span / step)  # the step that fits the whole range best
        cells = (values - values[0]) / step
        if np.max(np.abs(cells - np.round(cells))) <= GRID_TOLERANCE:
            resolution[j] = step
    return resolution


def constant_features(
    X: np.ndarray, sample_weight: np.ndarray, resolution: np.ndarray
) -> np.ndarray:
    """The continuous features (``resolution`` 0) that hold one value in every row of
    positive weight: they have no density (it would be infinite).

    Returns
    -------
    ndarray of int
        Their indices.
    """
    rows = np.asarray(X)[np.asarray(sample_weight) > 0]
    flat = np.all(rows == rows[:1], axis=0) & (np.asarray(resolution) == 0)
    return np.flatnonzero(flat)


def _integer_cell(value: float) -> bool:
    """Whether ``value`` is an integer whose unit cell float64 resolves to
    :data:`GRID_TOLERANCE`."""
    return value.is_integer() and float(np.spacing(abs(value))) <= GRID_TOLERANCE


def dequantize(X: np.ndarray, resolution: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``X`` with each discrete column spread uniformly over its cell, ``x + r (U - 1/2)``."""
    if not np.any(resolution > 0):
        return X
    return X + (rng.random(X.shape) - 0.5) * resolution


def snap_to_grid(X: np.ndarray, resolution: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Each discrete column rounded to its grid ``origin + k r`` (continuous ones unchanged).

    Where the grid has a short decimal form (a resolution and an origin within a millionth
    of a cell of numbers of at most ``m + 2`` decimals, with ``10 ** -m`` the resolution's
    order of magnitude: values recorded to ``m`` decimals, whose resolution was measured
    as a difference of two of them), each value is the float nearest that decimal
    (``3.11``, not ``3.1099999999999994``).
    """
    discrete = resolution > 0
    if not np.any(discrete):
        return X
    X = np.array(X, dtype=np.float64, copy=True)
    r, o = resolution[discrete], origin[discrete]
    snapped = o + r * np.round((X[:, discrete] - o) / r)
    for j, (step, start) in enumerate(zip(r, o, strict=True)):
        digits = int(np.ceil(-np.log10(step))) + 2
        near = np.abs(np.round([step, start], digits) - [step, start]) <= 1e-6 * step
        if 0 <= digits <= 15 and near.all():
            snapped[:, j] = np.round(snapped[:, j], digits)
    X[:, discrete] = snapped
    return X
