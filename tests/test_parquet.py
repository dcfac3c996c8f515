"""A Parquet file copied into a memory-mapped array, a batch of rows at a time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skffjord import parquet_memmap

pytest.importorskip("pyarrow")


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=50),
            "count": rng.integers(0, 9, 50),
            "flag": rng.random(50) < 0.5,
            "small": rng.normal(size=50).astype(np.float32),
        }
    )
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path, row_group_size=20)
    return frame, path


def test_the_rows_are_copied_exactly_in_the_columns_order(table, tmp_path):
    frame, path = table
    X = parquet_memmap(path, tmp_path / "rows.npy", dtype="float64", batch_rows=7)
    assert isinstance(X, np.memmap) and not X.flags.writeable
    np.testing.assert_array_equal(X, frame.to_numpy(dtype=np.float64))
    chosen = parquet_memmap(path, tmp_path / "two.npy", columns=["count", "x"])
    assert chosen.dtype == np.float32
    np.testing.assert_array_equal(chosen, frame[["count", "x"]].to_numpy(dtype=np.float32))


def test_bad_columns_and_missing_values_are_named(table, tmp_path):
    frame, path = table
    out = tmp_path / "rows.npy"
    with pytest.raises(ValueError, match=r"no column\(s\) \['y'\]"):
        parquet_memmap(path, out, columns=["x", "y"])
    frame.assign(label="a").to_parquet(tmp_path / "text.parquet")
    with pytest.raises(ValueError, match="Column 'label' .* is not numeric"):
        parquet_memmap(tmp_path / "text.parquet", out)
    holes = frame.assign(x=frame["x"].where(frame.index != 33))
    holes.to_parquet(tmp_path / "holes.parquet", row_group_size=20)
    with pytest.raises(ValueError, match="'x' .* missing values, the first in row 33"):
        parquet_memmap(tmp_path / "holes.parquet", out, batch_rows=8)
    with pytest.raises(ValueError, match="float32. or .float64"):
        parquet_memmap(path, out, dtype="int64")
    with pytest.raises(ValueError, match="batch_rows"):
        parquet_memmap(path, out, batch_rows=0)


def test_a_saved_index_is_left_out_and_errors_leave_no_file(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=[5, 7, 9])
    path = tmp_path / "indexed.parquet"
    frame.to_parquet(path)
    X = parquet_memmap(path, tmp_path / "indexed.npy")
    np.testing.assert_array_equal(X, [[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="the Parquet file itself"):
        parquet_memmap(path, path)
    assert len(pd.read_parquet(path)) == 3  # untouched
    pd.DataFrame({"a": [1.0, None]}).to_parquet(tmp_path / "hole.parquet")
    with pytest.raises(ValueError, match="missing values"):
        parquet_memmap(tmp_path / "hole.parquet", tmp_path / "hole.npy")
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["indexed.npy"]
