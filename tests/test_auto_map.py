"""``standardize='auto'``: a short race of the affine and quantile maps, judged on held-out
log-likelihood, picks the map in front of the flow."""

from __future__ import annotations

import pickle
import time
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity

from .test_training import _InfiniteGradient


def _fit(X, **kw):
    params = dict(hidden_layer_sizes=(32, 32), max_iter=20, random_state=0)
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FFJORDDensity(**params).fit(X)


def _heavy(rng, n):
    return np.sinh(1.5 * rng.normal(size=(n, 3)))


def _gaussian(rng, n):
    cov = np.full((3, 3), 0.9) + 0.1 * np.eye(3)
    return rng.multivariate_normal(np.zeros(3), cov, size=n)


def test_auto_is_the_default():
    assert FFJORDDensity().standardize == "auto"


@pytest.mark.parametrize("make", [_heavy, _gaussian], ids=["heavy", "gaussian"])
def test_auto_scores_as_well_as_the_better_map(make):
    """The map chosen on held-out rows is the one that scores better on fresh rows, and
    the race costs little: the auto model is within 0.15 nats of the better explicit map
    fitted with the same budget of epochs."""
    rng = np.random.default_rng(0)
    X, X_test = make(rng, 2000), make(rng, 2000)
    auto = _fit(X, early_stopping=True)
    scores = {kind: _fit(X, standardize=kind).score(X_test) for kind in ("affine", "quantile")}
    better = max(scores, key=scores.get)
    print(auto.standardize_scores_, scores, auto.score(X_test))
    assert set(auto.standardize_scores_) == {"affine", "quantile"}
    assert auto.standardize_ == max(auto.standardize_scores_, key=auto.standardize_scores_.get)
    assert (auto.flow_.marginal is not None) == (auto.standardize_ == "quantile")
    if abs(scores["affine"] - scores["quantile"]) > 0.5:  # a clear case must be chosen right
        assert auto.standardize_ == better
    assert auto.score(X_test) > scores[better] - 0.15


def test_heavy_tails_choose_quantile_by_a_wide_margin():
    auto = _fit(_heavy(np.random.default_rng(1), 3000))
    assert auto.standardize_ == "quantile"
    assert auto.standardize_scores_["quantile"] > auto.standardize_scores_["affine"] + 1.0


def test_the_choice_is_in_the_users_units_and_equivariant():
    """Scores are held-out log-likelihoods of the user's rows: rescaling the data by 1000
    shifts both by -d log 1000 and changes no choice (both maps are affine-equivariant)."""
    X = _heavy(np.random.default_rng(2), 2000)
    a, b = _fit(X, max_iter=10), _fit(1000 * X + 5, max_iter=10)
    assert a.standardize_ == b.standardize_
    for kind, score in a.standardize_scores_.items():
        shifted = b.standardize_scores_[kind] + 3 * np.log(1000)
        assert abs(score - shifted) < 1e-3 * max(1.0, abs(score))
    np.testing.assert_allclose(
        a.score_samples(X[:50]), b.score_samples(1000 * X[:50] + 5) + 3 * np.log(1000), atol=2e-3
    )


@pytest.mark.parametrize("training", ["hybrid", "flow_matching", "likelihood"])
def test_history_counts_the_chosen_maps_epochs_only(training):
    X = _heavy(np.random.default_rng(3), 1500)
    model = _fit(X, training=training, max_iter=20, ode_solver_params={"step_size": 0.5})
    assert model.n_iter_ == len(model.history_) <= 20
    assert [h["epoch"] for h in model.history_] == list(range(1, model.n_iter_ + 1))
    times = [h["time"] for h in model.history_]
    assert times == sorted(times)
    if training == "hybrid":  # the race is the start of the flow-matching phase
        phases = [h["phase"] for h in model.history_]
        assert phases[0] == "flow_matching" and phases[-1] == "likelihood"
        assert phases == sorted(phases)  # 'flow_matching' < 'likelihood'


