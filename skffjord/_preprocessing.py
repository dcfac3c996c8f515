"""Fixed bijections in front of the flow: discrete-column detection, dequantisation, and the
Gaussian starting model (a smooth per-feature map followed by full-covariance whitening).

The flow's field starts at zero, so an untrained flow is the identity and the model is the
Gaussian that this map defines: a full-covariance Gaussian in the user's units
(:func:`fit_gaussianizing_map` with ``marginal=False``) or, with ``marginal=True``, a Gaussian
after a sinh-arcsinh transform of each feature (Jones and Pewsey, "Sinh-arcsinh distributions",
Biometrika 2009), whose skewness and tail weight are fitted per feature by maximum likelihood.
Training can then only improve on that classical model, and early stopping on held-out rows
keeps the starting model when it does not.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "GaussianizingMap",
    "choose_map",
    "dequantize",
    "find_discrete_features",
    "fit_gaussianizing_map",
    "gaussian_log_likelihood",
    "kfold",
    "snap_to_grid",
]

#: Tolerance, in cells, within which every value of a column must sit on its grid.
GRID_TOLERANCE = 1e-3
#: Most cells a column's range may span to count as discrete (beyond this the resolution is
#: far below any useful density detail and the grid test is at the mercy of rounding).
MAX_CELLS = 10**7
#: Bounds of the sinh-arcsinh tail parameter ``delta`` (1: Gaussian tails; below 1: heavier).
LOG_DELTA_BOUND = 1.2
#: Folds and most rows of the cross-validation by which :func:`choose_map` picks a map.
MAP_CV_FOLDS = 5
MAP_CV_ROWS = 20_000
#: Ridge added to the whitened covariance's diagonal (its scale is 1 there), so that exactly
#: collinear columns still give an invertible map.
COVARIANCE_RIDGE = 1e-6


def find_discrete_features(X: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """The recording resolution of each column that lies on a grid, 0 for the others.

    A column counts as discrete when a value repeats among the rows of positive weight and
    every value lies (within :data:`GRID_TOLERANCE` of a cell) on the grid ``x_min + k r``,
    where ``r`` is the smallest gap between distinct values: integer counts, prices in cents,
    measurements recorded to a fixed number of decimals, binary columns.

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


