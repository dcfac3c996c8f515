"""Declared bounds: the log / logit maps, the density's support, samples and errors."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone

from skffjord import FFJORDDensity
from skffjord._bounds import BoundsMap, check_bounds, support

from .conftest import TINY


@pytest.fixture
def interval():
    # both bounds, lower only, upper only, none
    return np.array([[0.0, 2.0], [1.0, np.inf], [-np.inf, 3.0], [-np.inf, np.inf]])


@pytest.fixture
def inside():
    rng = np.random.default_rng(0)
    return np.column_stack(
        [
            rng.uniform(0.01, 1.99, 50),
            1 + rng.exponential(size=50),
            3 - rng.exponential(size=50),
            rng.normal(size=50),
        ]
    )


def test_map_round_trip_and_log_jacobian(interval, inside):
    opener = BoundsMap(interval).double()
    x = torch.as_tensor(inside)
    y, log_det = opener(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(opener.inverse(y), x, rtol=1e-10, atol=1e-12)
    # the map is per feature: log |det| is the sum of the log-derivatives, checked by
    # central differences
    eps = 1e-6
    slopes = (opener(x + eps)[0] - opener(x - eps)[0]) / (2 * eps)
    torch.testing.assert_close(log_det, torch.log(slopes).sum(-1), rtol=1e-6, atol=1e-6)
    # the unbounded feature passes through
    torch.testing.assert_close(y[:, 3], x[:, 3])


def test_inverse_stays_inside(interval):
    opener = BoundsMap(interval).double()
    y = torch.as_tensor(np.random.default_rng(1).normal(scale=20, size=(1000, 4)))
    x = opener.inverse(y).numpy()
    assert np.all(x[:, 0] >= 0) and np.all(x[:, 0] <= 2)
    assert np.all(x[:, 1] >= 1) and np.all(x[:, 2] <= 3)


def test_check_bounds_forms():
    names = np.array(["a", "b", "c"])
    expected = np.array([[0.0, 1.0], [-np.inf, np.inf], [-np.inf, 5.0]])
    np.testing.assert_array_equal(check_bounds({"a": (0, 1), "c": (None, 5)}, 3, names), expected)
    np.testing.assert_array_equal(check_bounds({0: (0, 1), -1: (None, 5)}, 3), expected)
    np.testing.assert_array_equal(check_bounds([(0, 1), (None, None), (-np.inf, 5)], 3), expected)
    np.testing.assert_array_equal(check_bounds(None, 2), [[-np.inf, np.inf]] * 2)


@pytest.mark.parametrize(
    ("bounds", "match"),
    [
        ({"z": (0, 1)}, "does not have"),
        ({5: (0, 1)}, "has 3 features"),
        ([(0, 1)], "one \\(low, high\\) pair per feature"),
        ({0: (1, 0)}, "low < high"),
        ({0: (0, float("nan"))}, "low < high"),
        ({0: "ab"}, "pair of numbers"),
        ({0.5: (0, 1)}, "names or indices"),
    ],
)
def test_check_bounds_errors(bounds, match):
    with pytest.raises(ValueError, match=match):
        check_bounds(bounds, 3, np.array(["a", "b", "c"]))


def test_support_widens_discrete_features_by_half_a_cell():
    bounds = np.array([[0.0, 16.0], [0.0, np.inf]])
    np.testing.assert_array_equal(
        support(bounds, np.array([1.0, 0.0])), [[-0.5, 16.5], [0.0, np.inf]]
    )


@pytest.fixture
def unit_data():
    rng = np.random.default_rng(0)
    return np.column_stack([rng.beta(0.5, 2.0, 400), rng.normal(size=400)])


def test_density_is_normalised_inside_the_bounds(unit_data):
    model = FFJORDDensity(**TINY, bounds=[(0, 1), (None, None)], random_state=0)
    model.fit(unit_data)
    # integrate over the logit of the bounded feature: x = sigmoid(y), dx = x (1 - x) dy
    y = np.linspace(-30, 30, 1201)
    x0 = 1 / (1 + np.exp(-y))
    x1 = np.linspace(-7, 7, 141)
    grid = np.array(np.meshgrid(x0, x1, indexing="ij")).reshape(2, -1).T
    density = np.exp(model.score_samples(grid)).reshape(len(y), len(x1))
    mass = np.trapezoid(np.trapezoid(density, x1, axis=1) * x0 * (1 - x0), y)
    assert mass == pytest.approx(1.0, abs=1e-3)


def test_fitted_model_agrees_with_a_model_of_the_logit(unit_data):
    # the same fit done by hand in the logit space scores the same, up to the Jacobian
    logit_data = unit_data.copy()
    logit_data[:, 0] = np.log(unit_data[:, 0]) - np.log1p(-unit_data[:, 0])
    bounded = FFJORDDensity(**TINY, bounds={0: (0, 1)}, random_state=0).fit(unit_data)
    by_hand = FFJORDDensity(**TINY, random_state=0).fit(logit_data)
    jacobian = -np.log(unit_data[:, 0]) - np.log1p(-unit_data[:, 0])
    np.testing.assert_allclose(
        bounded.score_samples(unit_data),
        by_hand.score_samples(logit_data) + jacobian,
        rtol=1e-6,
        atol=1e-6,
    )


def test_bounds_beat_an_unbounded_model_on_mass_at_a_bound():
    # most mass near zero: a smooth density on the real line leaks mass below it
    rng = np.random.default_rng(0)
    data = rng.exponential(0.2, size=(600, 1))
    train, test = data[:400], data[400:]
    params = {**TINY, "max_iter": 1}
    bounded = FFJORDDensity(**params, bounds=[(0, None)], random_state=0).fit(train)
    free = FFJORDDensity(**params, random_state=0).fit(train)
    assert bounded.score(test) > free.score(test) + 0.3
    # the log map of an exponential is well fitted by a Gaussian: close to the truth
    truth = np.mean(np.log(5.0) - 5.0 * test)
    assert bounded.score(test) > truth - 0.2


def test_rows_outside_score_minus_inf_and_the_rest_unchanged(unit_data):
    model = FFJORDDensity(**TINY, bounds=[(0, 1), (None, None)], random_state=0)
    model.fit(unit_data)
    rows = np.array([[-0.1, 0.0], [0.3, 0.5], [1.0, 0.0], [1.5, 2.0], [0.7, -1.0]])
    scores = model.score_samples(rows)
    assert np.all(scores[[0, 2, 3]] == -np.inf)
    np.testing.assert_allclose(scores[[1, 4]], model.score_samples(rows[[1, 4]]), rtol=1e-8)
    assert np.all(np.isfinite(scores[[1, 4]]))
    with pytest.raises(ValueError, match="outside the bounds"):
        model.trajectory(rows)


def test_samples_stay_inside_and_follow_the_data(unit_data):
    model = FFJORDDensity(**TINY, bounds=[(0, 1), (None, None)], random_state=0)
    model.fit(unit_data)
    samples = model.sample(4000, random_state=0)
    assert samples[:, 0].min() >= 0 and samples[:, 0].max() <= 1
    # the samples follow the model's own density: P(x0 < 0.1) by quadrature in the logit
    y = np.linspace(-30, np.log(0.1 / 0.9), 801)
    x0 = 1 / (1 + np.exp(-y))
    x1 = np.linspace(-7, 7, 141)
    grid = np.array(np.meshgrid(x0, x1, indexing="ij")).reshape(2, -1).T
    density = np.exp(model.score_samples(grid)).reshape(len(y), len(x1))
    below = np.trapezoid(np.trapezoid(density, x1, axis=1) * x0 * (1 - x0), y)
    # 4000 draws: a binomial standard error of at most 0.008
    assert np.mean(samples[:, 0] < 0.1) == pytest.approx(below, abs=0.03)


def test_discrete_feature_bounds_apply_to_recorded_values():
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.7, size=500).astype(float)
    X = np.column_stack([counts, rng.normal(size=500)])
    model = FFJORDDensity(
        **{**TINY, "discrete_features": "auto"}, bounds={0: (0, None)}, random_state=0
    )
    model.fit(X)
    assert model.discrete_features_[0] == 1.0
    # the cells of 0 fill [-0.5, 0.5]: 0 is inside the support, -0.5 is its edge
    assert np.isfinite(model.score_samples(np.array([[0.0, 0.0], [-0.4, 0.0]]))).all()
    assert model.score_samples(np.array([[-0.5, 0.0]]))[0] == -np.inf
    samples = model.sample(2000, random_state=0)[:, 0]
    assert samples.min() >= 0 and np.array_equal(samples, np.round(samples))


def test_training_values_outside_the_bounds_are_rejected(unit_data):
    model = FFJORDDensity(**TINY, bounds={0: (0.2, 1)})
    with pytest.raises(ValueError, match="outside the bounds of feature 0"):
        model.fit(unit_data)
    assert not hasattr(model, "flow_")
    # a continuous value on the bound has no density under the log map
    on_bound = unit_data.copy()
    on_bound[0, 0] = 0.0
    with pytest.raises(ValueError, match="strictly"):
        FFJORDDensity(**TINY, bounds={0: (0, 1)}).fit(on_bound)
    # a zero weight drops the row from the check, as from the fit
    weights = np.ones(len(on_bound))
    weights[0] = 0
    FFJORDDensity(**TINY, bounds={0: (0, 1)}).fit(on_bound, sample_weight=weights)


def test_bounds_by_name_with_pandas_clone_and_pickle(unit_data):
    frame = pd.DataFrame(unit_data, columns=["share", "z"])
    model = FFJORDDensity(**TINY, bounds={"share": (0, 1)}, random_state=0).fit(frame)
    np.testing.assert_array_equal(model.bounds_, [[0, 1], [-np.inf, np.inf]])
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.score_samples(frame), model.score_samples(frame))
    refit = clone(model).fit(frame)
    np.testing.assert_allclose(refit.score_samples(frame), model.score_samples(frame))


def test_warm_start_cannot_change_bounds(unit_data):
    model = FFJORDDensity(**TINY, bounds={0: (0, 1)}, warm_start=True, random_state=0)
    model.fit(unit_data)
    model.set_params(bounds={0: (0, 2)})
    with pytest.raises(ValueError, match="bounds"):
        model.fit(unit_data)
