"""Quantile Gaussianisation of each feature: a fixed, invertible map in front of the flow.

Each feature ``x_j`` is sent to ``u_j = g_j(x_j)``, a continuous, strictly increasing,
piecewise-linear map through the points ``(q_jk, u_k)``: ``u_k`` evenly spaced in
``[-u_max, u_max]`` and ``q_jk`` the training quantile of feature ``j`` at probability
``Phi(u_k)`` (``Phi``: the standard normal CDF), blended with a share ``mix`` of the
Gaussian quantile ``median_j + s_j u_k`` (``s_j``: the interquartile range over 1.349, the
standard deviation where that is zero, else the column's magnitude) so that the knots are
strictly increasing even for tied or constant columns. The knots are placed in standard
units, ``(x_j - median_j) / std_j`` formed without overflow or loss of the spread
(:func:`~skffjord._preprocessing.location_scale`), and mapped back, so the map is the same
at any magnitude and for a spread far below the values' magnitude (``5 + 1e-13 * noise``).
Beyond the outer knots the map continues with the same slope and grows like a square root,
``u = sign(u_K) sqrt(u_K^2 + 2 u_K s_K (x - q_K))``, so the model's tails are exponential in
``x``: an outlier costs nats in proportion to its distance, not to its square, as it would
through an affine standardisation and a Lipschitz flow (Jaini et al., "Tails of Lipschitz
triangular flows", ICML 2020).

The map is fitted once from the training rows (like the standardisation), not trained; its
log-Jacobian ``sum_j log g_j'(x_j)`` is added to every log-density, so scores stay exact
log-densities in the user's units. The flow then models ``u``, whose marginals are close to
standard normal. The same idea (a marginal Gaussianisation layer) underlies RBIG and
Gaussianization Flows (Meng et al., AISTATS 2020); scikit-learn's ``QuantileTransformer``
interpolates quantiles the same way but has no Jacobian or tails.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtr, ndtri
from torch import Tensor, nn

from ._preprocessing import location_scale

__all__ = ["QuantileGaussianizer", "quantile_knots"]

#: Most knot intervals per feature (not tuned).
MAX_INTERVALS = 64
#: Training rows (effective count) per knot interval, at least.
ROWS_PER_INTERVAL = 100
#: Expected training rows beyond each outer knot: the outermost quantiles are estimated from
#: about this many rows.
TAIL_ROWS = 20
#: Share of the Gaussian quantile blended into the knots (keeps them strictly increasing).
GAUSSIAN_MIX = 0.01


def _weighted_quantiles(column: np.ndarray, weight: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Quantiles of a weighted sample, clamped to its range; unchanged when all weights are
    multiplied by one constant.

    With the weights scaled to average 1 over the rows that carry weight: Hazen's plotting
    positions ``(i - 1/2) / n`` for equal weights; a row of scaled weight ``w >= 1`` spans
    the positions that ``w`` repeated copies of it would take among those rows (so a row of
    weight 2 among rows of weight 1 counts as two), a lighter row sits at the middle of its
    share."""
    order = np.argsort(column, kind="stable")
    x, w = column[order], weight[order]
    keep = w > 0
    x, w = x[keep], w[keep]
    w = w / w.mean()
    cum = np.cumsum(w)
    half = np.minimum(0.5, 0.5 * w)
    positions = np.column_stack([cum - w + half, cum - half]).ravel() / cum[-1]
    return np.interp(probs, positions, np.repeat(x, 2))


