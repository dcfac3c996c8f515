"""Shared fixtures: small data sets and tiny, fast estimator settings."""

from __future__ import annotations

import numpy as np
import pytest

#: Settings that keep a fit to a fraction of a second (used across the suite). Training is
#: by likelihood so that the solver machinery is what these tests exercise; the default
#: ``training='hybrid'`` has tests of its own (test_flow_matching.py, test_common.py).
#: A small fast model for tests of the training machinery: its map ('affine') and base (the
#: standard normal) are fixed, no column is dequantised, there is no validation split, and
#: an epoch is one pass over the rows. The defaults that start from a classical model have
#: their own tests in ``test_starting_model.py``.
TINY = dict(
    standardize="affine",
    n_components=1,
    discrete_features=None,
    early_stopping=False,
    training="likelihood",
    hidden_layer_sizes=(8,),
    max_iter=2,
    solver={"method": "rk4", "options": {"step_size": 0.5}},
    eval_solver={"atol": 1e-5, "rtol": 1e-5},
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def gaussian_2d(rng):
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    return rng.multivariate_normal([1.0, -2.0], cov, size=400)
