"""The fixed bijection in front of the flow that defines the Gaussian starting model: a
smooth per-feature map followed by full-covariance whitening.

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

from ._bounds import ChainedMap

__all__ = [
    "GaussianizingMap",
    "choose_map",
    "fit_gaussianizing_map",
    "gaussian_log_likelihood",
    "kfold",
    "location_scale",
    "standardizing_map",
]

#: Bounds of the sinh-arcsinh tail parameter ``delta`` (1: Gaussian tails; below 1: heavier).
LOG_DELTA_BOUND = 1.2
#: Folds and most rows of the cross-validation by which :func:`choose_map` picks a map.
MAP_CV_FOLDS = 5
MAP_CV_ROWS = 20_000
#: Most rows the sinh-arcsinh parameters are fitted on (a fixed subsample beyond): the
#: search holds several float64 copies of its rows, and four numbers per feature are
#: determined by far fewer rows (``python benchmarks/memory.py`` measures the fit's memory).
MAP_FIT_ROWS = 20_000
#: Ridge added to the whitened covariance's diagonal (its scale is 1 there), so that exactly
#: collinear columns still give an invertible map.
COVARIANCE_RIDGE = 1e-6


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


def _weighted_median(column: np.ndarray, w: np.ndarray) -> float:
    """The lower weighted median of ``column``: a value of the column itself."""
    order = np.argsort(column, kind="stable")
    cumulative = np.cumsum(w[order])
    return float(column[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def location_scale(X: np.ndarray, sample_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's weighted median and weighted standard deviation, at any magnitude.

    The median is a value of the column, so ``x - median`` is exact wherever ``x`` lies
    within a factor 2 of it (Sterbenz's lemma): a feature ``5 + 1e-13 * noise`` keeps all
    its spread. The deviations are formed after dividing each feature by a power of two
    that brings its largest magnitude below 1 (exact), so no square overflows at ``1e160``
    nor underflows at ``1e-160``; the results scale exactly with the data under a power of
    two. A feature without spread among the rows of positive weight gets the scale of its
    magnitude (1 at 0).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Finite values.
    sample_weight : ndarray of shape (n_samples,)
        Non-negative, positive sum; rows of weight 0 have no say.

    Returns
    -------
    loc, scale : ndarray of shape (n_features,)
        ``scale`` is positive and finite.
    """
    w = np.asarray(sample_weight, dtype=np.float64)
    keep = w > 0
    X, w = np.asarray(X, dtype=np.float64)[keep], w[keep]
    p = w / w.sum()
    loc = np.array([_weighted_median(X[:, j], w) for j in range(X.shape[1])])
    exponent = np.frexp(np.abs(X).max(axis=0, initial=0.0))[1]
    deviation = np.ldexp(X, -exponent) - np.ldexp(loc, -exponent)  # |deviation| < 2
    shift = p @ deviation
    centred = deviation - shift
    spread = np.sqrt(p @ (centred * centred))
    with np.errstate(over="ignore"):
        scale = np.minimum(np.ldexp(spread, exponent), np.finfo(np.float64).max)
    flat = ~(scale > 0)
    scale[flat] = np.ldexp(1.0, np.frexp(np.abs(loc[flat]))[1])
    return loc, scale


