"""A Parquet file as a memory-mapped array, copied a batch of rows at a time.

Parquet stores columns compressed in row groups, so reading the random rows of a training
batch from it would decompress whole groups for a few rows; a fit reads a memory-mapped
``.npy`` file instead, whose rows the operating system pages in and out as needed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np

__all__ = ["parquet_memmap"]


def parquet_memmap(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    columns: Sequence[str] | None = None,
    dtype: str | np.dtype = "float32",
    batch_rows: int = 65_536,
) -> np.memmap:
    """Copy numeric columns of a Parquet file into a ``.npy`` file and memory-map it.

    The rows are read ``batch_rows`` at a time, so memory stays bounded however large the
    file. Pass the result to :meth:`FFJORDDensity.fit` or
    :meth:`FFJORDDensity.score_samples`: a fit on more than 65,536 rows reads its batches
    from the map (see the user guide, "Data larger than memory").

    Parameters
    ----------
    path : str or path-like
        The Parquet file (needs ``pyarrow``: ``pip install 'skffjord[parquet]'``).
    out : str or path-like
        The ``.npy`` file to write (replaced if it exists, once the copy is complete; an
        error leaves no partial file); delete it when done.
    columns : sequence of str, default=None
        The columns to copy, in this order; ``None``: all of them but a pandas index saved
        with the table. Each must hold numbers or booleans; the names are those of
        ``pyarrow.parquet.read_schema(path).names``.
    dtype : {'float32', 'float64'}, default='float32'
        The array's type: ``'float32'`` halves the file and the memory a page of rows
        takes (a fit trains in float32); ``'float64'`` keeps every double exactly (and
        integers up to ``2**53``).
    batch_rows : int, default=65536
        Rows read and converted at a time.

    Returns
    -------
    numpy.memmap of shape (n_rows, n_columns)
        The copied rows, opened read-only.

    Raises
    ------
    ValueError
        If a column is missing, not numeric, or holds missing values (named with the first
        row that holds one), if ``dtype`` is neither float32 nor float64, or if ``out``
        is ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np, pandas as pd
    >>> from skffjord import parquet_memmap
    >>> folder = Path(tempfile.mkdtemp())
    >>> frame = pd.DataFrame({"a": [1.0, 2.0, 3.5], "b": [0, 1, 1]})
    >>> frame.to_parquet(folder / "rows.parquet")
    >>> X = parquet_memmap(folder / "rows.parquet", folder / "rows.npy", columns=["b", "a"])
    >>> X.shape, X.dtype
    ((3, 2), dtype('float32'))
    >>> np.asarray(X[:, 1])
    array([1. , 2. , 3.5], dtype=float32)
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype}.")
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer; got {batch_rows!r}.")
    if os.path.exists(out) and os.path.samefile(path, out):
        raise ValueError(f"out {os.fspath(out)!r} is the Parquet file itself.")
    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    if columns is None:  # the data's columns, not a pandas index saved beside them
        index = (schema.pandas_metadata or {}).get("index_columns", [])
        names = [name for name in schema.names if name not in index]
    else:
        names = list(columns)
    missing = [name for name in names if name not in schema.names]
    if missing:
        raise ValueError(f"{os.fspath(path)!r} has no column(s) {missing}; it has {schema.names}.")
    for name in names:
        kind = schema.field(name).type
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        ):
            raise ValueError(f"Column {name!r} of {os.fspath(path)!r} is not numeric ({kind}).")
    # written beside ``out`` and renamed at the end: an error leaves no partial file
    folder = os.path.dirname(os.path.abspath(out))
    handle, partial = tempfile.mkstemp(suffix=".npy", dir=folder)
    os.close(handle)
    try:
        _copy(source, names, partial, dtype, batch_rows, os.fspath(path))
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return np.load(out, mmap_mode="r")


def _copy(
    source: object, names: list[str], out: str, dtype: np.dtype, batch_rows: int, path: str
) -> None:
    """Write the columns ``names`` of the Parquet file ``source`` to the ``.npy`` ``out``."""
    shape = (source.metadata.num_rows, len(names))
    array = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=shape)
    start = 0
    for batch in source.iter_batches(batch_size=batch_rows, columns=names):
        stop = start + batch.num_rows
        for j, name in enumerate(names):
            column = batch.column(name)
            if column.null_count:
                first = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]
                raise ValueError(
                    f"Column {name!r} of {path!r} has missing values, the first in row "
                    f"{start + int(first)}; drop or impute them first."
                )
            array[start:stop, j] = column.to_numpy(zero_copy_only=False)
        start = stop
    array.flush()
    del array
