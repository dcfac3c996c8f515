"""Flow matching: the regression target is right, and a flow trained by it has an exact,
accurate likelihood."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity
from skffjord._flow_matching import flow_matching_loss


def _gain(s):
    """E[e - u | z_s] = gain(s) z_s for u, e ~ N(0, I) independent, z_s = (1-s) u + s e."""
    return (2 * s - 1) / ((1 - s) ** 2 + s**2)


def _analytic_flow(n_blocks, length, scale=1.0):
    """Blocks whose fields are the exact conditional expectation of the path velocity."""

    def field_of(k):
        def field(t, z):
            s = (k + t / length) / n_blocks
            return scale * _gain(s) * z / (n_blocks * length)

        return field

    return SimpleNamespace(
        blocks=[
            SimpleNamespace(field=field_of(k), integration_time=length) for k in range(n_blocks)
        ]
    )


@pytest.mark.parametrize(("n_blocks", "length"), [(1, 1.0), (1, 2.0), (3, 0.5)])
def test_loss_is_minimised_by_the_conditional_expectation(n_blocks, length):
    d, n = 3, 200_000
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)

    def loss(scale):
        g = torch.Generator().manual_seed(1)  # the same noise and times for every field
        return float(flow_matching_loss(_analytic_flow(n_blocks, length, scale), u, w, g))

    # The minimum is the conditional variance of the velocity, integrated over s:
    # d * E_s[2 - (2s - 1)^2 / ((1-s)^2 + s^2)] / (K T)^2.
    s = np.linspace(0, 1, 200_001)
    residual = 2 - (2 * s - 1) ** 2 / ((1 - s) ** 2 + s**2)
    expected = d * np.trapezoid(residual, s) / (n_blocks * length) ** 2
    best = loss(1.0)
    assert best == pytest.approx(expected, rel=0.01)
    assert best < loss(1.1) and best < loss(0.9) and best < loss(-1.0)


def test_weights_are_row_multiplicities():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    flow = _analytic_flow(1, 1.0, scale=0.3)
    # weight 2 on a row equals that row twice, given the same draws for the copies
    w = torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    g1 = torch.Generator().manual_seed(5)
    weighted = flow_matching_loss(flow, u, w, g1)
    g2 = torch.Generator().manual_seed(5)
    draws_noise = torch.randn(u.shape, generator=g2, dtype=u.dtype)
    draws_s = torch.rand((4, 1), generator=g2, dtype=u.dtype)
    z = (1 - draws_s) * u + draws_s * draws_noise
    per_row = (flow.blocks[0].field(draws_s, z) - (draws_noise - u)).pow(2).sum(1)
    manual = (per_row * w).sum() / w.sum()
    assert float(weighted) == pytest.approx(float(manual), rel=1e-12)


def _fit(X, **kw):
    params = dict(
        hidden_layer_sizes=(64, 64),
        training="flow_matching",
        batch_size=256,
        learning_rate_init=3e-3,
        max_iter=150,
        random_state=0,
    )
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FFJORDDensity(**params).fit(X)


COV = np.array([[1.0, 0.8], [0.8, 1.0]])
MEAN = np.array([1.0, -2.0])


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_flow_matching_gaussian_loglik_close_to_truth(n_blocks):
    rng = np.random.default_rng(0)
    X = rng.multivariate_normal(MEAN, COV, size=3000)
    X_test = rng.multivariate_normal(MEAN, COV, size=3000)
    model = _fit(X, n_blocks=n_blocks)
    truth = scipy.stats.multivariate_normal(MEAN, COV).logpdf(X_test).mean()
    assert abs(model.score(X_test) - truth) < 0.05
    assert model.history_[-1]["nfe"] == 0  # no ODE solve in training


def test_flow_matching_learns_moons_and_normalises():
    X, _ = make_moons(4000, noise=0.08, random_state=0)
    X_test, _ = make_moons(2000, noise=0.08, random_state=1)
    model = _fit(X, max_iter=200)
    single_gaussian = scipy.stats.multivariate_normal(X.mean(0), np.cov(X.T)).logpdf(X_test)
    # flow matching does not maximise likelihood: on thin moons it lands between a single
    # Gaussian (-1.90) and maximum likelihood (about -0.91 in test_density.py)
    assert model.score(X_test) > single_gaussian.mean() + 0.3
    xs = np.linspace(-2.0, 3.0, 120)
    ys = np.linspace(-1.5, 2.0, 100)
    grid = np.array([[x, y] for y in ys for x in xs])
    mass = np.exp(model.score_samples(grid)).sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert mass == pytest.approx(1.0, abs=0.03)


def test_flow_matching_early_stopping_keeps_the_best_validation_weights():
    rng = np.random.default_rng(0)
    X = rng.multivariate_normal(MEAN, COV, size=2000)
    model = _fit(X, early_stopping=True, n_iter_no_change=5, max_iter=60)
    scores = [h["valid_score"] for h in model.history_]
    assert model.best_validation_score_ == pytest.approx(max(scores))
    assert np.isfinite(scores).all()


def test_invalid_training_option():
    with pytest.raises(ValueError, match="training"):
        FFJORDDensity(training="magic").fit(np.zeros((10, 2)))


def test_flow_matching_solves_no_ode_in_training():
    """Flow matching evaluates the field once per row (nfe == 0 solves), likelihood training
    solves the ODE at every step (nfe > 0)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(512, 3))
    fm = _fit(X, max_iter=2)
    ml = _fit(
        X,
        max_iter=2,
        training="likelihood",
        solver={"method": "rk4", "options": {"step_size": 0.25}},
    )
    assert fm.history_[-1]["nfe"] == 0
    assert ml.history_[-1]["nfe"] > 0


