"""The MAF preprocessing steps, on small synthetic inputs, against properties and sizes."""

import numpy as np
import pandas as pd
import pytest

from skffjord.datasets._preprocessing import (
    preprocess_gas,
    preprocess_hepmass,
    preprocess_miniboone,
    preprocess_power,
    split_sizes,
    split_tail,
)
from skffjord.datasets._specs import SPECS


@pytest.mark.parametrize(
    ("name", "n_rows"),
    [("power", 2_049_280), ("gas", 1_052_065), ("miniboone", 36_488)],
)
def test_split_arithmetic_gives_the_published_sizes(name, n_rows):
    assert split_sizes(n_rows) == SPECS[name].split_sizes


def test_hepmass_validation_split_arithmetic():
    # 350,136 positive training rows; the last int(0.1 N) are validation.
    n = 350_136
    assert (n - int(0.1 * n), int(0.1 * n)) == SPECS["hepmass"].split_sizes[:2]


def test_split_tail_keeps_order_and_rows():
    data = np.arange(1000.0).reshape(-1, 1)
    train, validation, test = split_tail(data)
    assert (train.shape[0], validation.shape[0], test.shape[0]) == split_sizes(1000)
    np.testing.assert_array_equal(np.vstack((train, validation, test)), data)


def _maf_power_reference(raw):
    """POWER as the MAF loader writes it, spelled out independently."""
    rng = np.random.RandomState(42)
    data = raw.copy()
    rng.shuffle(data)
    n = data.shape[0]
    data = data[:, [0, 2, 4, 5, 6, 7]]
    voltage = 0.01 * rng.rand(n, 1)
    active = 0.001 * rng.rand(n, 1)
    meters = rng.rand(n, 3)
    data = data + np.hstack((active, voltage, meters, np.zeros((n, 1))))
    n_test = int(0.1 * n)
    n_val = int(0.1 * (n - n_test))
    train, val, test = (
        data[: n - n_test - n_val],
        data[n - n_test - n_val : n - n_test],
        data[n - n_test :],
    )
    both = np.vstack((train, val))
    mu, sd = both.mean(0), both.std(0)
    return (train - mu) / sd, (val - mu) / sd, (test - mu) / sd


def _power_raw(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    raw = np.column_stack(
        [
            rng.integers(200, 230, n) / 1000,  # active power, 3 decimals
            np.round(rng.gamma(1.0, 0.1, n), 3),  # reactive power
            rng.integers(23_900, 23_930, n) / 100,  # voltage, 2 decimals
            np.round(rng.gamma(2.0, 2.0, n), 1),  # intensity
            rng.integers(0, 40, (n, 3)).astype(float),  # sub-meterings, integers
            rng.integers(0, 1440, n).astype(float),  # time of day
        ]
    )
    return raw


def test_power_matches_the_maf_loader_and_leaves_input_alone():
    raw = _power_raw()
    before = raw.copy()
    ours = preprocess_power(raw)
    np.testing.assert_array_equal(raw, before)
    for got, want in zip(ours, _maf_power_reference(raw), strict=True):
        np.testing.assert_array_equal(got, want)


def test_power_standardisation_and_sizes():
    raw = _power_raw(n=2000, seed=1)
    train, validation, test = preprocess_power(raw)
    assert [a.shape for a in (train, validation, test)] == [(1620, 6), (180, 6), (200, 6)]
    both = np.vstack((train, validation))
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(both.std(0), 1, atol=1e-9)


@pytest.mark.parametrize(
    ("raw_column", "out_column", "quantum", "noisy"),
    [(0, 0, 0.001, True), (2, 1, 0.01, True), (4, 2, 1.0, True), (7, 5, None, False)],
)
def test_power_noise_is_one_quantum_on_the_right_column(raw_column, out_column, quantum, noisy):
    """Rows are shuffled by RandomState(42); each kept column gets noise smaller than its
    quantisation step, so groups of equal raw values stay ordered and disjoint; time gets none."""
    raw = _power_raw(n=3000, seed=3)
    perm = np.random.RandomState(42).permutation(raw.shape[0])
    out = np.vstack(preprocess_power(raw))[:, out_column]
    values = raw[perm, raw_column]
    groups = [out[values == v] for v in np.unique(values)]
    if not noisy:
        assert all(np.ptp(g) < 1e-9 for g in groups)
        return
    assert max(np.ptp(g) for g in groups) > 0  # noise was added
    for low, high in zip(groups, groups[1:], strict=False):
        assert low.max() < high.min()  # noise is below one quantisation step
    # the noise spans (almost) a whole step: groups are not tighter than 0.9 of a quantum
    slope = np.polyfit(values, out, 1)[0]
    widest = max(np.ptp(g) for g in groups if g.size > 20) / slope
    assert 0.9 * quantum < widest < quantum


def _gas_frame(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 8)) @ np.triu(np.ones((8, 8))) * 0.3 + rng.normal(size=(n, 8))
    columns = {"Time": np.arange(n, dtype=float), "Meth": rng.random(n), "Eth": rng.random(n)}
    # near-copies placed *before* their originals, so the rule drops the copies
    columns["copy_of_s2"] = base[:, 2] + 1e-3 * rng.normal(size=n)
    for j in range(8):
        columns[f"s{j}"] = base[:, j]
        if j == 5:
            columns["copy_of_s6"] = base[:, 6] * 2 + 1e-3 * rng.normal(size=n)
    return pd.DataFrame(columns)


