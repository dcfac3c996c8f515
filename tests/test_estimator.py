"""API behaviour: persistence, pipelines, input validation, failure handling."""

from __future__ import annotations

import math
import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import skffjord
from skffjord import DeviceWarning, FFJORDDensity
from skffjord._flow import FFJORDFlow

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


def _set_output_layers(model, std):
    """Give the last layer of every block's field weights of ``std`` (0: the zero field of
    the starting model, which leaves every point where it is)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.flow_.blocks:
            last = block.field.layers[-1]
            for weight in (last.linear.weight, last.linear.bias, last.hyper_bias.weight):
                weight.copy_(std * torch.randn(weight.shape, generator=gen))


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
    import skffjord._fitting as fitting

    states = []
    _fail_on_call(monkeypatch, 7, KeyboardInterrupt, record=states)
    # the best epoch is kept over the starting model (that guard: test_starting_model.py)
    monkeypatch.setattr(fitting, "significant_gain", lambda *args: True)
    model = tiny(max_iter=50, batch_size=40, early_stopping=True, n_iter_no_change=50)
    with pytest.warns(UserWarning, match="interrupted"):
        model.fit(X)
    assert model.stop_reason_ == "interrupted"
    # 108 training rows: 3 batches per epoch; training call 7 is the first batch of epoch 3
    assert model.n_iter_ == 2
    best = int(np.argmax(model.validation_scores_)) + 1
    assert model.best_validation_score_ == max(model.validation_scores_)
    # the weights kept are those at the end of the best epoch (3 steps each), which the
    # training call after that epoch's last step recorded
    kept = model.flow_.state_dict()
    for k, v in states[3 * best].items():
        torch.testing.assert_close(kept[k], v.to(kept[k].dtype))
    assert np.isfinite(model.score_samples(X)).all()


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


def _gaussian_through(X, log_density):
    """The mean and covariance of the Gaussian whose log-density ``log_density`` is at the
    rows of ``X``, asserting that it is one: a quadratic in x to rounding (fitted by least
    squares, in standard units), with a normalising constant that integrates it to one."""
    loc, sd = X.mean(0), X.std(0)
    Z = (X - loc) / sd
    d = X.shape[1]
    i, j = np.triu_indices(d)
    design = np.column_stack([np.ones(len(Z)), Z, Z[:, i] * Z[:, j]])
    coef, *_ = np.linalg.lstsq(design, log_density, rcond=None)
    assert np.abs(design @ coef - log_density).max() < 1e-9  # a quadratic
    constant, linear = coef[0], coef[1 : d + 1]
    precision = np.zeros((d, d))  # log p = constant + linear z - z' precision z / 2
    precision[i, j] = precision[j, i] = -coef[d + 1 :]
    precision[np.diag_indices(d)] *= 2
    cov = np.linalg.inv(precision)
    mean = cov @ linear
    # normalised: in x's units the density of z is divided by the product of ``sd``
    log_norm = -(mean @ linear + np.linalg.slogdet(2 * np.pi * cov)[1]) / 2 - np.log(sd).sum()
    assert abs(constant - log_norm) < 1e-9
    return loc + sd * mean, cov * np.outer(sd, sd)


@pytest.mark.parametrize("standardize", ["affine", "quantile"])
def test_zero_field_scores_gaussian_with_standardization(X, standardize):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = tiny(max_iter=3, standardize=standardize).fit(X)
    _set_output_layers(fitted, 0.0)  # back to the initial, zero vector field
    if standardize == "affine":  # a normalised Gaussian: the rows' mean and covariance
        fitted.set_params(eval_solver={**TINY["eval_solver"], "dtype": "float64"})
        mean, cov = _gaussian_through(X, fitted.score_samples(X))
        fitted.set_params(eval_solver=TINY["eval_solver"])
        np.testing.assert_allclose(mean, X.mean(0), rtol=0, atol=1e-9)
        scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
        # (to the map's ridge, a millionth of each variance)
        np.testing.assert_allclose(cov / scale, np.cov(X.T, bias=True) / scale, atol=1e-5)
        expected = scipy.stats.multivariate_normal(mean, cov).logpdf(X)
    else:  # N(0, 1) at the piecewise-linear map through the knots (rows between them),
        # which are placed in standard units z = (x - a) / b
        standard, quantile = fitted.flow_.marginal.first, fitted.flow_.marginal.second
        a, b = standard.a.numpy(), standard.b.numpy()
        grid, knots = quantile.grid.numpy(), quantile.knots.numpy()
        Z = (X - a) / b
        inside = ((Z > knots[:, 0]) & (Z < knots[:, -1])).all(1)
        assert inside.sum() > len(X) // 5  # 120 rows: about 20 lie beyond each end
        X, Z = X[inside], Z[inside]
        expected = 0.0
        for j in range(X.shape[1]):
            k = np.searchsorted(knots[j], Z[:, j]) - 1
            slope = (grid[k + 1] - grid[k]) / (knots[j, k + 1] - knots[j, k])
            u = grid[k] + (Z[:, j] - knots[j, k]) * slope
            expected = expected + scipy.stats.norm.logpdf(u) + np.log(slope / b[j])
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
    """On non-Gaussian data (the field must move) the kinetic penalty keeps it short: the
    paths' kinetic energy, int |dz/dt|^2 dt, from the trajectories (in the data's units, the
    map being the identity)."""
    from sklearn.datasets import make_moons

    X, _ = make_moons(200, noise=0.1, random_state=0)
    energies = []
    for reg in (0.0, 5.0):
        solver = {**TINY["solver"], "kinetic_energy_reg": reg}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = tiny(max_iter=8, learning_rate_init=1e-2, solver=solver, standardize=False)
            model.fit(X)
        n_times = 21
        path = model.trajectory(X, n_times=n_times)
        energies.append(((np.diff(path, axis=0) ** 2).sum(-1).sum(0) * (n_times - 1)).mean())
    assert energies[1] < 0.5 * energies[0]


def test_verbose_shows_progress(X, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        tiny(verbose=1).fit(X)
    err = capsys.readouterr().err
    assert "FFJORD fit" in err and "nll=" in err and "nfe=" in err  # a likelihood fit


def test_solver_underflow_stops_with_message(X):
    """Tolerances that no step meets (1e-300 is zero in float32): the adaptive step size
    shrinks until it underflows."""
    impossible = {"method": "dopri5", "atol": 1e-300, "rtol": 1e-300, "max_num_steps": 10**6}
    model = tiny(max_iter=3, solver=impossible)
    with pytest.warns(ConvergenceWarning, match="step size underflowed.*To avoid this"):
        model.fit(X)
    assert model.stop_reason_ == "solver_failed"
    assert np.isfinite(model.score_samples(X)).all()


@pytest.mark.parametrize("eval_dtype, atol", [("float64", 1e-12), ("float32", 1e-3)])
def test_scores_do_not_depend_on_the_rows_scored_with_them(fitted, X, eval_dtype, atol):
    """The rows scored 7 at a time: to rounding in float64; in float32 within the solver
    tolerance (a step-size decision may tip)."""
    fitted.set_params(eval_solver={**TINY["eval_solver"], "dtype": eval_dtype})
    whole = fitted.score_samples(X)
    by_seven = np.concatenate([fitted.score_samples(X[i : i + 7]) for i in range(0, len(X), 7)])
    np.testing.assert_allclose(by_seven, whole, rtol=0, atol=atol)


def test_scoring_more_rows_than_one_solve_takes(fitted, rng):
    """More rows than are solved at once (8192 for so small a field) are scored in chunks,
    each row in its place."""
    rows = rng.normal(size=(8300, 3)) * [1.0, 5.0, 0.2] + [0.0, 10.0, -1.0]
    scores = fitted.score_samples(rows)
    assert scores.shape == (8300,) and np.isfinite(scores).all()
    ends = np.concatenate([fitted.score_samples(rows[:100]), fitted.score_samples(rows[-100:])])
    np.testing.assert_allclose(scores[np.r_[:100, -100:0]], ends, rtol=0, atol=1e-3)


def test_scores_are_the_change_of_variables_of_the_flow_map(rng):
    """``score_samples`` integrates the field's trace; the trajectories give the flow map
    itself. With the identity map and a standard normal base, log p(x) = log N(z) + log
    |det dz/dx| for z the end of x's trajectory, its Jacobian by central differences: in
    float64 to 1e-8, through the fused scoring kernel (two softplus layers), with the per-row
    solver (a time per row) and a fixed grid (one time for all rows), over two blocks."""
    a = rng.normal(size=200)
    X = np.c_[a, a**2 + 0.3 * rng.normal(size=200)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = tiny(
            hidden_layer_sizes=(8, 8), n_blocks=2, standardize=False, max_iter=3,
            learning_rate_init=3e-2, batch_size=50,
        ).fit(X)  # fmt: skip
    assert model.flow_.blocks[0].field.has_fast_scoring_path
    rows = X[:10]
    per_row = {"atol": 1e-12, "rtol": 1e-12}
    fixed_grid = {"method": "rk4", "options": {"step_size": 0.05}}
    for solve in (per_row, fixed_grid):
        model.set_params(eval_solver={**solve, "dtype": "float64"})
        z = model.trajectory(rows, n_times=2)[-1]
        log_det = np.linalg.slogdet(_flow_map_jacobians(model, rows))[1]
        assert np.abs(log_det).mean() > 0.01  # the flow changes volumes
        expected = scipy.stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(z) + log_det
        np.testing.assert_allclose(model.score_samples(rows), expected, rtol=0, atol=1e-8)


def test_integer_hidden_layer_sizes(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = tiny(hidden_layer_sizes=5).fit(X)
    assert model.flow_.blocks[0].field.layers[0].linear.out_features == 5


def test_warm_start_uses_new_optimizer_settings_and_rejects_new_structure(X, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = tiny(warm_start=True).fit(X)
        seen = []
        original = torch.optim.Adam.step

        def spy(self, *a, **k):
            seen.append((self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]))
            return original(self, *a, **k)

        monkeypatch.setattr(torch.optim.Adam, "step", spy)
        model.set_params(learning_rate_init=0.05, alpha=0.1).fit(X)
    assert seen and all(s == (0.05, 0.1) for s in seen)  # Adam's steps, and its weight decay
    assert [h["learning_rate"] for h in model.history_] == [0.05] * model.n_iter_
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        model.set_params(hidden_layer_sizes=(4,)).fit(X)


def test_early_stopping_with_zero_weight_split_is_a_clear_error(X):
    w = np.zeros(len(X))
    w[:2] = 1.0  # one training row of 120: it has weight zero
    with pytest.raises(ValueError, match="sample weights are all zero"):
        tiny(early_stopping=True, validation_fraction=0.99).fit(X, sample_weight=w)


def _flow_map_jacobians(model, X, h=1e-5):
    """The Jacobians of the flow map from the data to the trajectories' end (central
    differences of ``trajectory``), one per row of ``X``."""
    n, d = X.shape
    steps = h * np.eye(d)
    rows = np.concatenate([X] + [X + s for s in steps] + [X - s for s in steps])
    end = model.trajectory(rows, n_times=2)[-1]
    forward, backward = end[n : (1 + d) * n], end[(1 + d) * n :]
    return np.stack(np.split((forward - backward) / (2 * h), d), axis=2)


def test_jacobian_penalty_works_with_exact_trace():
    """With the exact trace (a field of two hidden layers) RNODE's Jacobian penalty smooths
    the flow: its map from the data to the latent space stays nearer the identity."""
    from sklearn.datasets import make_moons

    X, _ = make_moons(100, noise=0.1, random_state=0)
    deviations = []
    for reg in (0.0, 5.0):
        solver = {**TINY["solver"], "jacobian_reg": reg, "kinetic_energy_reg": 0.0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = tiny(
                max_iter=6, batch_size=25, learning_rate_init=3e-2, solver=solver,
                trace_estimator="exact", hidden_layer_sizes=(16, 16), standardize=False,
            ).fit(X)  # fmt: skip
        jacobians = _flow_map_jacobians(model, X)
        deviations.append(((jacobians - np.eye(2)) ** 2).sum((1, 2)).mean())
    assert deviations[1] < 0.2 * deviations[0]  # (about 0.01 times)


def _score_and_solver_messages(model, rows):
    """``score_samples(rows)`` (``-inf`` where it raises a SolverError) and what the solver
    said: its warnings and its error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            scores = model.score_samples(rows)
            raised = []
        except skffjord.SolverError as err:
            scores, raised = np.full(len(rows), -np.inf), [str(err)]
    return scores, [str(w.message) for w in caught] + raised


