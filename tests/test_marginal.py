"""The quantile Gaussianisation in front of the flow (``standardize='quantile'``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity
from skffjord._marginal import QuantileGaussianizer, quantile_knots


def _gaussianizer(X, weight=None):
    weight = np.ones(len(X)) if weight is None else weight
    grid, knots = quantile_knots(X, weight)
    return QuantileGaussianizer(torch.as_tensor(grid), torch.as_tensor(knots)), grid, knots


@pytest.fixture(scope="module")
def heavy():
    """Heavy-tailed, skewed and tied columns."""
    rng = np.random.default_rng(0)
    n = 20_000
    return np.column_stack(
        [
            np.sinh(1.5 * rng.normal(size=n)),  # heavy tails
            rng.exponential(size=n),  # skewed, bounded below
            rng.integers(0, 3, size=n).astype(float),  # three tied values
            np.full(n, 7.0),  # constant
        ]
    )


def test_knots_increase_strictly_even_for_tied_and_constant_columns(heavy):
    _, grid, knots = _gaussianizer(heavy)
    assert grid[0] == -grid[-1] and np.allclose(np.diff(grid), grid[1] - grid[0])
    assert len(grid) == 65  # 20,000 rows: the 64-interval cap, not the 100-rows floor
    assert (np.diff(knots, axis=1) > 0).all()


def test_round_trip_body_and_tails(heavy):
    marginal, _, knots = _gaussianizer(heavy)
    rng = np.random.default_rng(1)
    x = np.concatenate([heavy[:500], heavy[:500] * 50, -heavy[:500] * 50])  # far outside too
    x = torch.as_tensor(x)
    u, _ = marginal(x)
    np.testing.assert_allclose(marginal.inverse(u).numpy(), x.numpy(), rtol=1e-10, atol=1e-10)
    z = torch.as_tensor(rng.normal(scale=3.0, size=(2000, 4)))
    np.testing.assert_allclose(marginal(marginal.inverse(z))[0].numpy(), z.numpy(), atol=1e-10)
    # the knots map onto the grid, and the map is continuous there (tails included)
    at_knots = torch.as_tensor(knots.T)
    np.testing.assert_allclose(
        marginal(at_knots)[0].numpy(), marginal.grid.numpy()[:, None] * np.ones((1, 4)), atol=1e-12
    )


def test_log_det_is_the_derivative_and_map_increases(heavy):
    marginal, _, knots = _gaussianizer(heavy)
    lo, hi = knots[:, 0] - 30, knots[:, -1] + 30
    x = torch.as_tensor(np.linspace(lo, hi, 40_001))  # (n, 4), crosses every knot and tail
    u, log_det = marginal(x)
    assert (u.diff(dim=0) > 0).all()
    h = 1e-6
    slopes = [
        (marginal(x + h * e)[0] - marginal(x - h * e)[0])[:, j] / (2 * h)
        for j, e in enumerate(torch.eye(4, dtype=torch.float64))
    ]
    numeric = torch.stack(slopes, 1).log().sum(1)
    near_knot = (
        (x.T[:, :, None] - torch.as_tensor(knots)[:, None, :]).abs().min(-1).values < 2 * h
    ).any(0)
    np.testing.assert_allclose(log_det[~near_knot].numpy(), numeric[~near_knot].numpy(), atol=1e-5)


@pytest.mark.parametrize("column", [0, 1, 2])
def test_each_marginal_map_is_a_normalised_density(heavy, column):
    """``phi(g(x)) g'(x)`` integrates to one: a change of variables from N(0, 1)."""
    marginal, _, knots = _gaussianizer(heavy[:, [column]])
    ends = marginal.inverse(torch.tensor([[-9.0], [9.0]], dtype=torch.float64)).numpy()
    xs = np.linspace(ends[0, 0], ends[1, 0], 2_000_001)
    u, log_det = marginal(torch.as_tensor(xs[:, None]))
    density = scipy.stats.norm.pdf(u[:, 0].numpy()) * np.exp(log_det.numpy())
    assert abs(np.trapezoid(density, xs) - 1) < 1e-4
    # most of the mass lies between the outer knots; the tails carry the rest
    inside = (xs >= knots[0, 0]) & (xs <= knots[0, -1])
    assert 0.99 < np.trapezoid(density[inside], xs[inside]) < 1


def test_weights_count_by_their_ratios(heavy):
    from skffjord._marginal import _weighted_quantiles

    rng = np.random.default_rng(2)
    X = heavy[:3000, :3]
    w = rng.integers(0, 4, size=len(X)).astype(float)
    grid, knots = quantile_knots(X, w)
    # the same map for weights scaled by any constant (count-style or normalised weights)
    for c in (1e-4, 100.0):
        grid_c, knots_c = quantile_knots(X, c * w)
        np.testing.assert_allclose(grid_c, grid, rtol=1e-12)
        np.testing.assert_allclose(knots_c, knots, rtol=1e-12, atol=1e-12)
    # the resolution follows the effective sample size, (sum w)^2 / sum w^2
    n_eff = w.sum() ** 2 / (w**2).sum()
    assert len(grid) - 1 == n_eff // 100
    # integer weights: about the quantiles of repeated rows (within a row's spacing)
    repeated = np.repeat(X, w.astype(int), axis=0)
    probs = np.linspace(0.02, 0.98, 49)
    for j in range(3):
        a = _weighted_quantiles(X[:, j], w, probs)
        b = _weighted_quantiles(repeated[:, j], np.ones(len(repeated)), probs)
        spacing = np.diff(np.sort(X[:, j])).max()
        assert np.abs(a - b).max() < spacing
    # rows of weight zero have no say
    moved = X[:, 0].copy()
    moved[w == 0] = 1e6
    np.testing.assert_array_equal(
        _weighted_quantiles(moved, w, probs), _weighted_quantiles(X[:, 0], w, probs)
    )