def test_hybrid_runs_both_phases_and_ends_on_likelihood():
    rng = np.random.default_rng(0)
    X = rng.multivariate_normal(MEAN, COV, size=2000)
    model = _fit(
        X,
        training="hybrid",
        max_iter=40,
        early_stopping=True,
        n_iter_no_change=100,
        solver={"method": "rk4", "options": {"step_size": 0.25}},
    )
    phases = [h["phase"] for h in model.history_]
    assert phases == ["flow_matching"] * 30 + ["likelihood"] * 10
    assert [h["epoch"] for h in model.history_] == list(range(1, 41))
    assert model.n_iter_ == 40
    assert np.all(np.diff([h["time"] for h in model.history_]) >= 0)
    assert model.history_[0]["nfe"] == 0 and model.history_[-1]["nfe"] > 0
    # the kept validation score is a log-likelihood (the second phase's), close to the truth
    truth = scipy.stats.multivariate_normal(MEAN, COV).logpdf(X).mean()
    assert abs(model.best_validation_score_ - truth) < 0.2
    assert abs(model.score(X) - truth) < 0.05


def test_hybrid_max_time_is_shared(monkeypatch):
    """Both phases run within one ``max_time``, on a fake clock that advances 50 ms at every
    reading."""
    import itertools
    import time

    readings = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 0.05 * next(readings))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 4))
    model = _fit(
        X,
        training="hybrid",
        max_iter=10**6,
        max_time=3.0,
        solver={"method": "rk4", "options": {"step_size": 0.25}},
    )
    phases = [h["phase"] for h in model.history_]
    assert "flow_matching" in phases and "likelihood" in phases
    assert model.stop_reason_ == "max_time"
    # the phases' times add up to the budget, within a few readings
    assert abs(model.history_[-1]["time"] - 3.0) <= 5 * 0.05


def test_validation_loss_with_an_all_zero_weight_chunk_is_finite():
    from skffjord._flow import TrainConfig
    from skffjord._training import FitConfig, flow_matching_validation_loss

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    flow = _fit(X, max_iter=2, batch_size=64).flow_.float()
    u = torch.as_tensor(X[:6], dtype=torch.float32)
    w = torch.tensor([0.0, 0.0, 1.0, 2.0, 0.0, 1.0])
    config = FitConfig(
        batch_size=2,
        learning_rate_init=1e-3,
        alpha=0.0,
        max_iter=1,
        max_time=None,
        tol=0.0,
        n_iter_no_change=1,
        shuffle=False,
        solver=TrainConfig(method="rk4"),
        validation_chunk=2,  # the first chunk weighs 0
        training="flow_matching",
    )
    value = flow_matching_validation_loss(flow, u, w, config)
    assert np.isfinite(value) and value > 0
