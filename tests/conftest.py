"""Shared fixtures: small data sets and tiny, fast estimator settings."""

from __future__ import annotations

import numpy as np
import pytest

#: Settings that keep a fit to a fraction of a second (used across the suite).
TINY = dict(
    hidden_layer_sizes=(8,),
    max_iter=2,
    ode_solver="rk4",
    ode_solver_params={"step_size": 0.5},
    eval_atol=1e-5,
    eval_rtol=1e-5,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def gaussian_2d(rng):
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    return rng.multivariate_normal([1.0, -2.0], cov, size=400)
