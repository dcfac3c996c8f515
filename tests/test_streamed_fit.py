"""Fits on more rows than a fit holds in memory: the rows are read a block or a batch at a
time, in a computed order, and the fit behaves as a scikit-learn fit should (checks,
weights, determinism, every training mode)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import skffjord._streamed_rows as streamed_rows
from skffjord import FFJORDDensity, FFJORDOutlierDetector
from skffjord._keyed_order import KeyedPermutation, keyed_uniforms
from skffjord._streamed_rows import READ_BLOCK, EpochOrder

#: Rows above which the fits of this module stream (the real threshold, lowered).
THRESHOLD = 400
FAST = dict(
    hidden_layer_sizes=(16,),
    max_iter=3,
    batch_size=128,
    solver={"method": "rk4", "options": {"step_size": 0.5}},
    eval_solver={"atol": 1e-5, "rtol": 1e-5},
)


@pytest.fixture(autouse=True)
def low_threshold(monkeypatch):
    monkeypatch.setattr(streamed_rows, "STREAMED_FIT_ROWS", THRESHOLD)


def _fit(X, sample_weight=None, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FFJORDDensity(**{**FAST, "random_state": 0, **params}).fit(
            X, sample_weight=sample_weight
        )


def _two_moons(n, seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return np.column_stack([x, y]) + 0.1 * rng.normal(size=(n, 2))


class ReadRecorder:
    """A 2-D array that records how many rows each read returns and refuses to be
    converted whole."""

    def __init__(self, values: np.ndarray) -> None:
        self._values = values
        self.shape, self.ndim, self.dtype = values.shape, 2, values.dtype
        self.largest_read = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        rows = self._values[index]
        self.largest_read = max(self.largest_read, len(rows))
        return rows

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was converted")


# the keyed order
@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 65, 1000, 4099])
@pytest.mark.parametrize("key", [0, 7, 2**63 - 1])
def test_a_keyed_permutation_is_a_bijection_with_its_inverse(n, key):
    perm = KeyedPermutation(n, key)
    items = perm(np.arange(n))
    np.testing.assert_array_equal(np.sort(items), np.arange(n))
    np.testing.assert_array_equal(perm.position(items), np.arange(n))


def test_keys_give_different_orders_and_equal_keys_equal_ones():
    a, b = KeyedPermutation(10_000, 1), KeyedPermutation(10_000, 2)
    positions = np.arange(10_000)
    np.testing.assert_array_equal(a(positions), KeyedPermutation(10_000, 1)(positions))
    assert np.mean(a(positions) == b(positions)) < 0.01
    # the order is not the identity nor close to it
    assert abs(np.corrcoef(positions, a(positions))[0, 1]) < 0.05


def test_a_keyed_permutation_refuses_positions_outside_its_range():
    with pytest.raises(IndexError):
        KeyedPermutation(10, 0)(np.array([10]))


def test_keyed_uniforms_are_uniform_and_fixed_per_row():
    rows = np.arange(200_000)
    u = keyed_uniforms(rows, 3, key=5)
    assert u.min() >= 0 and u.max() < 1
    np.testing.assert_allclose(u.mean(axis=0), 0.5, atol=0.005)
    np.testing.assert_allclose(u.var(axis=0), 1 / 12, atol=0.002)
    # a row's draw does not depend on the rows drawn with it
    np.testing.assert_array_equal(keyed_uniforms(rows[[17, 3]], 3, 5), u[[17, 3]])
    assert not np.array_equal(keyed_uniforms(rows[:5], 3, 6), u[:5])


def test_an_epoch_order_is_whole_passes_in_fresh_orders():
    order = EpochOrder(1000, 3, keys=[1, 2, 3], to_ids=lambda p: p + 5)
    whole = np.concatenate([order[b : b + 128].ids for b in range(0, len(order), 128)])
    assert len(whole) == 3000
    passes = whole.reshape(3, 1000) - 5
    for p in passes:
        np.testing.assert_array_equal(np.sort(p), np.arange(1000))
    assert not np.array_equal(passes[0], passes[1])
    in_order = EpochOrder(10, 2, None, to_ids=lambda p: p)
    np.testing.assert_array_equal(in_order[0:20].ids, np.tile(np.arange(10), 2))
    # slices across the blocks it computes at a time
    long = EpochOrder(READ_BLOCK + 50, 1, keys=[4], to_ids=lambda p: p)
    across = long[READ_BLOCK - 20 : READ_BLOCK + 20].ids
    np.testing.assert_array_equal(
        across, KeyedPermutation(READ_BLOCK + 50, 4)(np.arange(READ_BLOCK - 20, READ_BLOCK + 20))
    )


# a streamed fit
def test_a_streamed_fit_reads_no_more_than_a_block_or_a_batch_at_a_time():
    X = ReadRecorder(_two_moons(3 * READ_BLOCK // 2, 0))
    model = _fit(X, max_iter=1)
    assert 0 < X.largest_read <= READ_BLOCK
    assert np.isfinite(model.score_samples(_two_moons(50, 1))).all()


def test_a_streamed_fit_learns_as_much_as_a_fit_in_memory(monkeypatch):
    X, held_out = _two_moons(2000, 0), _two_moons(2000, 1)
    params = dict(
        standardize="affine",
        n_components=1,
        training="flow_matching",
        activation="tanh",
        hidden_layer_sizes=(32, 32),
        learning_rate_init=1e-2,
        max_iter=20,
    )
    streamed = _fit(X, **params)
    untrained = _fit(X, **params, early_stopping=False, max_time=1e-9)
    monkeypatch.setattr(streamed_rows, "STREAMED_FIT_ROWS", 10**9)
    in_memory = _fit(X, **params)
    gain = in_memory.score(held_out) - untrained.score(held_out)
    assert gain > 0.1
    assert abs(streamed.score(held_out) - in_memory.score(held_out)) < 0.25 * gain


def test_a_memory_mapped_file_fits_as_the_array_in_memory(tmp_path):
    X = _two_moons(1000, 0)
    np.save(tmp_path / "rows.npy", X)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    probe = _two_moons(100, 1)
    np.testing.assert_array_equal(_fit(mapped).score_samples(probe), _fit(X).score_samples(probe))


@pytest.mark.parametrize("training", ["hybrid", "likelihood", "flow_matching"])
@pytest.mark.parametrize("early_stopping", [True, False])
def test_every_training_mode_streams_and_is_deterministic(training, early_stopping):
    X, probe = _two_moons(1000, 0), _two_moons(100, 1)
    first = _fit(X, training=training, early_stopping=early_stopping)
    second = _fit(X, training=training, early_stopping=early_stopping)
    np.testing.assert_array_equal(first.score_samples(probe), second.score_samples(probe))
    assert np.isfinite(first.score_samples(probe)).all()
    assert first.n_iter_ >= 1


def test_rows_of_zero_weight_are_never_trained_on():
    X = _two_moons(1200, 0)
    keep = np.random.default_rng(2).random(len(X)) < 0.6
    probe = _two_moons(100, 1)
    weighted = _fit(X, sample_weight=keep.astype(float))
    subset = _fit(X[keep])
    np.testing.assert_array_equal(weighted.score_samples(probe), subset.score_samples(probe))
    # scaling every weight by one factor changes nothing
    doubled = _fit(X, sample_weight=3.0 * keep)
    np.testing.assert_array_equal(doubled.score_samples(probe), subset.score_samples(probe))


def test_discrete_columns_are_found_dequantised_and_sampled_on_their_grid():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=1500), rng.poisson(3.0, 1500)])
    model = _fit(X)
    np.testing.assert_array_equal(model.discrete_features_, [0.0, 1.0])
    samples = model.sample(200, random_state=0)
    np.testing.assert_array_equal(samples[:, 1], np.round(samples[:, 1]))
    probe = np.column_stack([rng.normal(size=50), rng.poisson(3.0, 50)])
    assert np.isfinite(model.score_samples(probe)).all()


def test_a_frame_keeps_its_feature_names_and_a_warm_refit_continues():
    frame = pd.DataFrame(_two_moons(1000, 0), columns=["x", "y"])
    model = _fit(frame, warm_start=True)
    np.testing.assert_array_equal(model.feature_names_in_, ["x", "y"])
    before = model.n_iter_
    model.fit(frame)
    assert model.n_iter_ >= 1 and before >= 1
    assert np.isfinite(model.score_samples(frame.iloc[:10])).all()


def test_a_value_that_is_not_finite_in_a_late_block_is_refused_and_the_model_kept():
    X = _two_moons(3 * READ_BLOCK // 2, 0)
    fitted = _fit(X[:1000])
    probe = _two_moons(20, 1)
    before = fitted.score_samples(probe)
    X[-3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        fitted.fit(X)
    np.testing.assert_array_equal(fitted.score_samples(probe), before)


def test_streamed_rows_get_the_checks_of_rows_in_memory():
    X = _two_moons(1000, 0)
    constant = np.column_stack([X, np.full(len(X), 2.5)])
    with pytest.raises(ValueError, match=r"Continuous feature\(s\) \[2\]"):
        _fit(constant)
    with pytest.raises(ValueError, match="on or outside the bounds of feature 1"):
        _fit(X, bounds=[(None, None), (0.0, None)])
    with pytest.raises(ValueError, match="needs at least 2 rows with positive weight"):
        _fit(X, sample_weight=np.eye(1, len(X))[0])
    text = pd.DataFrame({"x": X[:, 0], "label": ["a"] * len(X)})
    with pytest.raises(ValueError, match=r"column\(s\) \['label'\] are not numeric"):
        _fit(text)


def test_the_outlier_detector_streams_its_rows():
    X = _two_moons(1000, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector = FFJORDOutlierDetector(**FAST, contamination=0.1, random_state=0).fit(X)
    assert np.mean(detector.predict(X) == -1) == pytest.approx(0.1, abs=0.01)
    assert detector.predict([[10.0, 10.0]])[0] == -1


def test_a_grid_found_on_the_sample_is_checked_on_every_row():
    rng = np.random.default_rng(0)
    X = np.column_stack([2.0 * rng.integers(1, 50, 1500), rng.normal(size=1500)])
    sampled = set(KeyedPermutation(1500, 0)(np.arange(THRESHOLD)).tolist())
    X[next(i for i in range(1500) if i not in sampled), 0] = 1.0  # off the even grid
    assert _fit(X).discrete_features_[0] == 0.0
    X[X[:, 0] == 1.0, 0] = 2.0
    np.testing.assert_array_equal(_fit(X).discrete_features_, [2.0, 0.0])


def test_the_starting_model_sees_every_feature_s_extreme_rows():
    X = _two_moons(1500, 0)
    X[np.arange(0, 1500, 150), 0] *= 1e4  # ten far rows, most outside the start's sample
    model = _fit(X, max_iter=2)
    assert model.stop_reason_ not in ("diverged", "solver_failed")
    assert np.isfinite(model.score_samples(X)).all()
