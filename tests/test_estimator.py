"""API behaviour: persistence, pipelines, input validation, failure handling."""

from __future__ import annotations

import math
import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import skffjord
import skffjord._defaults
import skffjord._estimator
from skffjord import DeviceWarning, FFJORDDensity
from skffjord._flow import FFJORDFlow
from skffjord._preprocessing import COVARIANCE_RIDGE

from .conftest import TINY


def tiny(**kw):
    params = dict(TINY, random_state=0)
    params.update(kw)
    return FFJORDDensity(**params)


@pytest.fixture
def X(rng):
    return rng.normal(size=(120, 3)) * [1.0, 5.0, 0.2] + [0.0, 10.0, -1.0]


@pytest.fixture
def fitted(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return tiny(max_iter=3).fit(X)


def test_version_and_public_surface():
    assert isinstance(skffjord.__version__, str)
    assert "FFJORDDensity" in skffjord.__all__


def test_fit_returns_self_and_sets_attributes(X):
    model = tiny()
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        assert model.fit(X) is model
    assert model.n_features_in_ == 3
    assert model.n_iter_ == 2 and len(model.history_) == 2
    assert set(model.history_[0]) >= {
        "epoch", "train_loss", "valid_score", "nfe", "solver_gap", "time", "learning_rate"
    }  # fmt: skip
    assert model.history_[0]["nfe"] == 8  # rk4, 2 steps of 4 evaluations
    assert model.loss_curve_ == [h["train_loss"] for h in model.history_]
    assert model.validation_scores_ is None and model.best_validation_score_ is None
    assert model.stop_reason_ == "max_iter"
    assert model.get_params()["hidden_layer_sizes"] == (8,)  # parameters untouched


def test_score_is_mean_of_score_samples(fitted, X):
    assert fitted.score(X) == pytest.approx(fitted.score_samples(X).mean(), rel=1e-12)


def test_unfitted_raises():
    with pytest.raises(NotFittedError):
        FFJORDDensity().score_samples(np.zeros((2, 2)))
    with pytest.raises(NotFittedError):
        FFJORDDensity().sample()


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_persistence_round_trip(fitted, X, dump, tmp_path):
    if dump == "pickle":
        loaded = pickle.loads(pickle.dumps(fitted))
    else:
        joblib.dump(fitted, tmp_path / "model.joblib")
        loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.score_samples(X), fitted.score_samples(X))
    np.testing.assert_array_equal(
        loaded.sample(4, random_state=0), fitted.sample(4, random_state=0)
    )


def test_pickles_carry_the_version_and_refuse_an_incompatible_one(fitted, X):
    state = fitted.__getstate__()
    assert state["_skffjord_version"] == skffjord.__version__
    loaded = pickle.loads(pickle.dumps(fitted))
    assert "_skffjord_version" not in loaded.__dict__
    major, minor, *_ = skffjord.__version__.split(".")
    for written in (f"{major}.{int(minor) + 1}.0", None):
        blob = dict(state, _skffjord_version=written)
        if written is None:
            del blob["_skffjord_version"]
        stale = FFJORDDensity.__new__(FFJORDDensity)
        with pytest.raises(ValueError, match="pickled by skffjord .*cannot load"):
            stale.__setstate__(blob)
    # a patch release reads it
    patched = FFJORDDensity.__new__(FFJORDDensity)
    patched.__setstate__(dict(state, _skffjord_version=f"{major}.{minor}.99"))
    np.testing.assert_array_equal(patched.score_samples(X), fitted.score_samples(X))


def test_unpickle_on_machine_without_the_device(fitted, X, monkeypatch):
    fitted.device_ = "cuda"  # as if fitted on a GPU machine
    blob = pickle.dumps(fitted)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning, match="not available"):
        loaded = pickle.loads(blob)
    assert loaded.device_ == "cpu"
    assert np.isfinite(loaded.score_samples(X)).all()


