"""Declared bounds of features: the log and logit maps that open them onto the real line.

A feature known to lie in ``[low, high]`` (a pixel intensity, a percentage, a count that
cannot be negative) has no density outside it. A model fitted in the user's units puts mass
there, and a point mass at the bound (many zeros) is a box that a smooth density on the real
line fits poorly. Mapping the feature through

- ``log(x - low)`` (lower bound only),
- ``-log(high - x)`` (upper bound only),
- ``logit((x - low) / (high - low))`` (both),

before the rest of the model keeps all mass inside and turns the bound into a tail; the
density in the user's units carries the map's log-Jacobian. For a discrete feature (see
:func:`~skffjord.find_discrete_features`) the bounds apply to the recorded values, so the
dequantised values fill ``[low - step / 2, high + step / 2]`` and the map opens that interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "BoundsMap",
    "ChainedMap",
    "check_bounds",
    "check_inside",
    "fit_rows",
    "outside_support",
    "support",
]


def _feature_index(key: Any, n_features: int, feature_names: np.ndarray | None) -> int:
    if isinstance(key, str):
        if feature_names is None or key not in list(feature_names):
            raise ValueError(f"bounds names feature {key!r}, which X does not have.")
        return int(list(feature_names).index(key))
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        if not -n_features <= key < n_features:
            raise ValueError(f"bounds names feature {key}, but X has {n_features} features.")
        return int(key) % n_features
    raise ValueError(f"bounds keys must be feature names or indices, got {key!r}.")


def check_bounds(
    bounds: Mapping | Sequence | np.ndarray | None,
    n_features: int,
    feature_names: np.ndarray | None = None,
) -> np.ndarray:
    """The declared bounds as an array of shape ``(n_features, 2)`` (``-inf``/``inf``: none).

    ``bounds`` is ``None``, an array-like of ``(low, high)`` pairs, one per feature, or a
    mapping from feature names or indices to ``(low, high)``; ``None`` in a pair means no
    bound on that side.
    """
    out = np.tile([-np.inf, np.inf], (n_features, 1))
    if bounds is None:
        return out
    if isinstance(bounds, Mapping):
        items = [(_feature_index(k, n_features, feature_names), v) for k, v in bounds.items()]
    else:
        pairs = list(bounds)
        if len(pairs) != n_features:
            raise ValueError(
                f"bounds has {len(pairs)} pairs, but X has {n_features} features; give one "
                "(low, high) pair per feature or a dict of the bounded features."
            )
        items = list(enumerate(pairs))
    for j, pair in items:
        try:
            low, high = pair
            low = -np.inf if low is None else float(low)
            high = np.inf if high is None else float(high)
        except (TypeError, ValueError):
            raise ValueError(
                f"bounds of feature {j} must be a (low, high) pair of numbers or None, "
                f"got {pair!r}."
            ) from None
        if np.isnan(low) or np.isnan(high) or not low < high:
            raise ValueError(f"bounds of feature {j} must satisfy low < high, got {pair!r}.")
        out[j] = low, high
    return out


def support(bounds: np.ndarray, resolution: np.ndarray) -> np.ndarray:
    """The open interval each feature's density lives on: the declared bounds, widened by
    half a recording step for discrete features, whose dequantised values fill the cells."""
    half = np.where(resolution > 0, resolution / 2, 0.0)
    return np.column_stack([bounds[:, 0] - half, bounds[:, 1] + half])


def outside_support(X: np.ndarray, interval: np.ndarray) -> np.ndarray:
    """Rows of ``X`` with a value on or beyond a bound of ``interval`` (shape (n, 2))."""
    return np.any((X <= interval[:, 0]) | (X >= interval[:, 1]), axis=1)


def check_inside(X: np.ndarray, bounds: np.ndarray, interval: np.ndarray) -> None:
    """Raise if a row of ``X`` lies on or beyond the support ``interval`` of ``bounds``."""
    outside = outside_support(X, interval)
    if outside.any():
        row = X[outside][0]
        j = int(np.flatnonzero((row <= interval[:, 0]) | (row >= interval[:, 1]))[0])
        raise ValueError(
            f"X has values on or outside the bounds of feature {j} ({bounds[j, 0]}, "
            f"{bounds[j, 1]}), e.g. {row[j]!r}; a continuous feature must lie strictly "
            "inside its bounds (a discrete one within them)."
        )


class BoundsMap(nn.Module):
    """Per-feature log / logit map of features with bounds; other features pass through.

    Parameters
    ----------
    interval : ndarray of shape (n_features, 2)
        Open interval of each feature (``-inf``/``inf`` where unbounded), see
        :func:`support`.
    """

    def __init__(self, interval: np.ndarray) -> None:
        super().__init__()
        interval = torch.as_tensor(np.asarray(interval, dtype=np.float64))
        low, high = interval[:, 0], interval[:, 1]
        lower, upper = torch.isfinite(low), torch.isfinite(high)
        self.register_buffer("low", torch.where(lower, low, 0.0))
        self.register_buffer("high", torch.where(upper, high, 1.0))
        self.register_buffer("both", lower & upper)
        self.register_buffer("lower_only", lower & ~upper)
        self.register_buffer("upper_only", upper & ~lower)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The mapped rows and each row's ``log |det dy/dx|``, shape ``(batch,)``."""
        low, high = self.low.to(x.dtype), self.high.to(x.dtype)
        width = high - low
        p = (x - low) / width
        log_p, log_q = torch.log(p), torch.log1p(-p)
        from_low, to_high = torch.log(x - low), torch.log(high - x)
        y = torch.where(self.both, log_p - log_q, x)
        y = torch.where(self.lower_only, from_low, y)
        y = torch.where(self.upper_only, -to_high, y)
        log_slope = torch.where(self.both, -torch.log(width) - log_p - log_q, 0.0)
        log_slope = torch.where(self.lower_only, -from_low, log_slope)
        log_slope = torch.where(self.upper_only, -to_high, log_slope)
        return y, log_slope.sum(-1)

    def inverse(self, y: Tensor) -> Tensor:
        """The rows whose map is ``y``, inside the bounds."""
        low, high = self.low.to(y.dtype), self.high.to(y.dtype)
        x = torch.where(self.both, low + (high - low) * torch.sigmoid(y), y)
        x = torch.where(self.lower_only, low + torch.exp(y), x)
        return torch.where(self.upper_only, high - torch.exp(-y), x)


class ChainedMap(nn.Module):
    """``second(first(x))`` with the log-Jacobians added; either may be ``None``."""

    def __init__(self, first: nn.Module, second: nn.Module | None) -> None:
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_det = self.first(x)
        if self.second is None:
            return y, log_det
        u, log_det_second = self.second(y)
        return u, log_det + log_det_second

    def inverse(self, u: Tensor) -> Tensor:
        y = u if self.second is None else self.second.inverse(u)
        return self.first.inverse(y)


def fit_rows(
    X: np.ndarray, sample_weight: np.ndarray, bounds: np.ndarray, interval: np.ndarray
) -> np.ndarray:
    """The training rows checked against the bounds: a weighted row outside ``interval``
    raises (:func:`check_inside`); a row of zero weight outside is replaced by a weighted
    row, which it weighs as little as, so that the maps stay finite."""
    outside = outside_support(X, interval)
    check_inside(X[outside & (sample_weight > 0)], bounds, interval)
    if outside.any():
        X = np.where(outside[:, None], X[sample_weight > 0][0], X)
    return X
