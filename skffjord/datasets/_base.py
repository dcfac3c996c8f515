"""Data folder, cache files and the returned Bunch, shared by every fetcher."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

DATA_HOME_ENV = "SKFFJORD_DATA"
"""Environment variable that sets the default data folder."""

SPLITS = ("train", "validation", "test")
FILE_MODE = 0o644
"""Permissions of the files written (temporary files are created private)."""
_CACHE_FORMAT = 1


class DataIntegrityError(OSError):
    """A downloaded, extracted or cached file is not what it should be.

    Raised for truncated downloads, checksum mismatches, archives without the expected members,
    data of the wrong shape and corrupt cache files. Nothing that failed these checks is left in
    the data folder, except a cache file found corrupt, which the message names so that it can be
    deleted.

    It is a subclass of ``OSError``, so ``except OSError`` catches it with the other file and
    network errors.

    Examples
    --------
    A damaged cache file is reported with its path:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from skffjord.datasets import DataIntegrityError, fetch_power
    >>> with tempfile.TemporaryDirectory() as home:
    ...     (Path(home) / "processed").mkdir()
    ...     _ = (Path(home) / "processed" / "power_maf.npz").write_bytes(b"not a npz file")
    ...     try:
    ...         fetch_power(home, download_if_missing=False)
    ...     except DataIntegrityError as exc:
    ...         print(str(exc).split(" is corrupt")[0].replace(home, "<home>"))
    The cached file <home>/processed/power_maf.npz
    """


def get_data_home(data_home: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder where skffjord keeps its datasets.

    By default it is the folder named by the ``SKFFJORD_DATA`` environment variable or, when
    that is unset, ``~/skffjord_data``. ``~`` is expanded. The folder is not created here:
    the fetchers create it when they have something to write.

    Parameters
    ----------
    data_home : str or path-like, default=None
        The folder to use. ``None`` takes the default described above.

    Returns
    -------
    data_home : pathlib.Path
        The folder, as an absolute path.

    Examples
    --------
    >>> from skffjord.datasets import get_data_home
    >>> get_data_home("my_data").name
    'my_data'
    """
    if data_home is None:
        data_home = os.environ.get(DATA_HOME_ENV) or os.path.join("~", "skffjord_data")
    if not isinstance(data_home, str | os.PathLike):
        raise TypeError(
            f"data_home must be a str, a path-like object or None, got {type(data_home).__name__}."
        )
    return Path(os.path.expanduser(os.fspath(data_home))).absolute()


def clear_data_home(data_home: str | os.PathLike[str] | None = None) -> None:
    """Delete everything in the data folder: downloaded archives and cached splits.

    Parameters
    ----------
    data_home : str or path-like, default=None
        The folder to clear; see :func:`get_data_home`.

    Examples
    --------
    The folder itself is removed; the fetchers create it again when they need it:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from skffjord.datasets import clear_data_home
    >>> home = Path(tempfile.mkdtemp())
    >>> _ = (home / "processed").mkdir(), (home / "processed" / "power_maf.npz").write_bytes(b"")
    >>> clear_data_home(home)
    >>> home.exists()
    False
    """
    shutil.rmtree(get_data_home(data_home), ignore_errors=True)


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written in it.

    Raises
    ------
    PermissionError
        With a message naming the folder, when it cannot be created or written to.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(
            f"data_home is not writable: cannot write in {folder} ({exc.strerror or exc}). "
            f"Pass a writable data_home or set the {DATA_HOME_ENV} environment variable."
        ) from exc


def cache_path(data_home: Path, name: str, variant: str = "maf") -> Path:
    """Where the processed splits of dataset ``name`` are cached."""
    return data_home / "processed" / f"{name}_{variant}.npz"


def save_splits(path: Path, splits: dict[str, np.ndarray], feature_names: Sequence[str]) -> None:
    """Write the splits to ``path`` atomically (temporary file, then rename)."""
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


def load_splits(
    path: Path, n_features: int, split_sizes: Sequence[int] | None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read cached splits and check them; a file that fails is reported as corrupt."""
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
    """Bundle the splits, their feature names and the description."""
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