@pytest.mark.parametrize("value", [1e300, 1e155, 1e20])
def test_extreme_rows_score_minus_infinity_or_fail_fast(fitted, value):
    """Far-away rows get a (near) -inf log-density (or a SolverError), never a long spin:
    they are scored within 5 solver steps (the default cap is 10,000)."""
    fitted.set_params(eval_solver={**TINY["eval_solver"], "max_num_steps": 5})
    score, messages = _score_and_solver_messages(fitted, np.array([[value, 0.0, 0.0]]))
    assert score[0] < -1e30
    assert not any("step cap" in m for m in messages), messages
    # (the cap is in force, and says so: an ordinary row needs more than one step)
    fitted.set_params(eval_solver={**TINY["eval_solver"], "max_num_steps": 1})
    _, messages = _score_and_solver_messages(fitted, np.zeros((1, 3)))
    assert any("step cap" in m for m in messages)


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


def test_defaults_hybrid_auto_width_four_rk4_steps_and_rnode(X, rng):
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
    assert np.isfinite(model.score_samples(X)).all()
    # 'auto': two layers of 8 d rounded up to a multiple of 64, within [128, 256]
    for d, width in [(17, 192), (63, 256)]:
        wide = FFJORDDensity(
            training="flow_matching", max_iter=1, standardize="affine", n_components=1,
            discrete_features=None, early_stopping=False, random_state=0,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            wide.fit(rng.normal(size=(80, d)))
        widths = [layer.linear.out_features for layer in wide.flow_.blocks[0].field.layers]
        assert widths == [width, width, d]
    # RNODE's penalties default to 0.01 each (and act: the fits without them differ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = [
            tiny(solver=solver).fit(X).score_samples(X)
            for solver in (
                None,
                {"kinetic_energy_reg": 0.01, "jacobian_reg": 0.01},
                {"kinetic_energy_reg": 0.0, "jacobian_reg": 0.0},
            )
        ]
    np.testing.assert_array_equal(scores[0], scores[1])
    assert np.abs(scores[0] - scores[2]).max() > 1e-6


