"""Hostile input, as a new user would try it: rows the solver cannot integrate, weights of
any scale, bad solver settings, data at extreme magnitudes or without spread, and pandas
columns of every dtype. Each either works as documented (and the test says what that
means, analytically where it can) or raises a clear error that leaves a fitted model as it
was."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity, FFJORDOutlierDetector, SolverError, SolverWarning
from skffjord._flow import FFJORDFlow

from .conftest import TINY


def _fit(X, cls=FFJORDDensity, sample_weight=None, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cls(**{**TINY, "random_state": 0, **params}).fit(X, sample_weight=sample_weight)


@pytest.fixture(scope="module")
def data():
    """Correlated 2-D rows on a grid of 1/128 (so that ``5 + 2**-43 * data`` is exact)."""
    X = np.random.default_rng(0).normal(size=(200, 2)) @ [[1.0, 0.5], [0.0, 1.0]] + [1, -2]
    return np.round(X * 128) / 128


@pytest.fixture(scope="module")
def model(data):
    return _fit(data)


# ---------------------------------------------------------------------- unsolvable rows
GOOD = [0, 1, 3, 4, 6]


def _with_hostile_rows(data):
    X = data[:7].copy()
    X[2] = [1e100, 0.0]  # beyond float32, the solve's precision
    X[5] = [0.0, -1e300]
    return X


@pytest.mark.parametrize(
    "eval_solver",
    [
        None,  # the per-row solver: the rows fail at the start
        {"method": "rk4", "options": {"step_size": 0.25}},  # fixed grid: the rows turn NaN
    ],
)
def test_an_unsolvable_row_scores_minus_inf_and_the_others_keep_their_scores(
    model, data, eval_solver
):
    model = copy.deepcopy(model).set_params(eval_solver=eval_solver)
    X = _with_hostile_rows(data)
    with pytest.warns(SolverWarning, match=r"rows 2 and 5 of X .*score -inf"):
        scores = model.score_samples(X)
    assert np.isneginf(scores[[2, 5]]).all()
    np.testing.assert_array_equal(scores[GOOD], model.score_samples(X[GOOD]))
    alone = np.concatenate([model.score_samples(X[[i]]) for i in GOOD])
    np.testing.assert_allclose(scores[GOOD], alone, rtol=1e-9)
    assert np.isfinite(alone).all()


def test_rows_are_found_by_bisection_when_the_solver_does_not_name_them(model, data, monkeypatch):
    """A solver error that names no rows: the failing rows are found by halving."""
    original = FFJORDFlow.log_prob
    calls = []

    def fails_on_marked_rows(self, x, config):
        calls.append(x.shape[0])
        if bool((x[:, 0] > 50).any()):
            raise SolverError("a failure that names no rows")
        return original(self, x, config)

    model = copy.deepcopy(model).set_params(eval_solver={"dtype": "float64"})
    X = data[:32].copy()
    X[[3, 21], 0] = 100.0
    alone = [model.score_samples(row[None])[0] for row in np.delete(X, [3, 21], axis=0)]
    monkeypatch.setattr(FFJORDFlow, "log_prob", fails_on_marked_rows)
    match = r"rows 3 and 21 of X \(a failure that names no rows\)"
    with pytest.warns(SolverWarning, match=match):
        scores = model.score_samples(X)
    assert np.isneginf(scores[[3, 21]]).all()
    np.testing.assert_allclose(np.delete(scores, [3, 21]), alone, rtol=1e-12)
    assert len(calls) < 24  # halving (19 solves), not one solve per row


def test_many_unsolvable_rows_are_listed_up_to_ten(model, data):
    X = data[:30].copy()
    X[:15, 0] = 1e60
    listed = r"rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. \(15 rows\)"
    with pytest.warns(SolverWarning, match=listed):
        scores = model.score_samples(X)
    assert np.isneginf(scores[:15]).all() and np.isfinite(scores[15:]).all()


def test_a_step_cap_too_small_for_every_row_warns_and_scores_minus_inf(model, data):
    model = copy.deepcopy(model).set_params(eval_solver={"max_num_steps": 1})
    with pytest.warns(SolverWarning, match=r"rows 0, 1 and 2 of X \(.*step cap \(1 steps\)"):
        scores = model.score_samples(data[:3])
    assert np.isneginf(scores).all()


def test_the_detector_labels_unsolvable_rows_outliers_and_keeps_the_others(data):
    detector = _fit(data, cls=FFJORDOutlierDetector, contamination=0.1)
    X = _with_hostile_rows(data)
    with pytest.warns(SolverWarning, match="rows 2 and 5"):
        labels = detector.predict(X)
    np.testing.assert_array_equal(labels[[2, 5]], [-1, -1])
    np.testing.assert_array_equal(labels[GOOD], detector.predict(X[GOOD]))


@pytest.mark.parametrize("eval_solver", [None, {"method": "rk4"}])
def test_trajectory_of_an_unsolvable_row_is_an_error_naming_it(model, data, eval_solver):
    model = copy.deepcopy(model).set_params(eval_solver=eval_solver)
    with pytest.raises(SolverError, match="rows 2 and 5 of X"):
        model.trajectory(_with_hostile_rows(data), n_times=3)
    path = model.trajectory(data[GOOD], n_times=3)
    assert np.isfinite(path).all()


def test_a_draw_that_does_not_come_back_finite_is_an_error(model, monkeypatch):
    original = FFJORDFlow.to_data

    def nan_in_second_row(self, z, config):
        x = original(self, z, config)
        x[1] = math.nan
        return x

    monkeypatch.setattr(FFJORDFlow, "to_data", nan_in_second_row)
    with pytest.raises(SolverError, match="row 1 of the base draws"):
        model.sample(4, random_state=0)


# ---------------------------------------------------------------------- sample_weight
def test_the_scale_of_the_weights_changes_nothing(data):
    w = np.random.default_rng(1).uniform(0.2, 3.0, size=len(data))
    reference = _fit(data, sample_weight=w).score_samples(data)
    exact = _fit(data, sample_weight=w * 2.0**-400).score_samples(data)
    np.testing.assert_array_equal(exact, reference)  # a power of two: bit for bit
    for scale in (1e-150, 1e250):
        scores = _fit(data, sample_weight=w * scale).score_samples(data)
        np.testing.assert_allclose(scores, reference, rtol=1e-9)


@pytest.mark.parametrize(
    "weight, match",
    [
        ([np.nan] + [1.0] * 199, "sample_weight contains NaN"),
        ([np.inf] + [1.0] * 199, "sample_weight contains infinity"),
        ([-1.0] + [1.0] * 199, "sample_weight must be non-negative"),
        ([0.0] * 200, "at least one non-zero"),
        ([1.0] * 199, "sample_weight.shape"),
    ],
)
def test_bad_weights_are_named_and_keep_the_fitted_model(model, data, weight, match):
    fitted = copy.deepcopy(model)
    before = fitted.score_samples(data)
    with pytest.raises(ValueError, match=match):
        fitted.fit(data, sample_weight=np.array(weight))
    np.testing.assert_array_equal(fitted.score_samples(data), before)


# ---------------------------------------------------------------------- solver settings
BAD_SOLVERS = [
    ("solver", {"options": {"step_size": 0}}, r"\['step_size'\]"),
    ("solver", {"options": {"step_size": -0.1}}, r"\['step_size'\]"),
    ("solver", {"options": {"step_size": math.nan}}, r"\['step_size'\]"),
    ("solver", {"options": {"step_size": math.inf}}, r"\['step_size'\]"),
    ("solver", {"options": {"step_size": "0.1"}}, r"\['step_size'\]"),
    ("solver", {"options": 0.1}, r"solver\['options'\]"),
    ("solver", {"max_num_steps": 0}, r"solver\['max_num_steps'\]"),
    ("solver", {"max_num_steps": 10.5}, r"solver\['max_num_steps'\]"),
    ("solver", {"atol": 0.0}, r"solver\['atol'\]"),
    ("solver", {"atol": math.nan}, r"solver\['atol'\]"),
    ("solver", {"rtol": -1e-5}, r"solver\['rtol'\]"),
    ("solver", {"rtol": math.inf}, r"solver\['rtol'\]"),
    ("solver", {"method": "rk45"}, r"solver\['method'\]"),
    ("solver", {"step_size": 0.1}, r"unknown key.*step_size"),
    ("solver", {"adjoint": 1}, r"solver\['adjoint'\]"),
    ("solver", {"dtype": "float16"}, r"solver\['dtype'\]"),
    ("solver", {"kinetic_energy_reg": -0.1}, r"solver\['kinetic_energy_reg'\]"),
    ("solver", {"jacobian_reg": math.nan}, r"solver\['jacobian_reg'\]"),
    ("eval_solver", {"method": "bosh3"}, r"eval_solver\['method'\]"),
    ("eval_solver", {"method": "dopri5", "options": {"step_size": 0.1}}, "do not apply"),
    ("eval_solver", {"method": "rk4", "options": {"step_size": 0}}, r"\['step_size'\]"),
    ("eval_solver", {"max_num_steps": 0}, r"eval_solver\['max_num_steps'\]"),
    ("eval_solver", {"max_num_steps": 2.5}, r"eval_solver\['max_num_steps'\]"),
    ("eval_solver", {"atol": -1.0}, r"eval_solver\['atol'\]"),
    ("eval_solver", {"rtol": 0}, r"eval_solver\['rtol'\]"),
    ("eval_solver", {"dtype": "float16"}, r"eval_solver\['dtype'\]"),
    ("eval_solver", {"tolerance": 1e-3}, r"unknown key.*tolerance"),
]


@pytest.mark.parametrize("name, value, match", BAD_SOLVERS)
def test_bad_solver_settings_fail_the_fit_naming_the_key(model, data, name, value, match):
    fitted = copy.deepcopy(model)
    before = fitted.score_samples(data)
    with pytest.raises(ValueError, match=match):
        fitted.set_params(**{name: value}).fit(data)
    fitted.set_params(**{name: getattr(model, name)})
    np.testing.assert_array_equal(fitted.score_samples(data), before)


@pytest.mark.parametrize("value, match", [(v, m) for n, v, m in BAD_SOLVERS if n == "eval_solver"])
def test_a_bad_eval_solver_set_after_fit_fails_every_solve(model, data, value, match):
    fitted = copy.deepcopy(model).set_params(eval_solver=value)
    for call in (
        lambda: fitted.score_samples(data[:3]),
        lambda: fitted.sample(3, random_state=0),
        lambda: fitted.trajectory(data[:3], n_times=3),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_a_validation_share_that_leaves_no_training_rows_says_so(data):
    with pytest.raises(ValueError, match="holds out 200 of the 200 rows and leaves none to train"):
        _fit(data, early_stopping=True, validation_fraction=0.999)


# ---------------------------------------------------------------------- magnitudes
@pytest.fixture(scope="module")
def reference_scores(data):
    """The scores of the model fitted on ``data`` with each ``standardize``, on ``data``."""
    cache = {}

    def scores(standardize):
        if standardize not in cache:
            fitted = _fit(data, standardize=standardize)
            cache[standardize] = fitted.standardize_, fitted.score_samples(data)
        return cache[standardize]

    return scores


@pytest.mark.parametrize("standardize", ["affine", "sinh_arcsinh", "quantile", "auto"])
@pytest.mark.parametrize(
    "a, b",
    [(1e-150, 0.0), (1e-13, 0.0), (1e150, 0.0), (1e160, 0.0), (2.0**-43, 5.0)],
    ids=["1e-150", "1e-13", "1e150", "1e160", "5+1e-13"],
)
def test_scores_in_any_units_are_the_scores_times_the_jacobian(
    data, reference_scores, standardize, a, b
):
    """For ``y = a x + b`` the model fitted on ``y`` is the model fitted on ``x`` seen in
    other units: ``log p(y) = log p(x) - d log |a|``, at magnitudes whose squares overflow
    or underflow, and for a spread 1e-13 of the values' magnitude (exact in float64 here,
    as the data lie on a grid of 1/128)."""
    kind, reference = reference_scores(standardize)
    Y = a * data + b
    if b:
        np.testing.assert_array_equal((Y - b) / a, data)  # no rounding in the data
    scaled = _fit(Y, standardize=standardize)
    assert scaled.standardize_ == kind
    expected = reference - data.shape[1] * math.log(a)
    scores = scaled.score_samples(Y)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)
    # the network sees well-scaled float32 inputs: about N(0, 1)
    u = scaled.flow_.standardize(torch.as_tensor(Y)).float()
    assert torch.isfinite(u).all()
    np.testing.assert_allclose(u.mean(0).numpy(), 0.0, atol=0.2)
    np.testing.assert_allclose(u.std(0).numpy(), 1.0, atol=0.2)


# ---------------------------------------------------------------------- constant features
def test_a_constant_continuous_feature_is_named(data):
    X = data.copy()
    X[:, 1] = 0.37
    with pytest.raises(ValueError, match=r"feature\(s\) \[1\] of X .*discrete_features"):
        _fit(X, discrete_features="auto")
    frame = pd.DataFrame(X, columns=["height", "batch"])
    with pytest.raises(ValueError, match=r"\['batch'\].*Drop them"):
        _fit(frame)


def test_identical_rows_are_named_as_such(data):
    with pytest.raises(ValueError, match=r"\[0, 1\] .*all the rows are identical"):
        _fit(np.full((50, 2), 0.5))
    with pytest.raises(ValueError, match=r"all the rows are identical"):
        _fit(np.ones((50, 2)), discrete_features=None)


def test_a_constant_integer_feature_is_a_one_cell_discrete_feature():
    """With ``discrete_features='auto'`` a column of one integer is found discrete with
    cell width 1 and dequantised over its cell; draws land on the value."""
    X = np.column_stack([np.random.default_rng(2).normal(size=200), np.full(200, 3.0)])
    fitted = _fit(X, discrete_features="auto")
    np.testing.assert_array_equal(fitted.discrete_features_, [0.0, 1.0])
    scores = fitted.score_samples(X)
    assert np.isfinite(scores).all()
    # the density of the column is a smooth bump over the cell [2.5, 3.5]: most draws round
    # to 3 and a row two cells away is far less likely
    draws = fitted.sample(200, random_state=0)[:, 1]
    np.testing.assert_array_equal(draws, np.round(draws))
    assert np.mean(draws == 3.0) > 0.8
    assert np.all(fitted.score_samples(X + [0.0, 2.0]) < scores - 2.0)
    with pytest.raises(ValueError, match=r"feature\(s\) \[1\]"):
        _fit(X, discrete_features=None)


def test_a_constant_feature_declared_discrete_is_dequantised_over_its_cell(data):
    X = data.copy()
    X[:, 1] = 0.37
    fitted = _fit(X, discrete_features=[0.0, 0.25])
    assert np.isfinite(fitted.score_samples(X)).all()
    cells = (fitted.sample(200, random_state=0)[:, 1] - 0.37) / 0.25
    np.testing.assert_allclose(cells, np.round(cells), atol=1e-9)
    assert np.mean(np.round(cells) == 0) > 0.8


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("cls", [FFJORDDensity, FFJORDOutlierDetector])
def test_one_row_is_a_clear_error(data, cls, early_stopping):
    match = f"{cls.__name__} needs at least 2 rows with positive weight; got 1"
    with pytest.raises(ValueError, match=match):
        _fit(data[:1], cls=cls, early_stopping=early_stopping)
    with pytest.raises(ValueError, match=match):  # rows of weight 0 do not count
        _fit(data[:5], cls=cls, sample_weight=[0, 0, 1.0, 0, 0], early_stopping=early_stopping)


def test_rows_of_weight_zero_do_not_give_a_feature_its_spread(data):
    X = data.copy()
    X[:100, 1] = 0.37
    with pytest.raises(ValueError, match=r"feature\(s\) \[1\]"):
        _fit(X, sample_weight=np.r_[np.ones(100), np.zeros(100)])


# ---------------------------------------------------------------------- pandas columns
def test_object_columns_of_numbers_are_their_float_conversion(data):
    frame = pd.DataFrame(data, columns=["a", "b"])
    reference = _fit(frame)
    for converted in (
        frame.astype(object),
        frame.astype(str),  # "1.0078125", ...
        frame.astype({"a": object}),
    ):
        fitted = _fit(converted)
        assert list(fitted.feature_names_in_) == ["a", "b"]
        before = fitted.score_samples(frame)
        np.testing.assert_array_equal(before, reference.score_samples(frame))
        np.testing.assert_array_equal(reference.score_samples(converted), before)


def test_nullable_integer_and_float_columns(data):
    counts = pd.DataFrame({"a": pd.array(np.arange(200) % 7, dtype="Int64"), "b": data[:, 1]})
    fitted = _fit(counts, discrete_features="auto")
    reference = _fit(counts.astype({"a": np.int64}), discrete_features="auto")
    np.testing.assert_array_equal(fitted.score_samples(counts), reference.score_samples(counts))
    for dtype in ("Int64", "Float64"):
        missing = counts.astype({"a": dtype})
        missing.loc[3, "a"] = pd.NA
        with pytest.raises(ValueError, match="Input X contains NaN"):
            _fit(missing)
        with pytest.raises(ValueError, match="Input X contains NaN"):
            fitted.score_samples(missing)
    missing = counts.astype({"a": object})
    missing.loc[3, "a"] = None
    with pytest.raises(ValueError, match="Input X contains NaN"):
        _fit(missing)


@pytest.mark.parametrize(
    "column, match",
    [
        (["x", "y"] * 100, r"\['c'\] are not numeric \(column 'c' holds 'x'\)"),
        (["1.5", "two"] * 100, r"\['c'\] are not numeric \(column 'c' holds 'two'\)"),
        (pd.Categorical(["x", "y"] * 100), r"\['c'\] are not numeric"),
        (pd.Categorical([1.0, 2.0] * 100), r"\['c'\] are not numeric"),
        (pd.date_range("2020-01-01", periods=200), r"\['c'\] are not numeric"),
    ],
    ids=["text", "some-text", "category", "numeric-category", "dates"],
)
def test_text_category_and_date_columns_are_named(model, data, column, match):
    frame = pd.DataFrame({"a": data[:, 0], "c": column})
    fitted = copy.deepcopy(model)
    before = fitted.score_samples(data)
    with pytest.raises(ValueError, match=match):
        fitted.fit(frame)
    np.testing.assert_array_equal(fitted.score_samples(data), before)
    with pytest.raises(ValueError, match=match):
        fitted.score_samples(frame)


# ---------------------------------------------------------------------- failed fits
@pytest.mark.parametrize(
    "X, params, weight, match",
    [
        (np.ones((1, 2)), {}, None, "at least 2 rows"),
        (np.column_stack([np.arange(20.0), np.full(20, 0.5)]), {}, None, "feature"),
        (np.full((20, 2), 0.5), {}, None, "identical"),
        (None, {"validation_fraction": 0.999, "early_stopping": True}, None, "holds out"),
        (None, {"solver": {"options": {"step_size": 0}}}, None, "step_size"),
        (None, {}, np.zeros(200), "non-zero"),
        (pd.DataFrame({"a": ["x"] * 20, "b": np.arange(20.0)}), {}, None, "not numeric"),
        (
            pd.DataFrame({"a": pd.Categorical([1, 2] * 10), "b": np.arange(20.0)}),
            {},
            None,
            r"\['a'\] are not numeric",
        ),
        (
            pd.DataFrame({"a": pd.array([1, None] * 10, dtype="Int64"), "b": np.arange(20.0)}),
            {},
            None,
            "contains NaN",
        ),
    ],
    ids=[
        "one-row",
        "constant",
        "identical",
        "no-training-rows",
        "solver",
        "weights",
        "text",
        "category",
        "missing",
    ],
)
def test_every_failed_fit_keeps_the_fitted_model(model, data, X, params, weight, match):
    fitted = copy.deepcopy(model)
    before = fitted.score_samples(data)
    state = {k: v.clone() for k, v in fitted.flow_.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fitted.set_params(**params).fit(data if X is None else X, sample_weight=weight)
    fitted.set_params(**{k: getattr(model, k) for k in params})
    assert fitted.n_features_in_ == 2
    torch.testing.assert_close(fitted.flow_.state_dict(), state, rtol=0, atol=0)
    np.testing.assert_array_equal(fitted.score_samples(data), before)
