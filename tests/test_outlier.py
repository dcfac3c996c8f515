"""FFJORDOutlierDetector: scikit-learn's outlier conventions on top of FFJORDDensity."""

from __future__ import annotations

import inspect
import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone, is_outlier_detector
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from skffjord import FFJORDDensity, FFJORDOutlierDetector

from .conftest import TINY


def _fit(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FFJORDOutlierDetector(**{**TINY, "random_state": 0, **kw}).fit(X)


EXPECTED_FAILED_CHECKS = {
    # Weighted rows and repeated rows give the same loss only up to float32 rounding (the
    # rows are summed in another order), and Adam's normalised steps amplify that: measured
    # decision_function differences of up to 0.013 with the check's 15 rows (one full
    # batch); with mini-batches the batches themselves differ too. FFJORDDensity passes this
    # check only because it has no predict/decision_function for the check to compare.
    "check_sample_weight_equivalence_on_dense_data": (
        "float32 training: weights equal repeated rows only up to rounding amplified by Adam"
    ),
}


#: With float32 scoring a row's score may move by rounding with the rows scored alongside it
#: (a rounding difference can tip a step-size decision), and the threshold
#: ``offset_`` is a percentile of the training rows' own scores, so the check's rows next to
#: it can flip between -1 and 1 when predicted in subsets; whether one does depends on the
#: fitted weights.
#: With float64 scoring (``eval_solver={'dtype': 'float64'}``) scores do not depend on
#: batch-mates, and the check passes.
FLOAT32_FAILED_CHECKS = {
    **EXPECTED_FAILED_CHECKS,
    "check_methods_subset_invariance": (
        "float32 scores move by rounding with their batch-mates, and rows at the threshold flip"
    ),
}


@parametrize_with_checks(
    [
        FFJORDOutlierDetector(random_state=0, **TINY),
        FFJORDOutlierDetector(
            random_state=0, **{**TINY, "eval_solver": {**TINY["eval_solver"], "dtype": "float64"}}
        ),
    ],
    expected_failed_checks=lambda est: (
        EXPECTED_FAILED_CHECKS
        if est.eval_solver.get("dtype") == "float64"
        else FLOAT32_FAILED_CHECKS
    ),
)
def test_sklearn_compatible_outlier_detector(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_parameters_are_shared_with_the_density_estimator():
    density = inspect.signature(FFJORDDensity.__init__).parameters
    detector = inspect.signature(FFJORDOutlierDetector.__init__).parameters
    assert list(detector) == ["self", "contamination", *list(density)[1:]]
    for name in list(density)[1:]:
        assert detector[name].default == density[name].default
    params = FFJORDOutlierDetector().get_params()
    assert params["contamination"] == 0.1
    assert params["training"] == FFJORDDensity().training
    assert is_outlier_detector(FFJORDOutlierDetector())
    model = clone(FFJORDOutlierDetector(contamination=0.2, max_iter=3))
    assert model.contamination == 0.2 and model.max_iter == 3


def test_sign_conventions_and_offset(rng):
    X = rng.normal(size=(200, 2))
    model = _fit(X, contamination=0.1)
    scores = model.score_samples(X)
    # the density part is FFJORDDensity's, unchanged
    density = FFJORDDensity(**{**TINY, "random_state": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        density.fit(X)
    np.testing.assert_allclose(scores, density.score_samples(X), rtol=1e-12)
    assert model.offset_ == np.sort(scores)[int(np.floor(0.1 * len(scores)))]
    np.testing.assert_allclose(model.decision_function(X), scores - model.offset_)
    pred = model.predict(X)
    assert set(np.unique(pred)) == {-1, 1}
    np.testing.assert_array_equal(pred == -1, model.decision_function(X) < 0)
    assert abs(np.mean(pred == -1) - 0.1) <= 0.01
    # lower log-density is more abnormal: a far point is an outlier
    assert model.predict([[8.0, 8.0]])[0] == -1
    assert model.score_samples([[8.0, 8.0]])[0] < scores.min()


def test_fit_predict_equals_fit_then_predict(rng):
    X = rng.normal(size=(120, 2))
    a = FFJORDOutlierDetector(**{**TINY, "random_state": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = a.fit_predict(X)
    np.testing.assert_array_equal(labels, _fit(X).predict(X))


def test_detects_planted_outliers_on_a_curved_inlier_set():
    from sklearn.datasets import make_moons

    inliers, _ = make_moons(n_samples=600, noise=0.06, random_state=0)
    rng = np.random.default_rng(1)
    outliers = rng.uniform(-1.5, 2.5, size=(60, 2))
    # keep only uniform points away from the moons (true anomalies)
    far = np.min(np.linalg.norm(outliers[:, None] - inliers[None], axis=-1), axis=1) > 0.3
    outliers = outliers[far]
    model = _fit(
        inliers,
        training="hybrid",
        hidden_layer_sizes=(32, 32),
        max_iter=30,
        learning_rate_init=5e-3,
        solver={"method": "rk4", "options": {"step_size": 0.25}},
    )
    test_inliers, _ = make_moons(n_samples=200, noise=0.06, random_state=2)
    X = np.vstack([test_inliers, outliers])
    y = np.r_[np.ones(len(test_inliers)), -np.ones(len(outliers))]
    auc = roc_auc_score(y == -1, -model.score_samples(X))
    assert auc > 0.95, auc


def test_bad_contamination_is_named(rng):
    X = rng.normal(size=(50, 2))
    for bad in (0.0, 0.6, -0.1, "auto"):
        with pytest.raises(ValueError, match="contamination"):
            FFJORDOutlierDetector(contamination=bad, **TINY).fit(X)


def test_unfitted_and_failed_fit_keep_state(rng):
    X = rng.normal(size=(80, 2))
    with pytest.raises(NotFittedError):
        FFJORDOutlierDetector().predict(X)
    model = _fit(X)
    offset, flow = model.offset_, model.flow_
    with pytest.raises(ValueError):
        model.fit(np.full((10, 2), np.nan))
    assert model.offset_ == offset and model.flow_ is flow
    np.testing.assert_array_equal(model.predict(X), _fit(X).predict(X))


def test_pickle_round_trip(rng):
    X = rng.normal(size=(80, 2))
    model = _fit(X)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.decision_function(X), model.decision_function(X))
