"""The MAF preprocessing of POWER, GAS, HEPMASS and MINIBOONE, as pure functions.

Each function reproduces the loader of Papamakarios et al. (2017), "Masked Autoregressive Flow
for Density Estimation" (the ``datasets/*.py`` files of their code, also used by FFJORD), step
by step and in the same order, so that the splits are the published ones. The functions take
the raw arrays or tables and return ``(train, validation, test)``; reading and verifying files
is left to the fetchers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

POWER_FEATURES = (
    "global_active_power",
    "voltage",
    "sub_metering_1",
    "sub_metering_2",
    "sub_metering_3",
    "time",
)

Splits = tuple[np.ndarray, np.ndarray, np.ndarray]


def split_tail(data: np.ndarray) -> Splits:
    """MAF's split: the last ``int(0.1 * N)`` rows are test, then the last 10% of the rest
    are validation, and the remaining rows are train. No shuffling happens here.

    For fewer than 10 rows ``int(0.1 * N)`` is 0 and this gives an empty split, where MAF's
    ``data[-0:]`` would take every row; the benchmark datasets are far larger.
    """
    n_test = int(0.1 * data.shape[0])
    rest, test = data[: data.shape[0] - n_test], data[data.shape[0] - n_test :]
    n_validation = int(0.1 * rest.shape[0])
    train = rest[: rest.shape[0] - n_validation]
    validation = rest[rest.shape[0] - n_validation :]
    return train, validation, test


def split_sizes(n: int) -> tuple[int, int, int]:
    """Sizes that :func:`split_tail` gives for ``n`` rows.

    >>> split_sizes(2_049_280)
    (1659917, 184435, 204928)
    """
    n_test = int(0.1 * n)
    n_validation = int(0.1 * (n - n_test))
    return n - n_test - n_validation, n_validation, n_test


def _standardise(splits: Splits, reference: np.ndarray) -> Splits:
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    return tuple((part - mean) / std for part in splits)  # type: ignore[return-value]


def _require_columns(data: np.ndarray, n_columns: int, what: str) -> None:
    if data.ndim != 2 or data.shape[1] != n_columns:
        raise ValueError(f"{what} must have {n_columns} columns, got shape {data.shape}.")


def preprocess_power(raw: np.ndarray) -> Splits:
    """POWER from MAF's ``power/data.npy`` (N rows, 8 columns).

    The columns of ``data.npy`` are global active power, global reactive power, voltage,
    global intensity, sub-meterings 1 to 3 and a time-of-day value.

    1. Shuffle the rows with ``numpy.random.RandomState(42)`` (one ``shuffle`` call).
    2. Delete column 3 (global intensity), then column 1 (global reactive power): 6 columns
       remain, named in :data:`POWER_FEATURES`.
    3. Add uniform dequantisation noise drawn from the same ``RandomState``, in this order:
       ``0.01 * U`` for voltage, then ``0.001 * U`` for active power, then ``U`` for the three
       sub-meterings (an ``(N, 3)`` draw); the time column gets none.
    4. Split with :func:`split_tail`: 10% test, then 10% of the rest validation.
    5. Standardise every split with the mean and (population, ``ddof=0``) standard deviation
       of train and validation together.

    With N = 2,049,280 this gives 1,659,917 / 184,435 / 204,928 rows.
    """
    _require_columns(raw, 8, "POWER data.npy")
    rng = np.random.RandomState(42)
    data = np.array(raw, dtype=np.float64)  # a copy: the caller's array is left alone
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    active_power_noise = 0.001 * rng.rand(n, 1)
    sub_metering_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((active_power_noise, voltage_noise, sub_metering_noise, time_noise))
    train, validation, test = split_tail(data)
    return _standardise((train, validation, test), np.vstack((train, validation)))


def _correlated_counts(frame: pd.DataFrame) -> np.ndarray:
    return (frame.corr() > 0.98).to_numpy().sum(axis=1)


def preprocess_gas(frame: pd.DataFrame) -> tuple[Splits, list[str]]:
    """GAS from MAF's ``gas/ethylene_CO.pickle`` (a pandas DataFrame).

    1. Drop the columns ``Meth``, ``Eth`` and ``Time``.
    2. While some column has a Pearson correlation above 0.98 with another column, drop the
       first such column (in column order) and recompute the correlations. 8 columns remain.
    3. Standardise with the mean and (sample, ``ddof=1``, pandas') standard deviation of the
       **whole** table, before splitting.
    4. Split with :func:`split_tail` (no shuffling): 10% test, then 10% of the rest validation.

    With N = 1,052,065 rows this gives 852,174 / 94,685 / 105,206.

    Returns
    -------
    splits : tuple of ndarray
        Train, validation and test.
    feature_names : list of str
        The names of the columns kept.
    """
    missing = [name for name in ("Meth", "Eth", "Time") if name not in frame.columns]
    if missing:
        raise ValueError(f"The GAS table has no column {missing}; got {list(frame.columns)}.")
    data = frame.drop(columns=["Meth", "Eth", "Time"]).astype(np.float64)
    counts = _correlated_counts(data)
    while np.any(counts > 1):
        data = data.drop(columns=data.columns[int(np.flatnonzero(counts > 1)[0])])
        counts = _correlated_counts(data)
    data = (data - data.mean()) / data.std()
    return split_tail(data.to_numpy()), [str(name) for name in data.columns]


def _min_value_counts(data: np.ndarray) -> np.ndarray:
    """For each column, how often its smallest value occurs (MAF's ``Counter`` rule)."""
    return (data == data.min(axis=0)).sum(axis=0)


def preprocess_hepmass(
    train_frame: pd.DataFrame, test_frame: pd.DataFrame
) -> tuple[Splits, list[str]]:
    """HEPMASS from MAF's ``hepmass/1000_train.csv`` and ``hepmass/1000_test.csv``.

    1. In both tables keep only the rows whose first column (the class label) is 1, and drop
       that column. From the test table also drop its last column.
    2. Standardise both tables with the mean and (sample, ``ddof=1``, pandas') standard
       deviation of the training rows. MAF's pandas code matches the columns by name, so the
       test columns must carry the train columns' names; a mismatch raises ``ValueError``.
    3. Drop every feature whose smallest training value occurs more than 5 times (discrete
       features). 21 features remain.
    4. The last ``int(0.1 * N)`` training rows are validation; the test table is the test split.

    With the MAF files this gives 315,123 / 35,013 / 174,987 rows.

    Returns
    -------
    splits : tuple of ndarray
        Train, validation and test.
    feature_names : list of str
        The names of the columns kept.
    """
    train = train_frame[train_frame.iloc[:, 0] == 1].iloc[:, 1:]
    test = test_frame[test_frame.iloc[:, 0] == 1].iloc[:, 1:-1]
    if list(train.columns) != list(test.columns):
        raise ValueError(
            "The HEPMASS test columns (label and last column dropped) do not match the train "
            f"columns: {list(test.columns)} against {list(train.columns)}."
        )
    train = train.astype(np.float64)
    test = test.astype(np.float64)
    mean, std = train.mean(), train.std()
    train_array = ((train - mean) / std).to_numpy()
    test_array = ((test - mean) / std).to_numpy()
    keep = _min_value_counts(train_array) <= 5
    train_array, test_array = train_array[:, keep], test_array[:, keep]
    n_validation = int(train_array.shape[0] * 0.1)
    split_at = train_array.shape[0] - n_validation
    names = [str(name) for name, kept in zip(train.columns, keep, strict=True) if kept]
    return (train_array[:split_at], train_array[split_at:], test_array), names


def preprocess_miniboone(raw: np.ndarray) -> Splits:
    """MINIBOONE from MAF's ``miniboone/data.npy`` (36,488 rows, 43 columns).

    MAF made ``data.npy`` from the UCI file by removing outlier events (first feature below
    -100) and the features whose smallest value occurs more than 5 times; that step is already
    in the file. The loader then:

    1. Splits with :func:`split_tail` (no shuffling): 10% test, then 10% of the rest
       validation.
    2. Standardises every split with the mean and (population, ``ddof=0``) standard deviation
       of train and validation together.

    This gives 29,556 / 3,284 / 3,648 rows.
    """
    _require_columns(raw, 43, "MINIBOONE data.npy")
    train, validation, test = split_tail(np.asarray(raw, dtype=np.float64))
    return _standardise((train, validation, test), np.vstack((train, validation)))