def test_both_maps_get_the_same_epochs(monkeypatch):
    """The second candidate trains for as many epochs as the first got in its share of
    ``max_time`` (equal work, whatever else the machine is doing), at most twice the time."""
    import skffjord._estimator as estimator

    calls = []
    original = estimator.train_flow

    def spy(flow, *args, **kwargs):
        result = original(flow, *args, **kwargs)
        calls.append((args[4], result))  # (config, result)
        return result

    monkeypatch.setattr(estimator, "train_flow", spy)
    _fit(_heavy(np.random.default_rng(8), 4000), max_iter=10**6, max_time=4.0)
    (first_cfg, first), (second_cfg, second) = calls[:2]
    assert first_cfg.training == second_cfg.training == "flow_matching"
    assert first_cfg.max_time == pytest.approx(0.2) and first_cfg.max_iter == 50_000
    assert second_cfg.max_iter == first.n_iter and second_cfg.max_time == pytest.approx(0.4)
    # (unless its time cap or the early-stopping patience ends it first)
    assert second.n_iter == first.n_iter or second.stop_reason in ("max_time", "converged")


def test_a_map_whose_flow_diverges_is_not_chosen(monkeypatch):
    """The quantile flow's first step gets an infinite gradient: its race fails, the affine
    flow is chosen and the fit goes on."""
    from skffjord import _training as training

    original = training.flow_matching_loss
    calls = {"n": 0}

    def loss(flow, u, w, generator):
        calls["n"] += 1
        value = original(flow, u, w, generator)
        return _InfiniteGradient.apply(value) if calls["n"] == 4 else value

    monkeypatch.setattr(training, "flow_matching_loss", loss)
    # 108 rows to fit (3 batches of 40), 12 held out; one race epoch each: call 4 is the
    # quantile flow's first step
    X = _heavy(np.random.default_rng(9), 120)
    model = _fit(X, training="flow_matching", batch_size=40, max_iter=5, averaging_decay=None)
    assert calls["n"] > 4
    assert model.standardize_scores_["quantile"] == -np.inf
    assert np.isfinite(model.standardize_scores_["affine"])
    assert model.standardize_ == "affine" and model.stop_reason_ != "diverged"
    assert model.n_iter_ == 5 and np.isfinite(model.score_samples(X)).all()


def test_max_time_covers_the_race():
    X = _heavy(np.random.default_rng(4), 20_000)
    start = time.perf_counter()
    model = _fit(X, max_iter=10**6, max_time=3.0)
    assert time.perf_counter() - start < 3.0 + 2.5  # map fitting and the last epoch's scoring
    assert model.stop_reason_ == "max_time"
    assert model.history_[-1]["time"] < 3.0 + 1.5


def test_without_rows_to_hold_out_auto_is_affine():
    model = _fit(np.array([[1.0, 2.0]]), max_iter=2)
    assert model.standardize_ == "affine" and model.standardize_scores_ is None
    # one row of positive weight: the held-out part or the rest has zero weight
    X = _gaussian(np.random.default_rng(5), 10)
    weights = np.zeros(10)
    weights[3] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = FFJORDDensity(max_iter=2, random_state=0).fit(X, sample_weight=weights)
    assert model.standardize_ == "affine" and model.standardize_scores_ is None
    assert np.isfinite(model.score_samples(X)).all()


def test_warm_refit_keeps_the_chosen_map():
    X = _heavy(np.random.default_rng(6), 1500)
    model = _fit(X, max_iter=4, warm_start=True)
    kind, scores = model.standardize_, dict(model.standardize_scores_)
    knots = None if model.flow_.marginal is None else model.flow_.marginal.knots.clone()
    model.fit(X * 3)  # no new race: the map stays
    assert model.standardize_ == kind and model.standardize_scores_ == scores
    if knots is not None:
        np.testing.assert_array_equal(model.flow_.marginal.knots.numpy(), knots.numpy())
    model.set_params(standardize=kind)  # naming the chosen map keeps it too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    other = "affine" if kind == "quantile" else "quantile"
    model.set_params(standardize=other)
    with pytest.raises(ValueError, match="standardize"):
        model.fit(X)


def test_models_pickled_before_auto_existed_report_their_map():
    X = _gaussian(np.random.default_rng(7), 300)
    model = _fit(X, standardize="quantile", max_iter=2)
    expected = model.score_samples(X)
    state = model.__dict__
    del state["standardize_"], state["standardize_scores_"]
    old = pickle.loads(pickle.dumps(model))
    assert old.standardize_ == "quantile" and old.standardize_scores_ is None
    np.testing.assert_array_equal(old.score_samples(X), expected)