@pytest.mark.parametrize("value", [0.0, -3.0, 1e14, -1e300])
@pytest.mark.parametrize("n", [1, 2, 5, 1000])
def test_constant_and_tiny_columns_stay_invertible(value, n):
    X = np.full((n, 2), value)
    X[:, 1] = np.arange(n)
    marginal, _, knots = _gaussianizer(X)
    assert (np.diff(knots, axis=1) > 0).all()
    u, log_det = marginal(torch.as_tensor(X))
    assert torch.isfinite(u).all() and torch.isfinite(log_det).all()
    np.testing.assert_allclose(marginal.inverse(u).numpy(), X, rtol=1e-12, atol=1e-12)


def test_training_rows_come_out_near_standard_normal(heavy):
    """Up to the 1% blend with a Gaussian quantile (which bends the bounded column's lower
    end)."""
    X = heavy[:, :2]
    marginal, _, _ = _gaussianizer(X)
    u = marginal(torch.as_tensor(X))[0].numpy()
    np.testing.assert_allclose(u.mean(0), 0, atol=0.05)
    np.testing.assert_allclose(u.std(0), 1, atol=0.05)
    assert np.abs(scipy.stats.skew(u)).max() < 0.2  # exponential: 2, sinh: 0 but kurtotic
    assert np.abs(scipy.stats.kurtosis(u)).max() < 0.3
    assert np.abs(scipy.stats.kurtosis(X)).min() > 5  # what the affine map would leave


def _fit(X, **kw):
    params = dict(hidden_layer_sizes=(32, 32), max_iter=15, random_state=0, n_components=1)
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FFJORDDensity(**params).fit(X)


def test_quantile_beats_affine_on_heavy_tails_and_stays_normalised():
    rng = np.random.default_rng(3)
    X = np.sinh(1.5 * rng.normal(size=(4000, 1)))
    X_test = np.sinh(1.5 * rng.normal(size=(4000, 1)))
    truth = scipy.stats.norm(scale=1.5).logpdf(np.arcsinh(X_test)) - 0.5 * np.log1p(X_test**2)
    quantile = _fit(X, standardize="quantile")
    affine = _fit(X, standardize="affine")
    q, a, t = quantile.score(X_test), affine.score(X_test), truth.mean()
    print(f"held-out log-lik: quantile {q:.3f}, affine {a:.3f}, truth {t:.3f}")
    assert q > a + 0.3
    assert abs(q - t) < 0.1
    # normalised: the density's mass over a grid reaching far into both tails
    xs = np.sinh(np.linspace(-12, 12, 200_001))
    mass = np.trapezoid(np.exp(quantile.score_samples(xs[:, None])), xs)
    assert abs(mass - 1) < 5e-3


def test_quantile_model_round_trips_and_reports_user_units():
    rng = np.random.default_rng(4)
    X = np.column_stack([np.sinh(rng.normal(size=2000)), rng.exponential(size=2000) * 100])
    model = _fit(X, standardize="quantile", early_stopping=True)
    standardize, quantile = model.flow_.marginal.first, model.flow_.marginal.second
    assert standardize.a.dtype == standardize.b.dtype == torch.float64
    assert quantile.knots.dtype == torch.float64  # not rounded by float32 training
    z = rng.normal(size=(200, 2))
    x = model._fitted_flow().to_data(z)
    np.testing.assert_allclose(model._fitted_flow().to_latent(x), z, atol=2e-3)
    # the validation score is the held-out mean log-likelihood in the user's units
    # (its rows' mean log-Jacobian is about -4.6 nats: the second column's scale is ~100)
    assert model.history_[-1]["phase"] == "likelihood"
    assert abs(model.best_validation_score_ - model.score(X)) < 0.5
    path = model.trajectory(X[:5], n_times=3)
    np.testing.assert_allclose(path[0], X[:5], rtol=1e-9)


def test_warm_start_keeps_the_fitted_map():
    rng = np.random.default_rng(5)
    X = np.sinh(rng.normal(size=(600, 2)))
    model = _fit(X, standardize="quantile", warm_start=True, max_iter=2)
    fixed = {name: v.clone() for name, v in model.flow_.marginal.state_dict().items()}
    model.fit(X * 3)  # a warm refit trains the flow further; the map stays
    torch.testing.assert_close(model.flow_.marginal.state_dict(), fixed)
    model.set_params(standardize="affine")
    with pytest.raises(ValueError, match="standardize"):
        model.fit(X)
