"""The defaults that start from a classical model: the map chosen by cross-validation, the
Gaussian-mixture base, dequantisation of discrete columns, and a fit that never ends below
its starting model on the validation rows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity

SMALL = dict(hidden_layer_sizes=(16, 16), random_state=0)


def _fit(X, **kw):
    params = dict(SMALL, max_iter=3)
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FFJORDDensity(**params).fit(X)


def _heavy(rng, n):
    return np.sinh(1.5 * rng.normal(size=(n, 3)))


def _gaussian(rng, n):
    cov = np.full((3, 3), 0.9) + 0.1 * np.eye(3)
    return rng.multivariate_normal([1.0, -2.0, 3.0], cov, size=n)


def test_defaults():
    model = FFJORDDensity()
    assert model.standardize == "auto" and model.n_components == "auto"
    assert model.discrete_features == "auto" and model.early_stopping
    assert model.max_iter is None


def test_auto_map_is_the_cross_validated_choice():
    heavy = _fit(_heavy(np.random.default_rng(1), 1000), n_components=1)
    scores = heavy.standardize_scores_
    assert set(scores) == {"affine", "sinh_arcsinh"}
    assert heavy.standardize_ == "sinh_arcsinh" and scores["sinh_arcsinh"] > scores["affine"] + 1
    gauss = _fit(_gaussian(np.random.default_rng(2), 1000), n_components=1)
    assert gauss.standardize_ == max(gauss.standardize_scores_, key=gauss.standardize_scores_.get)
    assert (
        abs(gauss.standardize_scores_["sinh_arcsinh"] - gauss.standardize_scores_["affine"]) < 0.05
    )


def test_the_choice_is_in_the_users_units_and_equivariant():
    """Rescaling the data by 1000 shifts every score by -d log 1000 and changes no choice."""
    X = _heavy(np.random.default_rng(2), 600)
    a, b = _fit(X, max_iter=2), _fit(1000 * X + 5, max_iter=2)
    assert a.standardize_ == b.standardize_ and a.n_components_ == b.n_components_
    for kind, score in a.standardize_scores_.items():
        shifted = b.standardize_scores_[kind] + 3 * np.log(1000)
        assert abs(score - shifted) < 1e-3 * max(1.0, abs(score))
    np.testing.assert_allclose(
        a.score_samples(X[:50]), b.score_samples(1000 * X[:50] + 5) + 3 * np.log(1000), atol=5e-3
    )


def test_a_fit_that_only_harms_keeps_the_starting_gaussian():
    """A step size of 1 wrecks the field; with early stopping the fit keeps its start, the
    full-covariance Gaussian of the training rows, exactly (the field is zero)."""
    X = _gaussian(np.random.default_rng(3), 300)
    model = _fit(
        X,
        standardize="affine",
        n_components=1,
        learning_rate_init=1.0,
        training="likelihood",
        max_iter=3,
        discrete_features=None,
    )
    m = model.flow_.marginal  # x = a + b * (mean + chol u): the starting Gaussian
    chol = m.chol.numpy() * m.b.numpy()[:, None]
    mean, cov = m.a.numpy() + m.b.numpy() * m.mean.numpy(), chol @ chol.T
    np.testing.assert_allclose(mean, X.mean(0), atol=0.2)  # fitted on 90% of the rows
    np.testing.assert_allclose(cov, np.cov(X.T), atol=0.2)
    expected = multivariate_normal(mean, cov).logpdf(X[:20])
    np.testing.assert_allclose(model.score_samples(X[:20]), expected, atol=1e-4)


def test_clusters_get_a_mixture_base_that_scores_above_one_gaussian():
    rng = np.random.default_rng(4)
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    X = centres[rng.integers(0, 3, 1500)] + 0.5 * rng.normal(size=(1500, 2))
    test = centres[rng.integers(0, 3, 500)] + 0.5 * rng.normal(size=(500, 2))
    model = _fit(X, standardize="affine", max_iter=2)
    assert (
        model.n_components_ >= 3 and model.n_components_scores_[3] > model.n_components_scores_[1]
    )
    single = multivariate_normal(X.mean(0), np.cov(X.T)).logpdf(test).mean()
    assert model.score(test) > single + 1.0
    draws = model.sample(3000, random_state=0)
    nearest = np.argmin(((draws[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=3) / 3000, 1 / 3, atol=0.05)


def test_counts_are_dequantised_and_the_scores_form_a_probability_mass():
    """Poisson counts: the column is found (cell width 1), samples are counts, and the
    density at the integers sums to about 1 (the score is a log-mass per unit cell)."""
    rng = np.random.default_rng(5)
    X = rng.poisson(4.0, size=(1500, 1)).astype(float)
    model = _fit(X, max_iter=4)
    np.testing.assert_array_equal(model.discrete_features_, [1.0])
    grid = np.arange(-5, 30, dtype=float)[:, None]
    mass = np.exp(model.score_samples(grid)).sum()
    assert mass == pytest.approx(1.0, abs=0.05)
    draws = model.sample(500, random_state=0)
    np.testing.assert_array_equal(draws, np.round(draws))
    assert abs(draws.mean() - 4.0) < 0.5
    off = _fit(X, max_iter=2, discrete_features=None)
    np.testing.assert_array_equal(off.discrete_features_, [0.0])


def test_discrete_features_given_by_the_user():
    X = np.random.default_rng(6).normal(size=(200, 2))
    model = _fit(X, max_iter=1, discrete_features=[0.0, 0.5])
    np.testing.assert_array_equal(model.discrete_features_, [0.0, 0.5])
    draws = model.sample(50, random_state=0)
    offset = X[:, 1].min()
    np.testing.assert_allclose((draws[:, 1] - offset) / 0.5, np.round((draws[:, 1] - offset) / 0.5))
    for bad in ([1.0], [0.0, -1.0], [0.0, np.nan]):
        with pytest.raises(ValueError, match="discrete_features"):
            _fit(X, max_iter=1, discrete_features=bad)


def test_max_iter_none_with_max_time_has_no_epoch_cap(monkeypatch):
    """On a fake clock that advances 50 ms at every reading: the fit ends by the clock."""
    import itertools
    import time

    readings = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 0.05 * next(readings))
    X = _gaussian(np.random.default_rng(7), 200)
    model = _fit(X, max_iter=None, max_time=2.0, n_iter_no_change=10**6)
    assert model.stop_reason_ == "max_time"
    assert abs(model.history_[-1]["time"] - 2.0) <= 5 * 0.05  # within a few readings


def test_warm_refit_keeps_the_map_and_the_base():
    X = _heavy(np.random.default_rng(8), 600)
    model = _fit(X, max_iter=2, warm_start=True)
    kind, k = model.standardize_, model.n_components_
    fixed = {name: v.clone() for name, v in model.flow_.marginal.state_dict().items()}
    model.fit(X * 3)
    assert model.standardize_ == kind and model.n_components_ == k
    torch.testing.assert_close(model.flow_.marginal.state_dict(), fixed, rtol=0, atol=0)
