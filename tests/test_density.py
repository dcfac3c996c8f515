"""Learning: the fitted densities are normalised, accurate and beat simple baselines."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from skffjord import FFJORDDensity

COV = np.array([[1.0, 0.8], [0.8, 1.0]])
MEAN = np.array([1.0, -2.0])


def _fit(X, **kw):
    params = dict(
        hidden_layer_sizes=(32, 32),
        batch_size=256,
        solver={"method": "rk4", "options": {"step_size": 0.25}},
        random_state=0,
    )
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FFJORDDensity(**params).fit(X)


@pytest.fixture(scope="module")
def gaussian_model():
    rng = np.random.default_rng(0)
    X = rng.multivariate_normal(MEAN, COV, size=3000)
    return _fit(X, max_iter=40), X


@pytest.fixture(scope="module")
def moons_model():
    X, _ = make_moons(n_samples=3000, noise=0.08, random_state=0)
    return _fit(X, max_iter=60, activation="tanh", learning_rate_init=5e-3), X


def test_correlated_gaussian_loglik_within_005_nats(gaussian_model):
    model, _ = gaussian_model
    X_test = np.random.default_rng(1).multivariate_normal(MEAN, COV, size=5000)
    truth = scipy.stats.multivariate_normal(MEAN, COV)
    model_ll = model.score(X_test)
    true_ll = truth.logpdf(X_test).mean()
    expected_ll = -np.log(2 * np.pi) - 1 - 0.5 * np.log(np.linalg.det(COV))  # -entropy
    print(
        f"held-out mean log-lik: model {model_ll:.4f}, true density {true_ll:.4f}, "
        f"-entropy {expected_ll:.4f}"
    )
    assert abs(model_ll - true_ll) < 0.05
    assert abs(model_ll - expected_ll) < 0.05 + 3 * 1.0 / np.sqrt(len(X_test))


def test_moons_beats_single_gaussian_by_a_clear_margin(moons_model):
    model, X = moons_model
    X_test, _ = make_moons(n_samples=3000, noise=0.08, random_state=1)
    gmm = GaussianMixture(n_components=1, random_state=0).fit(X)
    ours, base = model.score(X_test), gmm.score(X_test)
    print(f"two moons held-out mean log-lik: FFJORD {ours:.4f}, GaussianMixture(1) {base:.4f}")
    assert ours > base + 0.5


def test_density_integrates_to_one_on_a_grid(moons_model):
    model, X = moons_model
    lo, hi = X.min(0) - 1.5, X.max(0) + 1.5
    n = 160
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    mass = np.exp(model.score_samples(grid)).sum() * cell
    print(f"mass of exp(score_samples) on the grid: {mass:.4f}")
    assert abs(mass - 1) < 0.02


def test_samples_match_data_moments(gaussian_model):
    model, X = gaussian_model
    S = model.sample(4000, random_state=0)
    assert S.shape == (4000, 2)
    np.testing.assert_allclose(S.mean(0), X.mean(0), atol=0.08)
    np.testing.assert_allclose(np.cov(S.T), np.cov(X.T), atol=0.1)


def test_sample_then_inverse_round_trip(moons_model):
    model, _ = moons_model
    z = np.random.default_rng(3).standard_normal((300, 2))
    x = model._fitted_flow().to_data(z)
    assert np.abs(x - z).max() > 0.5  # the flow is far from the identity
    # at the default tolerance (rtol 1e-5 per step, float32) and, tightened, far closer
    np.testing.assert_allclose(model._fitted_flow().to_latent(x), z, atol=1e-3)
    default = model.eval_solver
    try:
        model.set_params(eval_solver={"atol": 1e-9, "rtol": 1e-9, "dtype": "float64"})
        fitted = model._fitted_flow()
        np.testing.assert_allclose(fitted.to_latent(fitted.to_data(z)), z, atol=1e-7)
    finally:
        model.set_params(eval_solver=default)


def test_sample_reproducible_and_random_state_respected(gaussian_model):
    model, _ = gaussian_model
    np.testing.assert_array_equal(model.sample(5, random_state=1), model.sample(5, random_state=1))
    assert not np.allclose(model.sample(5, random_state=1), model.sample(5, random_state=2))