def test_missing_cuda_is_a_clear_error(X, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA device 0 is not available"):
        tiny(device="cuda").fit(X)
    with pytest.raises(ValueError, match="Unsupported device|Unknown device"):
        tiny(device="tpu").fit(X)


def test_clone_is_unfitted_with_same_params(fitted):
    c = clone(fitted)
    assert c.get_params() == fitted.get_params()
    assert not hasattr(c, "flow_")


def test_random_state_makes_fits_reproducible(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = tiny(random_state=3, trace_estimator="hutchinson").fit(X).score_samples(X)
        b = tiny(random_state=3, trace_estimator="hutchinson").fit(X).score_samples(X)
        c = tiny(random_state=4, trace_estimator="hutchinson").fit(X).score_samples(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_pipeline_with_scaler(X):
    pipe = make_pipeline(StandardScaler(), tiny())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(X)
    assert pipe.score_samples(X).shape == (len(X),)
    assert np.isfinite(pipe.score(X))


def test_grid_search_selects_hidden_sizes_by_heldout_likelihood(rng):
    from sklearn.datasets import make_moons

    X, _ = make_moons(n_samples=600, noise=0.08, random_state=0)
    grid = GridSearchCV(
        FFJORDDensity(
            training="likelihood",
            max_iter=15,
            batch_size=128,
            learning_rate_init=5e-3,
            solver={"method": "rk4", "options": {"step_size": 0.25}},
            random_state=0,
            activation="tanh",
            standardize="affine",  # a Gaussian start: the field has to bend the moons
            n_components=1,
            early_stopping=False,
        ),
        {"hidden_layer_sizes": [(1,), (32, 32)]},
        cv=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X)
    scores = grid.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    assert grid.best_score_ == scores.max()
    # a one-unit bottleneck cannot bend the moons; the wider field wins held-out
    assert grid.best_params_ == {"hidden_layer_sizes": (32, 32)}
    # (0.037 apart)
    assert scores[1] > scores[0] + 0.02


def test_pandas_input_records_feature_names(X):
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = tiny().fit(df)
    np.testing.assert_array_equal(model.feature_names_in_, ["a", "b", "c"])
    with pytest.warns(UserWarning, match="valid feature names"):
        from_numpy = model.score_samples(X)
    np.testing.assert_array_equal(model.score_samples(df), from_numpy)
    with pytest.raises(ValueError, match="feature names"):
        model.score_samples(df.rename(columns={"a": "z"}))


def test_read_only_input_is_copied_not_shared():
    """A read-only array (pandas' copy-on-write frames give one) becomes a tensor of its
    own; a writable one is shared, not copied."""
    from skffjord._utils import float64_tensor

    X = np.arange(6.0).reshape(3, 2)
    shared = float64_tensor(X, torch.device("cpu"))
    assert np.shares_memory(shared.numpy(), X)
    X.setflags(write=False)
    copied = float64_tensor(X, torch.device("cpu"))
    assert not np.shares_memory(copied.numpy(), X)
    np.testing.assert_array_equal(copied.numpy(), X)


def test_read_only_and_pandas_input_fit_without_pytorch_warnings():
    """In a fresh interpreter (PyTorch reports a read-only array once per process):
    fitting, scoring and tracing a read-only array and a pandas frame raise no warning
    about non-writable memory, and both fits equal the fit on a writable copy."""
    import subprocess
    import sys

    code = f"""
import warnings
import numpy as np
import pandas as pd
from skffjord import FFJORDDensity
warnings.filterwarnings("error", message=".*not writable.*")
warnings.filterwarnings("ignore", message=".*Maximum iterations.*")
X = np.random.default_rng(0).normal(size=(60, 2))
params = {dict(TINY, random_state=0)!r}
reference = FFJORDDensity(**params).fit(X).score_samples(X)
read_only = X.copy()
read_only.setflags(write=False)
model = FFJORDDensity(**params).fit(read_only)
np.testing.assert_array_equal(model.score_samples(read_only), reference)
model.trajectory(read_only, n_times=2)
frame = pd.DataFrame(X, columns=["a", "b"])
np.testing.assert_array_equal(FFJORDDensity(**params).fit(frame).score_samples(frame), reference)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_non_numeric_columns_are_named(X):
    df = pd.DataFrame(X, columns=["a", "b", "c"]).assign(city=["x"] * len(X))
    with pytest.raises(ValueError, match=r"\['city'\] are not numeric"):
        tiny().fit(df)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "infinity"),
        (np.arange(5.0), "Expected 2D array"),
        (np.empty((0, 2)), "0 sample"),
        (np.array([["a", "b"], ["c", "d"]], dtype=object), "could not convert|not numeric"),
    ],
)
def test_bad_fit_input_raises_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny().fit(bad)


def test_bad_score_input(fitted):
    with pytest.raises(ValueError, match="3 features"):
        fitted.score_samples(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="Expected 2D array"):
        fitted.score_samples(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        fitted.score_samples(np.full((1, 3), np.nan))
    with pytest.raises(ValueError, match="n_samples"):
        fitted.sample(0)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes"),
        ({"hidden_layer_sizes": "big"}, "hidden_layer_sizes"),
        ({"activation": "relu"}, "activation"),
        ({"trace_estimator": "approx"}, "trace_estimator"),
        ({"solver": {"method": "lsoda"}}, "solver\\['method'\\]"),
        ({"solver": {"metod": "rk4"}}, "unknown key.*metod"),
        ({"solver": {"options": {"step_size": 0}}}, "step_size"),
        ({"solver": {"dtype": "float16"}}, "solver\\['dtype'\\]"),
        ({"solver": {"adjoint": "yes"}}, "adjoint"),
        ({"solver": {"jacobian_reg": -1}}, "jacobian_reg"),
        ({"solver": "rk4"}, "solver"),
        ({"eval_solver": {"method": "bosh3"}}, "eval_solver\\['method'\\]"),
        ({"eval_solver": {"dtype": "float16"}}, "eval_solver\\['dtype'\\]"),
        ({"eval_solver": {"max_num_steps": 0}}, "max_num_steps"),
        ({"eval_solver": {"options": {"step_size": 0.1}}}, "do not apply"),
        ({"solver": {"atol": -1.0}}, "atol"),
        ({"batch_size": 0}, "batch_size"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
    ],
)
def test_bad_parameters_are_named(X, params, match):
    with pytest.raises(ValueError, match=match):
        tiny(**params).fit(X)


def test_failed_fit_keeps_the_previous_model(fitted, X):
    before = fitted.score_samples(X)
    bad = X[:, :2].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        fitted.fit(bad)
    assert fitted.n_features_in_ == 3
    np.testing.assert_array_equal(fitted.score_samples(X), before)


def _fail_on_call(monkeypatch, n_call, exc_factory, record=None):
    """Make FFJORDFlow.train_log_prob fail on its ``n_call``-th training call (with grad:
    the no-grad solver_gap checks are not counted)."""
    original = FFJORDFlow.train_log_prob
    calls = {"n": 0}

    def patched(self, u, config, generator):
        if not torch.is_grad_enabled():
            return original(self, u, config, generator)
        calls["n"] += 1
        if record is not None:
            record.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        if calls["n"] == n_call:
            raise exc_factory()
        return original(self, u, config, generator)

    monkeypatch.setattr(FFJORDFlow, "train_log_prob", patched)


def test_nan_loss_stops_with_message_and_keeps_last_good_weights(X, monkeypatch):
    original = FFJORDFlow.train_log_prob
    states = []
    calls = {"n": 0}

    def nan_on_fifth(self, u, config, generator):
        if not torch.is_grad_enabled():  # a solver_gap check, not a training step
            return original(self, u, config, generator)
        calls["n"] += 1
        states.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        logp, reg, dyn = original(self, u, config, generator)
        if calls["n"] == 5:
            logp = logp * float("nan")
        return logp, reg, dyn

    monkeypatch.setattr(FFJORDFlow, "train_log_prob", nan_on_fifth)
    model = tiny(max_iter=10, batch_size=40)
    with pytest.warns(
        ConvergenceWarning, match="NaN or infinite.*last good weights.*learning_rate"
    ):
        model.fit(X)
    assert model.stop_reason_ == "diverged"
    assert model.n_iter_ == 1  # 3 batches per epoch: the 5th call is in epoch 2
    # the kept weights are those of the 4th step: the last with a finite loss
    kept = model.flow_.state_dict()
    for k, v in states[3].items():
        torch.testing.assert_close(kept[k], v.to(kept[k].dtype))
    assert np.isfinite(model.score_samples(X)).all()


def test_solver_step_cap_stops_with_message(X):
    model = tiny(solver={"method": "dopri5", "max_num_steps": 1}, max_iter=3)
    with pytest.warns(ConvergenceWarning, match="step cap.*max_num_steps"):
        model.fit(X)
    assert model.stop_reason_ == "solver_failed"
    assert np.isfinite(model.score_samples(X)).all()


def test_keyboard_interrupt_keeps_best_model(X, monkeypatch):
    import skffjord._fitting as estimator

    _fail_on_call(monkeypatch, 7, KeyboardInterrupt)
    # the best epoch is kept over the starting model (that guard: test_starting_model.py)
    monkeypatch.setattr(estimator, "significant_gain", lambda *args: True)
    model = tiny(max_iter=50, batch_size=40, early_stopping=True, n_iter_no_change=50)
    with pytest.warns(UserWarning, match="interrupted"):
        model.fit(X)
    assert model.stop_reason_ == "interrupted"
    # 108 training rows: 3 batches per epoch; training call 7 is the first batch of epoch 3
    assert model.n_iter_ == 2
    assert model.best_validation_score_ == max(model.validation_scores_)
    assert np.isfinite(model.score_samples(X)).all()


def test_early_stopping_restores_best_validation_weights(rng):
    from skffjord._flow import TrainConfig
    from skffjord._training import train_flow, validation_score

    solver = TrainConfig(method="rk4", options={"step_size": 0.25})
    X, gen, flow, cfg = _train_flow_setup(rng, solver=solver)  # validates through `solver`
    w = torch.ones(60)
    result = train_flow(
        flow, X[:40], w[:40], X[40:], w[40:], cfg, rng=np.random.default_rng(0), generator=gen
    )
    scores = [h["valid_score"] for h in result.history]
    assert result.stop_reason == "converged" and result.n_iter < 40  # overfits, then stops
    assert result.best_validation_score == max(scores)
    assert int(np.argmax(scores)) < len(scores) - 1  # the best epoch is not the last one
    restored = validation_score(flow, X[40:], w[40:], solver, 1024)
    assert restored == pytest.approx(result.best_validation_score, abs=1e-6)


def test_max_time_budget(X, monkeypatch):
    """The fit stops at the first reading of the clock past ``max_time``; the clock is a fake
    one that advances 10 ms at every reading."""
    import itertools
    import time

    readings = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 0.01 * next(readings))
    model = tiny(max_iter=100000, max_time=0.5, batch_size=16)
    model.fit(X)
    assert model.stop_reason_ == "max_time"
    assert sum(h["n_steps"] for h in model.history_) <= 50  # at least a reading per step
    assert 0.5 < model.history_[-1]["time"] <= 0.5 + 0.05  # a few readings late at most


def test_warm_start_continues_training(X):
    X = np.sinh(X - X.mean(0))  # not Gaussian: the affine map's Gaussian start is improvable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = tiny(max_iter=5, warm_start=True, learning_rate_init=1e-2).fit(X)
        first = model.loss_curve_
        model.fit(X)
        cold = tiny(max_iter=5, learning_rate_init=1e-2).fit(X)
    assert model.loss_curve_[0] < first[0]
    np.testing.assert_allclose(cold.loss_curve_, first)  # cold refit starts from scratch
    with pytest.raises(ValueError, match="warm_start"):
        model.fit(X[:, :2])


def test_integer_sample_weights_equal_repeated_rows(X):
    weights = np.tile([0, 1, 2], len(X) // 3)
    repeated = np.repeat(X, weights, axis=0)
    # affine: the quantile map counts weights by their ratios (its resolution follows the
    # effective sample size), so there integer weights only approximate repeated rows
    # (tests/test_marginal.py)
    kw = dict(trace_estimator="exact", batch_size=1000, max_iter=3)
    kw.update(standardize="affine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = tiny(**kw).fit(X, sample_weight=weights)
        b = tiny(**kw).fit(repeated)
    # float32 training: equal up to round-off amplified by Adam (ignoring the weights
    # instead moves scores by ~0.6 nats here)
    np.testing.assert_allclose(a.score_samples(X), b.score_samples(X), rtol=0, atol=2e-3)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-4)
    with pytest.raises(ValueError, match="non-negative"):
        tiny().fit(X, sample_weight=-np.ones(len(X)))


def test_standardization_keeps_scores_in_user_units(X):
    """Scaling the data by c shifts every log-density by -d log c."""
    c = 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = tiny().fit(X)
        b = tiny().fit(X * c)
    np.testing.assert_allclose(
        b.score_samples(X * c), a.score_samples(X) - 3 * np.log(c), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("standardize", ["affine", "quantile"])
def test_zero_field_scores_gaussian_with_standardization(X, standardize):
    import scipy.stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = tiny(max_iter=3, standardize=standardize).fit(X)
    for block in fitted.flow_.blocks:  # back to the initial, zero vector field
        torch.nn.init.zeros_(block.field.layers[-1].linear.weight)
        torch.nn.init.zeros_(block.field.layers[-1].linear.bias)
        torch.nn.init.zeros_(block.field.layers[-1].hyper_bias.weight)
    if standardize == "affine":  # the full-covariance Gaussian (with the map's ridge)
        cov = np.cov(X.T, bias=True)
        cov += COVARIANCE_RIDGE * np.diag(np.diag(cov))
        expected = scipy.stats.multivariate_normal(X.mean(0), cov).logpdf(X)
    else:  # N(0, 1) at the piecewise-linear map through the knots (rows between them)
        grid, knots = fitted.flow_.marginal.grid.numpy(), fitted.flow_.marginal.knots.numpy()
        inside = ((X > knots[:, 0]) & (X < knots[:, -1])).all(1)
        assert inside.sum() > len(X) // 5  # 120 rows: about 20 lie beyond each end
        X = X[inside]
        expected = 0.0
        for j in range(X.shape[1]):
            k = np.searchsorted(knots[j], X[:, j]) - 1
            slope = (grid[k + 1] - grid[k]) / (knots[j, k + 1] - knots[j, k])
            u = grid[k] + (X[:, j] - knots[j, k]) * slope
            expected = expected + scipy.stats.norm.logpdf(u) + np.log(slope)
    np.testing.assert_allclose(fitted.score_samples(X), expected, rtol=0, atol=1e-5)  # float32
    fitted.set_params(eval_solver={**TINY["eval_solver"], "dtype": "float64"})
    np.testing.assert_allclose(fitted.score_samples(X), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "kw",
    [
        dict(trace_estimator="exact"),
        dict(hidden_layer_sizes=(16, 2, 16)),
        dict(solver={"method": "dopri5", "adjoint": True}),
        dict(solver={"method": "dopri5", "kinetic_energy_reg": 0.1, "jacobian_reg": 0.1}),
        dict(
            n_blocks=2,
            activation="elu",
            eval_solver={"method": "rk4", "options": {"step_size": 0.05}},
        ),
        dict(standardize=False, activation="swish", early_stopping=True),
    ],
)
def test_training_variants_run_and_improve(rng, kw):
    a = rng.normal(size=200)
    X = np.c_[a, a**2 + 0.3 * rng.normal(size=200), np.sin(2 * a) + 0.2 * rng.normal(size=200)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = tiny(max_iter=4, learning_rate_init=1e-2, batch_size=25, **kw).fit(X)
    assert np.isfinite(model.score_samples(X)).all()
    assert model.loss_curve_[-1] < model.loss_curve_[0]


def test_kinetic_regularisation_shortens_paths():
    """On non-Gaussian data (the field must move) the kinetic penalty keeps it short."""
    from sklearn.datasets import make_moons

    from skffjord._flow import TrainConfig

    X, _ = make_moons(200, noise=0.1, random_state=0)

    probe = TrainConfig(method="rk4", options={"step_size": 0.1}, kinetic_energy_reg=1.0)
    energies = []
    for reg in (0.0, 5.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            solver = {**TINY["solver"], "kinetic_energy_reg": reg}
            model = tiny(max_iter=8, learning_rate_init=1e-2, solver=solver, standardize=False).fit(
                X
            )
        u = model.flow_.standardize(torch.as_tensor(X)).float()  # the blocks are float32
        _, ke, _ = model.flow_.train_log_prob(u, probe, None)
        energies.append(ke.mean().item())
    assert energies[1] < 0.5 * energies[0]


def test_verbose_shows_progress(X, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        tiny(verbose=1).fit(X)
    err = capsys.readouterr().err
    assert "FFJORD fit" in err and "loss=" in err and "nfe=" in err


def test_solver_underflow_stops_with_message(X, monkeypatch):
    import skffjord._ode as ode

    def underflow(*args, **kwargs):
        raise AssertionError("underflow in dt 0.0")

    monkeypatch.setattr(ode, "odeint", underflow)
    model = tiny(max_iter=3)
    with pytest.warns(ConvergenceWarning, match="step size underflowed.*To avoid this"):
        model.fit(X)
    assert model.stop_reason_ == "solver_failed"
    monkeypatch.undo()
    assert np.isfinite(model.score_samples(X)).all()


@pytest.mark.parametrize("eval_dtype, atol", [("float64", 1e-12), ("float32", 1e-3)])
def test_scoring_in_chunks_gives_the_same_scores(fitted, X, monkeypatch, eval_dtype, atol):
    """To rounding in float64; in float32 within the solver tolerance (a step-size
    decision may tip)."""
    fitted.set_params(eval_solver={**TINY["eval_solver"], "dtype": eval_dtype})
    whole = fitted.score_samples(X)
    monkeypatch.setattr(skffjord._estimator, "chunk_rows", lambda *args: 7)
    np.testing.assert_allclose(fitted.score_samples(X), whole, rtol=0, atol=atol)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_scoring_workspace_path_gives_the_allocating_paths_scores(X, monkeypatch, method):
    """In float64 to rounding: the buffers of ``forward_with_trace_into`` change nothing,
    with the per-row solver (a time per row) and a fixed grid (one time for all rows)."""
    from skffjord._dynamics import VectorField

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = tiny(
            hidden_layer_sizes=(8, 8),
            max_iter=3,
            eval_solver={"method": method, "dtype": "float64"},
        ).fit(X)
    assert fitted.flow_.blocks[0].field.has_fast_scoring_path
    calls = []
    fast = VectorField.forward_with_trace_into
    monkeypatch.setattr(
        VectorField, "forward_with_trace_into", lambda *a: calls.append(1) or fast(*a)
    )
    scores = fitted.score_samples(X)
    assert calls
    monkeypatch.setattr(VectorField, "has_fast_scoring_path", property(lambda self: False))
    np.testing.assert_allclose(fitted.score_samples(X), scores, rtol=0, atol=1e-10)


def test_integer_hidden_layer_sizes(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = tiny(hidden_layer_sizes=5).fit(X)
    assert model.flow_.blocks[0].field.layers[0].linear.out_features == 5


def test_warm_start_uses_new_optimizer_settings_and_rejects_new_structure(X, monkeypatch):
    import skffjord._training as training

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = tiny(warm_start=True).fit(X)
        seen = []
        original = torch.optim.Adam.step

        def spy(self, *a, **k):
            seen.append((self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]))
            return original(self, *a, **k)

        monkeypatch.setattr(training.torch.optim.Adam, "step", spy)
        model.set_params(learning_rate_init=0.05, alpha=0.1).fit(X)
    assert seen and all(s == (0.05, 0.1) for s in seen)
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        model.set_params(hidden_layer_sizes=(4,)).fit(X)


def test_early_stopping_with_zero_weight_split_is_a_clear_error(X):
    w = np.zeros(len(X))
    w[0] = 1.0  # one split must be left with zero weight
    with pytest.raises(ValueError, match="sample weights are all zero"):
        tiny(early_stopping=True, validation_fraction=0.5).fit(X, sample_weight=w)


def test_jacobian_penalty_works_with_exact_trace(X):
    from skffjord._flow import TrainConfig

    model = tiny(max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    for block in model.flow_.blocks:
        torch.nn.init.normal_(block.field.layers[-1].linear.weight)
    u = model.flow_.standardize(torch.as_tensor(X)).float()  # the blocks are float32
    cfg = TrainConfig(method="rk4", trace_estimator="exact", jacobian_reg=1.0)
    _, reg, dynamics = model.flow_.train_log_prob(u, cfg, torch.Generator().manual_seed(0))
    # taken at a random share of the rows (JACOBIAN_PENALTY_SHARE), weighted up
    probed = torch.unique(torch.cat([d.probe_rows for d in dynamics]))
    assert 0 < probed.numel() < len(X)
    assert (reg[probed] > 0).all()


@pytest.mark.parametrize("value", [1e300, 1e155, 1e20])
def test_extreme_rows_score_minus_infinity_or_fail_fast(fitted, value, monkeypatch):
    """Far-away rows get a (near) -inf log-density or a SolverError, never a long spin: the
    field is evaluated a few times, not up to the solver's step cap (10,000 steps)."""
    from skffjord._dynamics import VectorField

    evaluations = []

    def counting(method):
        def counted(*args, **kwargs):
            evaluations.append(1)
            return method(*args, **kwargs)

        return counted

    for name in ("forward", "forward_with_trace", "forward_with_trace_into"):
        monkeypatch.setattr(VectorField, name, counting(getattr(VectorField, name)))
    try:
        score = fitted.score_samples(np.array([[value, 0.0, 0.0]]))[0]
    except skffjord.SolverError:
        score = -np.inf
    assert score < -1e30
    assert 1 <= len(evaluations) <= 100


def test_adjoint_backward_solver_failure_stops_cleanly(X, monkeypatch):
    import torchdiffeq._impl.adjoint as adjoint_impl

    original = adjoint_impl.odeint
    calls = {"n": 0}

    def fail_in_backward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # call 1: forward solve; call 2: the adjoint's backward solve
            raise AssertionError("max_num_steps exceeded (12>=12)")
        return original(*args, **kwargs)

    monkeypatch.setattr(adjoint_impl, "odeint", fail_in_backward)
    model = tiny(solver={"method": "dopri5", "adjoint": True}, max_iter=3)
    with pytest.warns(ConvergenceWarning, match="step cap"):
        model.fit(X)
    assert model.stop_reason_ == "solver_failed"
    assert calls["n"] == 2


def test_defaults_hybrid_auto_width_four_rk4_steps_and_rnode(X):
    from skffjord._dynamics import auto_hidden_layer_sizes

    assert auto_hidden_layer_sizes(2) == (128, 128)
    assert auto_hidden_layer_sizes(8) == (128, 128)
    assert auto_hidden_layer_sizes(21) == (192, 192)
    assert auto_hidden_layer_sizes(43) == (256, 256)
    assert auto_hidden_layer_sizes(63) == (256, 256)
    assert auto_hidden_layer_sizes(500) == (256, 256)
    model = FFJORDDensity(max_iter=4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    assert model.get_params()["hidden_layer_sizes"] == "auto"  # parameters untouched
    assert [layer.linear.out_features for layer in model.flow_.blocks[0].field.layers] == [
        128,
        128,
        3,
    ]
    assert [h["phase"] for h in model.history_] == ["flow_matching"] * 3 + ["likelihood"]
    assert model.history_[-1]["nfe"] == 16  # rk4: 4 steps of 4 evaluations
    defaults = skffjord._defaults.TRAIN_SOLVER_DEFAULTS
    assert defaults["kinetic_energy_reg"] == defaults["jacobian_reg"] == 0.01
    assert skffjord._defaults.AVERAGING_DECAY == 0.999  # flow matching's weights averaged
    assert np.isfinite(model.score_samples(X)).all()


def test_trajectory_runs_from_data_to_latent(fitted, X):
    path = fitted.trajectory(X[:7], n_times=5)
    assert path.shape == (5, 7, 3)
    np.testing.assert_allclose(path[0], X[:7], rtol=1e-12)
    # the last state is the latent point, mapped back through the standardisation
    from skffjord._flow import EvalConfig

    cfg = EvalConfig(**{k: v for k, v in TINY["eval_solver"].items()})
    latent = fitted.flow_.unstandardize(fitted.flow_.to_latent(torch.as_tensor(X[:7]), cfg))
    np.testing.assert_allclose(path[-1], latent.numpy(), atol=1e-4)
    # integrating back from the end recovers the start
    back = fitted.flow_.to_data(fitted.flow_.standardize(torch.as_tensor(path[-1])), cfg)
    np.testing.assert_allclose(back.numpy(), X[:7], atol=1e-4)
    with pytest.raises(ValueError, match="n_times"):
        fitted.trajectory(X[:2], n_times=1)


def test_eval_dtype_sets_the_solve_precision_not_the_standardisation(rng):
    """Rows far from the origin: a float32 standardisation would be off by whole nats."""
    X = rng.normal(size=(200, 2)) * [1e-3, 2.0] + [1e6, -3e5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = tiny(max_iter=3, eval_solver={"dtype": "float64"}, random_state=0).fit(X)
    double = model.score_samples(X)
    single = model.set_params(eval_solver={"dtype": "float32"}).score_samples(X)
    assert np.all(np.abs(single - double) < 1e-3)
    assert np.any(single != double)  # really solved in another precision
    # sampling and its inverse keep the user's units
    samples = model.sample(50, random_state=0)
    assert samples.dtype == np.float64
    assert abs(samples[:, 0].mean() - 1e6) < 1.0


def _train_flow_setup(rng, **fit_kwargs):
    from skffjord._flow import TrainConfig
    from skffjord._training import FitConfig

    X = torch.as_tensor(rng.normal(size=(60, 2)), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    flow = FFJORDFlow(
        2, (32, 32), "tanh", 1, 1.0, torch.zeros(2), torch.ones(2), generator=gen
    ).float()
    settings = dict(
        batch_size=20,
        learning_rate_init=3e-2,
        alpha=0.0,
        max_iter=40,
        max_time=None,
        tol=0.0,
        n_iter_no_change=5,
        shuffle=True,
        solver=TrainConfig(method="euler", options={"step_size": 1.0}),
    )
    settings.update(fit_kwargs)
    return X, gen, flow, FitConfig(**settings)


def test_validation_goes_through_the_evaluation_solver(rng):
    from skffjord._flow import EvalConfig
    from skffjord._training import train_flow, validation_score

    evaluation = EvalConfig(atol=1e-6, rtol=1e-6)
    X, gen, flow, cfg = _train_flow_setup(rng, validation_solver=evaluation)
    w = torch.ones(60)
    result = train_flow(
        flow, X[:40], w[:40], X[40:], w[40:], cfg, rng=np.random.default_rng(0), generator=gen
    )
    restored = validation_score(flow, X[40:], w[40:], evaluation, 1024)
    assert restored == pytest.approx(result.best_validation_score, abs=1e-6)
    # the one-step Euler training solver gives a different number for the same weights
    coarse = validation_score(flow, X[40:], w[40:], cfg.solver, 1024)
    assert abs(coarse - restored) > 1e-3


def test_score_initial_keeps_the_starting_weights_when_training_only_hurts(rng):
    from skffjord._flow import EvalConfig
    from skffjord._training import train_flow, validation_score

    evaluation = EvalConfig(atol=1e-6, rtol=1e-6)
    # an absurd learning rate: every epoch is worse than the starting weights
    X, gen, flow, cfg = _train_flow_setup(
        rng, validation_solver=evaluation, score_initial=True, learning_rate_init=3.0
    )
    start = {k: v.clone() for k, v in flow.state_dict().items()}
    initial = validation_score(flow, X[40:], torch.ones(20), evaluation, 1024)
    w = torch.ones(60)
    result = train_flow(
        flow, X[:40], w[:40], X[40:], w[40:], cfg, rng=np.random.default_rng(0), generator=gen
    )
    scores = [h["valid_score"] for h in result.history]
    assert max(scores) < initial  # the premise: training made it worse
    assert result.best_validation_score == pytest.approx(initial, abs=1e-6)
    assert all(torch.equal(v, start[k]) for k, v in flow.state_dict().items())
    assert result.n_iter == cfg.n_iter_no_change  # no epoch beat the starting weights


def test_solver_gap_is_small_for_a_fine_solver_and_large_for_a_coarse_one(rng):
    from skffjord._flow import EvalConfig, TrainConfig
    from skffjord._training import FitConfig, solver_gap

    gen = torch.Generator().manual_seed(0)
    flow = FFJORDFlow(
        2, (32, 32), "tanh", 1, 1.0, torch.zeros(2), torch.ones(2), generator=gen
    ).double()
    with torch.no_grad():  # a strongly non-linear field (the output layer starts at zero)
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    u = torch.as_tensor(rng.normal(size=(300, 2)))

    def gap(solver):
        cfg = FitConfig(
            batch_size=10, learning_rate_init=1e-3, alpha=0.0, max_iter=1, max_time=None,
            tol=0.0, n_iter_no_change=1, shuffle=False, solver=solver,
            validation_solver=EvalConfig(atol=1e-8, rtol=1e-8),
        )  # fmt: skip
        return solver_gap(flow, u, torch.ones(u.shape[0], dtype=u.dtype), cfg, n_rows=64)

    fine = gap(TrainConfig(method="rk4", options={"step_size": 0.01}))
    assert math.isfinite(fine) and abs(fine) < 1e-4
    assert abs(gap(TrainConfig(method="euler", options={"step_size": 1.0}))) > 0.1


@pytest.mark.parametrize("gap, warns", [(5.0, True), (0.05, False)])
def test_fit_warns_when_the_training_solver_is_exploited(X, monkeypatch, gap, warns):
    import skffjord._training as training

    monkeypatch.setattr(training, "solver_gap", lambda *args, **kwargs: gap)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = tiny(max_iter=2).fit(X)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert any("solver_gap" in m for m in messages) == warns
    assert model.history_[-1]["solver_gap"] == gap


@pytest.mark.parametrize("user_steps", [False, True])
def test_default_training_solver_refines_when_exploited(X, monkeypatch, user_steps):
    """A gap above the threshold adds one step to the default RK4 steps; steps the user
    chose are left alone."""
    import skffjord._training as training
    from skffjord._defaults import REFINE_SOLVER_GAP

    gaps = iter([2 * REFINE_SOLVER_GAP, 0.0] * 10)
    monkeypatch.setattr(training, "solver_gap", lambda *args, **kwargs: next(gaps))
    options = {"step_size": 1 / 8} if user_steps else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        solver = {"method": "rk4", "options": options}
        model = tiny(max_iter=10, n_iter_no_change=100, solver=solver).fit(X)
    nfe = [h["nfe"] for h in model.history_]
    if user_steps:
        assert nfe == [32] * 10
    else:  # 4 steps of 4 evaluations, one step more after epochs 1, 3, 5, 7 and 9
        assert nfe == [16, 20, 20, 24, 24, 28, 28, 32, 32, 36]


def test_training_solver_refinement_stops_at_its_cap(rng):
    from dataclasses import replace

    from skffjord._callbacks import refine_solver as _refined
    from skffjord._flow import TrainConfig

    *_, config = _train_flow_setup(
        rng,
        solver=TrainConfig(method="rk4", fixed_steps=4),
        refine_solver_gap=1.0,
        max_fixed_steps=6,
    )
    steps = []
    for gap in [0.5, 1.5, float("nan"), 1.5, 1.5, 1.5]:
        config = _refined(config, gap)
        steps.append(config.solver.fixed_steps)
    assert steps == [4, 5, 5, 6, 6, 6]
    user_grid = replace(config.solver, fixed_steps=4, options={"step_size": 0.25})
    assert _refined(replace(config, solver=user_grid), 1.5).solver == user_grid
    off = replace(config, solver=replace(config.solver, fixed_steps=4), refine_solver_gap=None)
    assert _refined(off, 1.5).solver.fixed_steps == 4


def test_hybrid_discards_a_likelihood_phase_that_only_hurts(X, monkeypatch):
    original = FFJORDFlow.train_log_prob
    starts = []

    def destructive(self, u, config, generator):  # a "likelihood" that inflates the weights
        logp, reg, dyn = original(self, u, config, generator)
        if not torch.is_grad_enabled():  # validation-side calls are left alone
            return logp, reg, dyn
        if not starts:
            starts.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        norm = sum(p.pow(2).sum() for p in self.parameters())
        return 0 * logp + 100 * norm, reg, dyn

    monkeypatch.setattr(FFJORDFlow, "train_log_prob", destructive)
    model = tiny(training="hybrid", max_iter=12, early_stopping=True, learning_rate_init=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    likelihood = [h["valid_score"] for h in model.history_ if h["phase"] == "likelihood"]
    assert likelihood and max(likelihood) < model.best_validation_score_  # all were worse
    kept = model.flow_.state_dict()
    last = [block.field.layers[-1] for block in model.flow_.blocks]
    if all(not layer.linear.weight.any() for layer in last):
        return  # the starting model (zero field) was kept: Gaussian data leaves it unbeaten
    for k, v in starts[0].items():  # the weights at the end of flow matching
        torch.testing.assert_close(kept[k], v.to(kept[k].dtype))


def test_early_stopping_warns_when_the_evaluation_solver_cannot_score(X):
    model = tiny(early_stopping=True, max_iter=30, n_iter_no_change=2)
    model.set_params(eval_solver={"method": "dopri5", "max_num_steps": 1})
    with pytest.warns(ConvergenceWarning, match="could not score the validation rows"):
        model.fit(X)
    assert model.validation_scores_ == [-math.inf] * 2
    assert model.stop_reason_ == "converged"
