"""The processed splits: their cache file in the data folder, and the Bunch they are returned in."""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

from ._data_home import FILE_MODE
from ._exceptions import DataIntegrityError

SPLITS = ("train", "validation", "test")
"""The names of the three splits, in their order."""

_CACHE_FORMAT = 1


def cache_path(data_home: Path, name: str, variant: str = "maf") -> Path:
    """Where the processed splits of dataset ``name`` are cached.

    Parameters
    ----------
    data_home : pathlib.Path
        The data folder.
    name : str
        The dataset's name.
    variant : str, default="maf"
        What the splits were made from (for instance ``"images_seed0"``); each variant has its
        own file.

    Returns
    -------
    path : pathlib.Path
        ``data_home/processed/<name>_<variant>.npz``.
    """
    return data_home / "processed" / f"{name}_{variant}.npz"


def save_splits(path: Path, splits: dict[str, np.ndarray], feature_names: Sequence[str]) -> None:
    """Write the splits to ``path`` atomically (temporary file, then rename).

    Parameters
    ----------
    path : pathlib.Path
        The cache file, as given by :func:`cache_path`.
    splits : dict of str to ndarray
        The ``train``, ``validation`` and ``test`` arrays.
    feature_names : sequence of str
        The names of the columns.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                format_version=np.array(_CACHE_FORMAT),
                feature_names=np.array(list(feature_names), dtype=str),
                **splits,
            )
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_or_warn(
    path: Path, splits: dict[str, np.ndarray], names: list[str], writable: bool
) -> None:
    """Cache the splits with :func:`save_splits`, or warn that they could not be cached.

    Parameters
    ----------
    path : pathlib.Path
        The cache file.
    splits : dict of str to ndarray
        The ``train``, ``validation`` and ``test`` arrays.
    names : list of str
        The names of the columns.
    writable : bool
        Whether the data folder can be written to; without it a ``UserWarning`` is issued and
        nothing is written.
    """
    if writable:
        save_splits(path, splits, names)
    else:
        warnings.warn(
            f"data_home is not writable: the processed splits were not cached at {path}, so "
            "the next call will process the source again.",
            UserWarning,
            stacklevel=3,
        )


def load_splits(
    path: Path, n_features: int, split_sizes: Sequence[int] | None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read cached splits and check them; a file that fails is reported as corrupt.

    Parameters
    ----------
    path : pathlib.Path
        The cache file.
    n_features : int
        The number of columns each split must have.
    split_sizes : sequence of int or None
        The number of rows of each split, or ``None`` not to check them.

    Returns
    -------
    splits : dict of str to ndarray
        The ``train``, ``validation`` and ``test`` arrays.
    feature_names : list of str
        The names of the columns.

    Raises
    ------
    DataIntegrityError
        When the file cannot be read, has another format version, or holds splits of the wrong
        shape, of a non-float dtype or with non-finite values.
    """
    problem = None
    try:
        with np.load(path, allow_pickle=False) as cached:
            if int(cached["format_version"]) != _CACHE_FORMAT:
                problem = f"cache format {int(cached['format_version'])}, expected {_CACHE_FORMAT}"
            splits = {split: cached[split] for split in SPLITS}
            feature_names = [str(name) for name in cached["feature_names"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        for i, split in enumerate(SPLITS):
            array = splits[split]
            expected = (None if split_sizes is None else split_sizes[i], n_features)
            if array.ndim != 2 or any(
                want is not None and got != want
                for got, want in zip(array.shape, expected, strict=True)
            ):
                problem = f"split {split!r} has shape {array.shape}, expected {expected}"
                break
            if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
                problem = f"split {split!r} is not an array of finite floats"
                break
        if problem is None and len(feature_names) != n_features:
            problem = f"{len(feature_names)} feature names for {n_features} features"
    if problem is not None:
        raise DataIntegrityError(
            f"The cached file {path} is corrupt ({problem}). Delete it and call the fetcher "
            "again to rebuild it."
        )
    return splits, feature_names


def make_bunch(
    splits: dict[str, np.ndarray],
    feature_names: Sequence[str],
    descr_name: str,
    *,
    as_frame: bool,
) -> Bunch:
    """Bundle the splits, their feature names and the description.

    Parameters
    ----------
    splits : dict of str to ndarray
        The ``train``, ``validation`` and ``test`` arrays.
    feature_names : sequence of str
        The names of the columns.
    descr_name : str
        The description to attach: ``descr/<descr_name>.rst`` of this package.
    as_frame : bool
        Return the splits as pandas DataFrames with named columns.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the splits, ``feature_names`` and ``DESCR``.
    """
    feature_names = list(feature_names)
    if as_frame:
        data = {
            split: pd.DataFrame(array, columns=feature_names, copy=False)
            for split, array in splits.items()
        }
    else:
        data = dict(splits)
    descr = resources.files("skffjord.datasets").joinpath("descr", f"{descr_name}.rst")
    return Bunch(
        **data,
        feature_names=feature_names,
        DESCR=descr.read_text(encoding="utf-8"),
    )