def quantile_knots(
    X: np.ndarray,
    sample_weight: np.ndarray,
    *,
    max_intervals: int = MAX_INTERVALS,
    rows_per_interval: int = ROWS_PER_INTERVAL,
    tail_rows: float = TAIL_ROWS,
    mix: float = GAUSSIAN_MIX,
) -> tuple[np.ndarray, np.ndarray]:
    """The knots of the per-feature maps, fitted on weighted rows.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    sample_weight : ndarray of shape (n_samples,)
        Non-negative, with a positive sum.
    max_intervals, rows_per_interval, tail_rows, mix
        Resolution: ``clip(n / rows_per_interval, 4, max_intervals)`` intervals for the
        effective sample size ``n = (sum w)^2 / sum w^2`` (the row count for equal weights;
        unchanged when all weights are scaled, so the map depends on the weights' ratios
        only, and integer weights give about, not exactly, the map of repeated rows);
        ``u_max`` such that ``min(tail_rows, n / 4)`` rows are expected beyond each end.

    Returns
    -------
    grid : ndarray of shape (n_intervals + 1,)
        The ``u_k``, evenly spaced and symmetric about 0.
    knots : ndarray of shape (n_features, n_intervals + 1)
        The ``q_jk``, strictly increasing along each row.
    """
    w = np.asarray(sample_weight, dtype=np.float64)
    n_eff = float(w.sum() ** 2 / np.sum(w**2))
    n_intervals = int(np.clip(n_eff // rows_per_interval, 4, max_intervals))
    u_max = float(-ndtri(min(tail_rows, n_eff / 4) / n_eff))
    grid = np.linspace(-u_max, u_max, n_intervals + 1)
    probs = np.concatenate([ndtr(grid), [0.25, 0.5, 0.75]])
    # the knots are placed in standard units (z = (x - loc) / scale, exact at any magnitude
    # and for a tiny spread about a large value), then mapped back to the user's units
    loc, scale = location_scale(X, w)
    Z = (X - loc) / scale
    q = np.stack([_weighted_quantiles(Z[:, j], w, probs) for j in range(X.shape[1])])
    empirical, (q1, median, q3) = q[:, :-3], q[:, -3:].T
    spread = (q3 - q1) / 1.349  # the standard deviation for Gaussian data
    # where the quartiles tie: the standard deviation (1 in these units), or 1 for a column
    # without spread
    spread[~(spread > 1e-12)] = 1.0
    gaussian = median[:, None] + spread[:, None] * grid[None, :]
    knots = loc[:, None] + scale[:, None] * ((1 - mix) * empirical + mix * gaussian)
    return grid, _strictly_increasing(knots)


def _strictly_increasing(knots: np.ndarray) -> np.ndarray:
    """``knots`` with each one raised, where rounding to the user's units left it no higher
    than its predecessor, to the next float above it."""
    knots = knots.copy()
    for k in range(1, knots.shape[1]):
        knots[:, k] = np.maximum(knots[:, k], np.nextafter(knots[:, k - 1], np.inf))
    return knots


class QuantileGaussianizer(nn.Module):
    """Per-feature monotone map ``x -> u`` through quantile knots, with exponential tails.

    Parameters
    ----------
    grid : Tensor of shape (n_intervals + 1,)
        ``u`` at the knots, evenly spaced, ``grid[0] < 0 < grid[-1]``.
    knots : Tensor of shape (n_features, n_intervals + 1)
        ``x`` at the knots, strictly increasing along each row.
    """

    def __init__(self, grid: Tensor, knots: Tensor) -> None:
        super().__init__()
        if not (grid[0] < 0 < grid[-1]) or not bool((knots.diff(dim=1) > 0).all()):
            raise ValueError("the knots must increase strictly and straddle u = 0")
        self.register_buffer("grid", grid.clone())
        self.register_buffer("knots", knots.clone())
        # slope of every interval, shape (n_features, n_intervals)
        self.register_buffer("slopes", grid.diff()[None, :] / knots.diff(dim=1))

    def _tail_rates(self) -> tuple[Tensor, Tensor]:
        """``u_0 s_0`` (negative) and ``u_K s_K`` (positive) per feature, shape (d, 1)."""
        return (
            (self.grid[0] * self.slopes[:, :1]),
            (self.grid[-1] * self.slopes[:, -1:]),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``u = g(x)`` and ``log |det dg/dx|`` per row: shapes ``(n, d)`` and ``(n,)``."""
        xt = x.T.contiguous()  # (d, n): one sorted knot row per feature
        n_intervals = self.slopes.shape[1]
        k = (torch.searchsorted(self.knots, xt, right=True) - 1).clamp(0, n_intervals - 1)
        slope = self.slopes.gather(1, k)
        u = self.grid[k] + (xt - self.knots.gather(1, k)) * slope
        log_slope = torch.log(slope)
        rate_lo, rate_hi = self._tail_rates()
        lo_x, hi_x = self.knots[:, :1], self.knots[:, -1:]
        v_hi = torch.sqrt(self.grid[-1] ** 2 + 2 * rate_hi * (xt - hi_x).clamp(min=0))
        v_lo = -torch.sqrt(self.grid[0] ** 2 + 2 * rate_lo * (xt - lo_x).clamp(max=0))
        above, below = xt > hi_x, xt < lo_x
        u = torch.where(above, v_hi, torch.where(below, v_lo, u))
        log_slope = torch.where(
            above,
            torch.log(rate_hi / v_hi),
            torch.where(below, torch.log(rate_lo / v_lo), log_slope),
        )
        return u.T, log_slope.sum(0)

    def inverse(self, u: Tensor) -> Tensor:
        """``x = g^{-1}(u)``, shape ``(n, d)``."""
        ut = u.T.contiguous()
        n_intervals = self.slopes.shape[1]
        step = (self.grid[-1] - self.grid[0]) / n_intervals
        k = torch.floor((ut - self.grid[0]) / step).long().clamp(0, n_intervals - 1)
        x = self.knots.gather(1, k) + (ut - self.grid[k]) / self.slopes.gather(1, k)
        rate_lo, rate_hi = self._tail_rates()
        x_hi = self.knots[:, -1:] + (ut**2 - self.grid[-1] ** 2) / (2 * rate_hi)
        x_lo = self.knots[:, :1] + (ut**2 - self.grid[0] ** 2) / (2 * rate_lo)
        x = torch.where(ut > self.grid[-1], x_hi, torch.where(ut < self.grid[0], x_lo, x))
        return x.T
