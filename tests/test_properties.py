"""Property-based tests: generated hostile arrays, frames, weights and parameters thrown at
every public method. Each call must end in a clear exception of the documented type
(``ValueError``, which scikit-learn's ``InvalidParameterError`` subclasses, or ``TypeError``)
or in a documented result: scores finite or ``-inf`` (never NaN), samples finite and of the
requested shape, a fitted model whose scores are finite on its own training rows. A failed
call never changes a previously fitted model."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from skffjord import FFJORDDensity, FFJORDOutlierDetector

from .conftest import TINY

#: Hypothesis settings: no deadline (fits take a variable time on a shared CI machine), a
#: modest number of examples each, derandomised so that a failure reproduces in CI.
PROPERTY = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: Exceptions a public method may raise on bad input.
CLEAR = (ValueError, TypeError)

FAST = {**TINY, "max_iter": 1}

#: Floats of every scale, the specials included.
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
#: Finite floats of every scale, from subnormal to near the float64 maximum.
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _state(model: FFJORDDensity) -> list[np.ndarray]:
    """A copy of everything fitted that a scoring call could change."""
    tensors = [t.detach().cpu().numpy().copy() for t in model.flow_.state_dict().values()]
    arrays = [np.array(getattr(model, k), copy=True) for k in ("discrete_features_", "bounds_")]
    return tensors + arrays


def _assert_unchanged(model: FFJORDDensity, before: list[np.ndarray], reference: np.ndarray):
    after = _state(model)
    assert len(after) == len(before)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.n_features_in_ == reference.shape[1]


def _assert_scores(scores: np.ndarray, n_rows: int) -> None:
    assert scores.shape == (n_rows,)
    assert scores.dtype == np.float64
    assert not np.isnan(scores).any(), "a score is NaN"
    assert not np.isposinf(scores).any(), "a score is +inf"


@pytest.fixture(scope="module")
def reference_data():
    return np.random.default_rng(0).normal(size=(200, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -1.0]


@pytest.fixture(scope="module")
def fitted(reference_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FFJORDDensity(**FAST, random_state=0).fit(reference_data)


@pytest.fixture(scope="module")
def detector(reference_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FFJORDOutlierDetector(**FAST, random_state=0).fit(reference_data)


@PROPERTY
@given(rows=hnp.arrays(np.float64, st.tuples(st.integers(0, 12), st.just(3)), elements=ANY_FLOAT))
def test_scoring_any_float_rows(fitted, reference_data, rows):
    before = _state(fitted)
    reference = fitted.score_samples(reference_data[:5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scores = fitted.score_samples(rows)
        except CLEAR:
            assert rows.shape[0] == 0 or not np.isfinite(rows).all()
        else:
            _assert_scores(scores, rows.shape[0])
    _assert_unchanged(fitted, before, reference_data)
    np.testing.assert_array_equal(fitted.score_samples(reference_data[:5]), reference)


@PROPERTY
@given(rows=hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.just(3)), elements=FINITE))
def test_finite_rows_always_get_a_score_and_outliers_a_label(fitted, detector, rows):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = fitted.score_samples(rows)
        labels = detector.predict(rows)
    _assert_scores(scores, rows.shape[0])
    assert set(np.unique(labels)) <= {-1, 1}


@PROPERTY
@given(
    shape=st.one_of(
        st.tuples(st.integers(0, 5)),
        st.tuples(st.integers(1, 5), st.integers(0, 6).filter(lambda d: d != 3)),
        st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    )
)
def test_wrong_shapes_are_clear_errors(fitted, shape):
    with pytest.raises(CLEAR):
        fitted.score_samples(np.zeros(shape))


COLUMN_KINDS = st.sampled_from(["float", "int", "bool", "object_numbers", "text", "category"])


def _column(kind: str, values: np.ndarray) -> pd.Series:
    if kind == "float":
        return pd.Series(values)
    if kind == "int":
        return pd.Series(np.round(values).astype(np.int64))
    if kind == "bool":
        return pd.Series(values > 0)
    if kind == "object_numbers":
        return pd.Series(values.astype(object))
    if kind == "text":
        return pd.Series([f"v{v:.2f}" for v in values])
    return pd.Series(pd.Categorical(np.where(values > 0, "a", "b")))


@PROPERTY
@given(kinds=st.lists(COLUMN_KINDS, min_size=3, max_size=3))
def test_frames_of_any_column_dtype(fitted, reference_data, kinds):
    frame = pd.DataFrame(
        {f"c{j}": _column(kind, reference_data[:20, j]) for j, kind in enumerate(kinds)}
    )
    numeric = all(k in ("float", "int", "bool", "object_numbers") for k in kinds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if numeric:
            _assert_scores(fitted.score_samples(frame), 20)
        else:
            with pytest.raises(ValueError, match="numeric"):
                fitted.score_samples(frame)


@PROPERTY
@given(
    n_samples=st.one_of(st.integers(-3, 40), st.floats(), st.none(), st.text(max_size=2)),
    seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_sample_any_request(fitted, n_samples, seed):
    valid = isinstance(n_samples, int) and not isinstance(n_samples, bool) and n_samples >= 1
    try:
        draws = fitted.sample(n_samples, random_state=seed)
    except CLEAR:
        assert not valid
    else:
        assert valid
        assert draws.shape == (n_samples, 3)
        assert np.isfinite(draws).all()


def _weights(n: int) -> st.SearchStrategy:
    scale = st.sampled_from([1.0, 1e-150, 1e-100, 1e200, 1e300])
    base = hnp.arrays(np.float64, n, elements=st.floats(0.0, 10.0))
    hostile = hnp.arrays(np.float64, n, elements=ANY_FLOAT)
    return st.one_of(st.none(), st.builds(lambda w, s: w * s, base, scale), hostile)


@st.composite
def _training_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray | None]:
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 3))
    scale = draw(st.sampled_from([1.0, 1e-160, 1e-13, 1e13, 1e160]))
    offset = draw(st.sampled_from([0.0, 5.0, -1e6]))
    values = draw(
        st.one_of(
            hnp.arrays(np.float64, (n, d), elements=st.floats(-10, 10)),
            hnp.arrays(np.float64, (n, d), elements=st.sampled_from([0.0, 1.0, 2.0])),
            hnp.arrays(np.float64, (n, d), elements=ANY_FLOAT),
        )
    )
    with np.errstate(all="ignore"):
        X = values * scale + offset
    return X, draw(_weights(n))


def _positive_weight_rows(X: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    if w is None:
        return X
    with np.errstate(all="ignore"):
        return X[np.nan_to_num(w, nan=0.0) > 0]


@PROPERTY
@given(data=_training_sets())
def test_fit_on_hostile_data_is_a_clear_error_or_a_usable_model(fitted, reference_data, data):
    """A fit on generated data either raises a clear error, leaving the other fitted model
    untouched, or gives a model whose scores on its own training rows are finite."""
    X, w = data
    previous = fitted.score_samples(reference_data[:5])
    model = FFJORDDensity(**FAST, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.fit(X, sample_weight=w)
        except CLEAR:
            assert not hasattr(model, "flow_")
        else:
            rows = _positive_weight_rows(X, w)
            scores = model.score_samples(rows)
            _assert_scores(scores, rows.shape[0])
            assert np.isfinite(scores).all(), "a training row scores -inf"
            draws = model.sample(5, random_state=0)
            assert draws.shape == (5, X.shape[1]) and np.isfinite(draws).all()
    np.testing.assert_array_equal(fitted.score_samples(reference_data[:5]), previous)


PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "hidden_layer_sizes": st.one_of(
            st.just("auto"),
            st.lists(st.integers(-2, 12), min_size=0, max_size=3).map(tuple),
            st.integers(-1, 8),
        ),
        "n_blocks": st.integers(-1, 2),
        "training": st.sampled_from(["likelihood", "flow_matching", "hybrid", "other"]),
        "trace_estimator": st.sampled_from(["auto", "exact", "hutchinson", "x"]),
        "solver": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "method": st.sampled_from(["rk4", "euler", "dopri5", "nope"]),
                    "options": st.one_of(
                        st.none(), st.fixed_dictionaries({"step_size": ANY_FLOAT})
                    ),
                    "atol": ANY_FLOAT,
                    "max_num_steps": st.integers(-1, 50),
                    "kinetic_energy_reg": ANY_FLOAT,
                },
            ),
        ),
        "eval_solver": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "method": st.sampled_from(["dopri5", "rk4", "bogus"]),
                    "rtol": ANY_FLOAT,
                    "max_num_steps": st.integers(-1, 10),
                    "dtype": st.sampled_from(["float32", "float64", "float16"]),
                },
            ),
        ),
        "standardize": st.sampled_from([True, False, "auto", "affine", "quantile", "bad"]),
        "n_components": st.one_of(st.just("auto"), st.integers(-1, 4)),
        "batch_size": st.one_of(st.just("auto"), st.integers(-1, 500)),
        "learning_rate_init": ANY_FLOAT,
        "alpha": ANY_FLOAT,
        "max_iter": st.one_of(st.none(), st.integers(-1, 2)),
        "tol": ANY_FLOAT,
        "early_stopping": st.booleans(),
        "validation_fraction": ANY_FLOAT,
    },
)


@PROPERTY
@given(params=PARAMETERS)
def test_any_parameters_give_a_clear_error_or_a_model(fitted, reference_data, params):
    params = {"max_iter": 1, "hidden_layer_sizes": (8,), "max_time": 5.0, **params}
    if params.get("max_iter") is None:
        params["max_iter"] = 1  # keep the example's fit short; None is tested elsewhere
    previous = fitted.score_samples(reference_data[:5])
    model = FFJORDDensity(random_state=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.fit(reference_data[:60])
        except CLEAR:
            assert not hasattr(model, "flow_")
        else:
            _assert_scores(model.score_samples(reference_data[:60]), 60)
    np.testing.assert_array_equal(fitted.score_samples(reference_data[:5]), previous)
    assert torch.get_default_dtype() == torch.float32