def test_gas_drops_correlated_columns_and_standardises_whole_table():
    frame = _gas_frame()
    (train, validation, test), names = preprocess_gas(frame)
    assert names == [f"s{j}" for j in range(8)]
    assert [a.shape for a in (train, validation, test)] == [(972, 8), (108, 8), (120, 8)]
    everything = np.vstack((train, validation, test))
    np.testing.assert_allclose(everything.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(everything.std(0, ddof=1), 1, atol=1e-12)
    # no shuffling: rows keep their order
    expected = (frame["s0"] - frame["s0"].mean()) / frame["s0"].std()
    np.testing.assert_allclose(everything[:, 0], expected.to_numpy(), atol=1e-12)


def test_gas_copy_after_original_drops_the_original():
    frame = _gas_frame()
    frame["late_copy_of_s0"] = frame["s0"] + 1e-4
    frame = frame.drop(columns=["copy_of_s2", "copy_of_s6"])
    _, names = preprocess_gas(frame)
    assert names == [f"s{j}" for j in range(1, 8)] + ["late_copy_of_s0"]


def test_gas_without_the_label_columns_is_an_error():
    with pytest.raises(ValueError, match="no column"):
        preprocess_gas(pd.DataFrame({"a": [1.0, 2.0]}))


def _hepmass_frames(seed=0):
    rng = np.random.default_rng(seed)
    n_train, n_test = 900, 400
    names = [f"f{i}" for i in range(26)]

    def table(n, extra):
        label = rng.integers(0, 2, n).astype(float)
        values = rng.normal(size=(n, 26))
        values[:, 3] = rng.integers(0, 4, n)  # discrete: min value occurs many times
        values[:, 10] = rng.integers(0, 3, n)
        values[:, 17] = np.clip(np.round(values[:, 17]), -1, 1)
        values[:, 20] = rng.integers(0, 2, n)
        # among the positive rows, the minimum of column 7 occurs exactly 5 times (kept) and
        # that of column 8 exactly 6 times (dropped): the rule is "more than 5"
        positive = np.flatnonzero(label == 1)
        values[positive[:5], 7] = values[:, 7].min() - 1
        values[positive[:6], 8] = values[:, 8].min() - 1
        frame = pd.DataFrame(values, columns=names)
        frame.insert(0, "# label", label)
        if extra:
            frame["mass"] = rng.normal(size=n)
        return frame

    return table(n_train, extra=False), table(n_test, extra=True)


def test_hepmass_steps():
    train_frame, test_frame = _hepmass_frames()
    (train, validation, test), names = preprocess_hepmass(train_frame, test_frame)
    positives = train_frame[train_frame["# label"] == 1]
    n_pos = len(positives)
    n_val = int(0.1 * n_pos)
    assert names == [f"f{i}" for i in range(26) if i not in (3, 8, 10, 17, 20)]
    assert train.shape == (n_pos - n_val, 21)
    assert validation.shape == (n_val, 21)
    assert test.shape == ((test_frame["# label"] == 1).sum(), 21)
    both = np.vstack((train, validation))
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(both.std(0, ddof=1), 1, atol=1e-12)
    # test rows use the training statistics
    col = positives["f0"]
    want = (test_frame.loc[test_frame["# label"] == 1, "f0"] - col.mean()) / col.std()
    np.testing.assert_allclose(test[:, 0], want.to_numpy(), atol=1e-12)


def test_hepmass_mismatched_columns_is_an_error():
    train_frame, test_frame = _hepmass_frames()
    with pytest.raises(ValueError, match="do not match"):
        preprocess_hepmass(train_frame, test_frame.drop(columns="mass"))


def test_miniboone_split_and_standardisation():
    raw = np.random.default_rng(0).normal(size=(36_488, 43)) * 3 + 1
    train, validation, test = preprocess_miniboone(raw)
    assert (train.shape[0], validation.shape[0], test.shape[0]) == SPECS["miniboone"].split_sizes
    both = np.vstack((train, validation))
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(both.std(0), 1, atol=1e-12)
    mu, sd = raw[:32_840].mean(0), raw[:32_840].std(0)
    np.testing.assert_allclose(test, (raw[-3_648:] - mu) / sd, atol=1e-12)


@pytest.mark.parametrize(
    ("func", "shape"), [(preprocess_power, (10, 7)), (preprocess_miniboone, (10, 42))]
)
def test_wrong_number_of_columns_is_an_error(func, shape):
    with pytest.raises(ValueError, match="columns"):
        func(np.zeros(shape))