def dequantize(X: np.ndarray, resolution: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``X`` with each discrete column spread uniformly over its cell, ``x + r (U - 1/2)``."""
    if not np.any(resolution > 0):
        return X
    return X + (rng.random(X.shape) - 0.5) * resolution


def snap_to_grid(X: np.ndarray, resolution: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Each discrete column rounded to its grid ``origin + k r`` (continuous ones unchanged)."""
    discrete = resolution > 0
    if not np.any(discrete):
        return X
    X = np.array(X, dtype=np.float64, copy=True)
    r, o = resolution[discrete], origin[discrete]
    X[:, discrete] = o + r * np.round((X[:, discrete] - o) / r)
    return X


class GaussianizingMap(nn.Module):
    """``u = (y(x) - mean) L^{-T}``: a per-feature sinh-arcsinh map, then whitening.

    ``y_j = sinh(delta_j asinh((x_j - a_j) / b_j) - eps_j)`` is smooth and strictly increasing
    (``delta_j = 1, eps_j = 0``: the affine map ``(x_j - a_j) / b_j``); ``L`` is the Cholesky
    factor of the covariance of ``y``. All buffers are float64; the map is fitted once, not
    trained.

    Parameters
    ----------
    a, b, eps, delta : Tensor of shape (n_features,)
        Location, scale (positive), skewness and tail weight (positive) of each feature.
    mean : Tensor of shape (n_features,)
    chol : Tensor of shape (n_features, n_features)
        Lower-triangular, positive diagonal.
    """

    def __init__(
        self, a: Tensor, b: Tensor, eps: Tensor, delta: Tensor, mean: Tensor, chol: Tensor
    ) -> None:
        super().__init__()
        for name, value in (
            ("a", a),
            ("b", b),
            ("eps", eps),
            ("delta", delta),
            ("mean", mean),
            ("chol", chol),
        ):
            self.register_buffer(name, value.detach().clone())
        self.register_buffer("log_det_whiten", -torch.log(torch.diagonal(chol)).sum())
        #: delta = 1 and eps = 0: y is the affine map itself (not sinh(asinh(s)), which
        #: rounds)
        self.affine = bool((delta == 1).all() and (eps == 0).all())
        eye = torch.eye(chol.shape[0], dtype=chol.dtype)
        self.register_buffer("chol_inv", torch.linalg.solve_triangular(chol, eye, upper=False))

    def marginal(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``y(x)`` and ``sum_j log y_j'(x_j)`` per row."""
        s = (x - self.a) / self.b
        if self.affine:
            return s, -torch.log(self.b).sum().expand(x.shape[0])
        inner = self.delta * torch.asinh(s) - self.eps
        y = _sinh(inner)
        log_slope = (
            torch.log(self.delta) + _log_cosh(inner) - 0.5 * torch.log1p(s * s) - torch.log(self.b)
        )
        return y, log_slope.sum(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``u`` and ``log |det du/dx|`` per row: shapes ``(n, d)`` and ``(n,)``."""
        y, log_det = self.marginal(x)
        u = rowwise_product(y - self.mean, self.chol_inv)
        return u, log_det + self.log_det_whiten

    def inverse(self, u: Tensor) -> Tensor:
        """``x`` for latent rows ``u``, shape ``(n, d)``."""
        y = rowwise_product(u, self.chol) + self.mean
        s = y if self.affine else _sinh((torch.asinh(y) + self.eps) / self.delta)
        return self.a + self.b * s


def rowwise_product(x: Tensor, matrix: Tensor) -> Tensor:
    """``x @ matrix.T`` computed one output column at a time with elementwise products, so
    that each row's result does not depend on the other rows (a matrix product's blocking,
    and so its rounding, can change with the number of rows)."""
    return torch.stack([(x * row).sum(-1) for row in matrix], dim=-1)


def _sinh(v: Tensor) -> Tensor:
    """``sinh(v)`` through ``expm1``, whose rounding does not depend on the other elements
    (PyTorch's vectorised ``sinh`` rounds the elements of a tensor's tail differently, so a
    row's value would change with the number of rows). No gradient is taken through it."""
    a = v.abs()
    e = torch.expm1(a.clamp(max=20.0))
    small = 0.5 * (e + e / (e + 1))
    return torch.sign(v) * torch.where(a > 20.0, 0.5 * torch.exp(a), small)


def _log_cosh(v: Tensor) -> Tensor:
    """``log cosh(v)`` without overflow."""
    a = v.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


def _weighted_moments(X: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = w / w.sum()
    mean = w @ X
    std = np.sqrt(np.maximum(w @ (X - mean) ** 2, 0.0))
    std[~(std > 1e-12 * np.maximum(1.0, np.abs(mean)))] = 1.0
    return mean, std


def _fit_sinh_arcsinh(
    X: np.ndarray, w: np.ndarray, loc: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Maximum-likelihood ``(a, b, eps, delta)`` of every column (columns independent)."""
    x = torch.as_tensor((X - loc) / scale, dtype=torch.float64)
    weight = torch.as_tensor(w / w.sum(), dtype=torch.float64)
    d = X.shape[1]
    params = torch.zeros(4, d, dtype=torch.float64, requires_grad=True)

    def unpack(p: Tensor) -> tuple[Tensor, ...]:
        a, log_b, eps, r = p
        log_delta = LOG_DELTA_BOUND * torch.tanh(r / LOG_DELTA_BOUND)
        return a, torch.exp(log_b), eps, torch.exp(log_delta)

    def nll() -> Tensor:
        a, b, eps, delta = unpack(params)
        s = (x - a) / b
        inner = delta * torch.asinh(s) - eps
        y = torch.sinh(inner)
        ll = -0.5 * y * y + torch.log(delta) + _log_cosh(inner) - 0.5 * torch.log1p(s * s)
        return -(weight @ ll).sum() + torch.log(b).sum()

    optimizer = torch.optim.LBFGS(
        [params], lr=1.0, max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    with torch.no_grad():
        start = float(nll())
    optimizer.step(closure)
    with torch.no_grad():
        end = float(nll())
        if not (math.isfinite(end) and end <= start):
            params.zero_()  # no improvement over the affine map: keep it
        a, b, eps, delta = (t.numpy().copy() for t in unpack(params.detach()))
    return loc + scale * a, scale * b, eps, delta


def fit_gaussianizing_map(
    X: np.ndarray, sample_weight: np.ndarray, *, marginal: bool
) -> GaussianizingMap:
    """The map whose Gaussian fits the weighted rows ``X`` by maximum likelihood.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    sample_weight : ndarray of shape (n_samples,)
        Non-negative, positive sum; only their ratios count.
    marginal : bool
        Fit each feature's sinh-arcsinh skewness and tail weight (``True``) or keep the
        affine map (``False``: the model is the full-covariance Gaussian).
    """
    w = np.asarray(sample_weight, dtype=np.float64)
    loc, scale = _weighted_moments(X, w)
    d = X.shape[1]
    if marginal:
        a, b, eps, delta = _fit_sinh_arcsinh(X, w, loc, scale)
    else:
        a, b, eps, delta = loc, scale, np.zeros(d), np.ones(d)
    as_t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64))  # noqa: E731
    identity = GaussianizingMap(
        as_t(a),
        as_t(b),
        as_t(eps),
        as_t(delta),
        torch.zeros(d, dtype=torch.float64),
        torch.eye(d, dtype=torch.float64),
    )
    with torch.no_grad():
        y = identity.marginal(as_t(X))[0].numpy()
    p = w / w.sum()
    mean = p @ y
    centred = y - mean
    cov = (centred * p[:, None]).T @ centred
    cov = 0.5 * (cov + cov.T) + COVARIANCE_RIDGE * np.diag(np.maximum(np.diag(cov), 1e-300))
    cov[np.diag_indices(d)] = np.maximum(np.diag(cov), 1e-12)
    chol = np.linalg.cholesky(cov)
    return GaussianizingMap(as_t(a), as_t(b), as_t(eps), as_t(delta), as_t(mean), as_t(chol))


def gaussian_log_likelihood(
    gaussianizer: GaussianizingMap, X: np.ndarray, sample_weight: np.ndarray
) -> float:
    """Weighted mean log-likelihood of rows ``X`` (user's units) under the map's Gaussian."""
    with torch.no_grad():
        u, log_det = gaussianizer(torch.as_tensor(X, dtype=torch.float64))
        ll = -0.5 * (u * u).sum(-1) - 0.5 * X.shape[1] * math.log(2 * math.pi) + log_det
    ll = ll.numpy()
    w = np.asarray(sample_weight, dtype=np.float64)
    value = float(np.sum(ll * w) / w.sum())
    return value if math.isfinite(value) else -math.inf


def kfold(indices: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit, held)`` pairs: ``indices`` cut into ``min(n_folds, len(indices))`` consecutive
    parts, each held out once (shuffle ``indices`` first for random folds)."""
    parts = np.array_split(indices, min(n_folds, len(indices)))
    return [(np.concatenate(parts[:k] + parts[k + 1 :]), held) for k, held in enumerate(parts)]


def choose_map(
    X: np.ndarray, sample_weight: np.ndarray, rng: np.random.Generator
) -> tuple[str, dict[str, float] | None]:
    """'affine' or 'sinh_arcsinh', whichever map's Gaussian has the higher cross-validated
    log-likelihood on the rows ``X`` (:data:`MAP_CV_FOLDS` folds over at most
    :data:`MAP_CV_ROWS` rows of positive weight), with each one's score; 'affine' without two
    such rows."""
    rows = np.flatnonzero(sample_weight > 0)
    if len(rows) < 2:
        return "affine", None
    folds = kfold(rng.permutation(rows)[:MAP_CV_ROWS], MAP_CV_FOLDS)
    scores = {}
    for kind in ("affine", "sinh_arcsinh"):
        total = weight = 0.0
        for fit, held in folds:
            gaussianizer = fit_gaussianizing_map(
                X[fit], sample_weight[fit], marginal=kind == "sinh_arcsinh"
            )
            score = gaussian_log_likelihood(gaussianizer, X[held], sample_weight[held])
            total += score * sample_weight[held].sum()
            weight += sample_weight[held].sum()
        scores[kind] = total / weight
    return max(scores, key=scores.get), scores