def _fit_sinh_arcsinh(Z: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Maximum-likelihood ``(a, b, eps, delta)`` of every column of ``Z`` (columns
    independent; in standard units, where the search starts from the affine map), on at
    most :data:`MAP_FIT_ROWS` of its rows (a fixed random subsample beyond)."""
    if len(Z) > MAP_FIT_ROWS:  # four numbers per feature: a fixed subsample fits them
        rows = np.sort(np.random.default_rng(0).choice(len(Z), MAP_FIT_ROWS, replace=False))
        Z, w = Z[rows], w[rows]
    x = torch.as_tensor(Z, dtype=torch.float64)
    weight = torch.as_tensor(w / w.sum(), dtype=torch.float64)
    d = Z.shape[1]
    initial = torch.zeros(4, d, dtype=torch.float64)
    initial[0] = weight @ x  # the affine map onto mean 0 and standard deviation 1
    params = initial.clone().requires_grad_(True)

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
            params.copy_(initial)  # no improvement over the affine map: keep it
        return tuple(t.numpy().copy() for t in unpack(params.detach()))


def standardizing_map(loc: np.ndarray, scale: np.ndarray) -> GaussianizingMap:
    """The map ``(x - loc) / scale`` of each feature (no whitening), as a
    :class:`GaussianizingMap`."""
    d = len(loc)
    as_t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64))  # noqa: E731
    return GaussianizingMap(
        as_t(loc),
        as_t(scale),
        torch.zeros(d, dtype=torch.float64),
        torch.ones(d, dtype=torch.float64),
        torch.zeros(d, dtype=torch.float64),
        torch.eye(d, dtype=torch.float64),
    )


def _whitened(
    X: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray, eps: np.ndarray, delta: np.ndarray
) -> GaussianizingMap:
    """The per-feature map ``(a, b, eps, delta)`` followed by the whitening of its output on
    the weighted rows ``X``."""
    d = X.shape[1]
    as_t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64))  # noqa: E731
    unwhitened = GaussianizingMap(
        as_t(a),
        as_t(b),
        as_t(eps),
        as_t(delta),
        torch.zeros(d, dtype=torch.float64),
        torch.eye(d, dtype=torch.float64),
    )
    with torch.no_grad():
        y = unwhitened.marginal(as_t(X))[0].numpy()
    p = w / w.sum()
    mean = p @ y
    centred = y - mean
    cov = (centred * p[:, None]).T @ centred
    cov = 0.5 * (cov + cov.T) + COVARIANCE_RIDGE * np.diag(np.maximum(np.diag(cov), 1e-300))
    cov[np.diag_indices(d)] = np.maximum(np.diag(cov), 1e-12)
    chol = np.linalg.cholesky(cov)
    return GaussianizingMap(as_t(a), as_t(b), as_t(eps), as_t(delta), as_t(mean), as_t(chol))


def fit_gaussianizing_map(
    X: np.ndarray, sample_weight: np.ndarray, *, marginal: bool
) -> GaussianizingMap | ChainedMap:
    """The map whose Gaussian fits the weighted rows ``X`` by maximum likelihood.

    Each feature is first brought to standard units, ``(x - median) / std``
    (:func:`location_scale`: exact at any magnitude and for a spread far below the values'
    magnitude), where the whitening, and the sinh-arcsinh fit, take place.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    sample_weight : ndarray of shape (n_samples,)
        Non-negative, positive sum; only their ratios count.
    marginal : bool
        Fit each feature's sinh-arcsinh skewness and tail weight (``True``) or keep the
        affine map (``False``: the model is the full-covariance Gaussian).

    Returns
    -------
    GaussianizingMap or ChainedMap
        The affine map (``marginal=False``) with ``a`` the median and ``b`` the standard
        deviation; with ``marginal=True``, :func:`standardizing_map` followed by the
        sinh-arcsinh map fitted in standard units (its location and scale are kept in those
        units, where float64 holds them to full precision).
    """
    w = np.asarray(sample_weight, dtype=np.float64)
    X, w = X[w > 0], w[w > 0]  # rows of weight 0 have no say, whatever their values
    loc, scale = location_scale(X, w)
    d = X.shape[1]
    if not marginal:
        return _whitened(X, w, loc, scale, np.zeros(d), np.ones(d))
    Z = (X - loc) / scale
    inner = _whitened(Z, w, *_fit_sinh_arcsinh(Z, w))
    return ChainedMap(standardizing_map(loc, scale), inner)


def gaussian_log_likelihood(
    gaussianizer: nn.Module, X: np.ndarray, sample_weight: np.ndarray
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