def test_trajectory_runs_from_data_to_latent(fitted, X):
    path = fitted.trajectory(X[:7], n_times=5)
    assert path.shape == (5, 7, 3)
    np.testing.assert_allclose(path[0], X[:7], rtol=1e-12)
    with pytest.raises(ValueError, match="n_times"):
        fitted.trajectory(X[:2], n_times=1)
    # The last state is the latent point mapped back through the fixed map: for a sample,
    # its base draw mapped back, which is what the starting model (a zero field) samples
    # from the same draw. A field that moves points, and solves tight enough to compare.
    moved = pickle.loads(pickle.dumps(fitted))
    moved.set_params(eval_solver={"atol": 1e-9, "rtol": 1e-9, "dtype": "float64"})
    start = pickle.loads(pickle.dumps(moved))
    _set_output_layers(moved, 0.3)
    _set_output_layers(start, 0.0)
    x = moved.sample(50, random_state=0)
    draws = start.sample(50, random_state=0)
    assert np.abs(x - draws).max() > 0.5  # the flow moves the draws
    path = moved.trajectory(x, n_times=3)
    np.testing.assert_allclose(path[0], x, rtol=1e-12)
    np.testing.assert_allclose(path[-1], draws, rtol=0, atol=1e-6)


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
    """A gap above the threshold (a nat per row) adds one step to the default RK4 steps;
    steps the user chose are left alone. The gaps are injected: 2 nats, then none, in
    turn."""
    import skffjord._training as training

    gaps = iter([2.0, 0.0] * 10)
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
