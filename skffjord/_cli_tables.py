"""Tables of the ``skffjord`` command line: CSV, TSV and Parquet files read and written, and
the columns that a command uses picked from them."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.utils.fixes import parse_version

from ._cli_messages import CommandError, one_line
from ._estimator import FFJORDDensity
from ._utils import numeric_columns

__all__ = [
    "FORMAT_NAMES",
    "check_input",
    "check_output",
    "check_values",
    "kept_columns",
    "model_input",
    "read_table",
    "select_columns",
    "table_format",
    "write_table",
]


#: Table formats by file name suffix (a compressed CSV keeps its inner suffix).
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")


FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet"}


#: CSV numbers parsed to the nearest double, as Python's float does: pandas' default from 3.1
#: on, the round-trip converter before.
_CSV_FLOATS = (
    {} if parse_version(pd.__version__).release >= (3, 1) else {"float_precision": "round_trip"}
)


def table_format(path: str, override: str | None, role: str) -> str:
    """``'csv'``, ``'tsv'`` or ``'parquet'`` for ``path`` (``'-'``: CSV on stdin/stdout)."""
    if override:
        return override
    if path == "-":
        return "csv"
    name = path.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    hint = " or pass --format" if role == "input" else " (or '-' for CSV on standard output)"
    raise CommandError(
        f"cannot tell the format of {role} {path!r} from its name: use .csv, .tsv or "
        f".parquet{hint}",
        status=2,
    )


def check_input(path: str) -> None:
    """Refuse an input ``path`` that does not exist or is a directory."""
    if path == "-":
        return
    if not os.path.exists(path):
        raise CommandError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise CommandError(f"{path!r} is a directory, not a file")


def check_output(path: str) -> None:
    """Refuse an output ``path`` in a missing folder, or that is a directory."""
    if path == "-":
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"cannot write {path!r}: no such directory {folder!r}")
    if os.path.isdir(path):
        raise CommandError(f"cannot write {path!r}: it is a directory")


def _needs_pyarrow(path: str) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise CommandError(
            f"{path!r} is Parquet, which needs pyarrow: pip install 'skffjord[parquet]'"
        ) from None


def read_table(path: str, fmt: str) -> pd.DataFrame:
    """Read a table with a header row.

    Parameters
    ----------
    path : str
        A file, or ``'-'`` for CSV on standard input.
    fmt : {'csv', 'tsv', 'parquet'}
        Its format.

    Returns
    -------
    pandas.DataFrame
        The table; CSV numbers are parsed to the nearest double (as Python's ``float``).
    """
    check_input(path)
    if fmt == "parquet":
        _needs_pyarrow(path)
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                sys.stdin if path == "-" else path,
                sep="\t" if fmt == "tsv" else ",",
                **_CSV_FLOATS,
            )
    # A reader's failure on a user's file, whatever the parser raises, means the file is
    # not a readable table of that format.
    except Exception as err:  # noqa: BLE001
        shown = "standard input" if path == "-" else repr(path)
        raise CommandError(f"cannot read {shown} as {FORMAT_NAMES[fmt]}: {one_line(err)}") from err
    if frame.shape[1] == 0:
        raise CommandError(f"{path!r} has no columns")
    return frame


def write_table(frame: pd.DataFrame, path: str, fmt: str) -> None:
    """Write ``frame`` without its index to ``path`` (``'-'``: CSV on standard output).

    Parameters
    ----------
    frame : pandas.DataFrame
    path : str
    fmt : {'csv', 'tsv', 'parquet'}
    """
    if path == "-":
        frame.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep="\t" if fmt == "tsv" else ",")


def _names(names: Sequence[object], limit: int = 20) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def select_columns(frame: pd.DataFrame, columns: Sequence[str], path: str) -> pd.DataFrame:
    """The ``columns`` of ``frame``, refused when one is missing."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CommandError(
            f"{path!r} has no column(s) {', '.join(map(repr, missing))}; its columns are: "
            f"{_names(list(frame.columns))}"
        )
    return frame[list(columns)]


def check_values(frame: pd.DataFrame, path: str) -> None:
    """Refuse non-numeric columns (the estimator's message) and missing values."""
    numeric_columns(frame)  # raises the estimator's message for a non-numeric column
    counts = frame.isna().sum()
    if counts.any():
        first = int(np.flatnonzero(frame.isna().to_numpy().any(axis=1))[0]) + 1
        listed = ", ".join(f"{c!r} ({n})" for c, n in counts[counts > 0].items())
        raise CommandError(
            f"{path!r} has missing values in column(s) {listed}, the first in data row {first}; "
            "drop or impute them first"
        )


def model_input(
    model: FFJORDDensity, frame: pd.DataFrame, columns: list[str] | None, path: str
) -> pd.DataFrame | np.ndarray:
    """The rows of ``frame`` as the model's features.

    The model's feature names pick the columns by name; ``columns`` picks them instead, in
    the model's feature order. A model fitted without names takes all the columns.
    """
    names = getattr(model, "feature_names_in_", None)
    n_features = model.n_features_in_
    described = f"{n_features} feature(s)" + (
        f": {_names(list(names))}" if names is not None else ""
    )
    if columns is not None:
        if len(columns) != n_features:
            raise CommandError(
                f"--columns names {len(columns)} column(s) but the model has {described}"
            )
        selected = select_columns(frame, columns, path)
        if names is not None:
            selected = selected.set_axis(list(names), axis=1)
    elif names is not None:
        selected = select_columns(frame, list(names), path)
    else:
        if frame.shape[1] != n_features:
            raise CommandError(
                f"the model was fitted without column names on {n_features} feature(s) but "
                f"{path!r} has {frame.shape[1]} columns; choose them with --columns"
            )
        selected = frame
    check_values(selected, path)
    return selected if names is not None else selected.to_numpy(dtype=np.float64)


def kept_columns(
    frame: pd.DataFrame, keep: list[str] | None, path: str, written: Sequence[str]
) -> pd.DataFrame:
    """The ``keep`` columns of the input, which start the output (before ``written``)."""
    if not keep:
        return pd.DataFrame(index=range(len(frame)))
    clash = [name for name in keep if name in written]
    if clash:
        raise CommandError(
            f"--keep names column(s) that the output writes: {', '.join(clash)}", status=2
        )
    return select_columns(frame, keep, path).reset_index(drop=True)
