"""scikit-learn's own estimator checks."""

from __future__ import annotations

import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from skffjord import FFJORDDensity

from .conftest import TINY

EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks(
    [
        FFJORDDensity(random_state=0, **TINY),
        FFJORDDensity(random_state=0, **{**TINY, "training": "hybrid"}),
        FFJORDDensity(random_state=0, **{**TINY, "standardize": "quantile"}),
        FFJORDDensity(random_state=0, **{**TINY, "standardize": "auto"}),
    ],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
