"""The four MAF tabular datasets: ``fetch_power``, ``fetch_gas``, ``fetch_hepmass`` and
``fetch_miniboone``, all read from MAF's archive."""

from __future__ import annotations

import os
from collections.abc import Callable

from sklearn.utils import Bunch

from ._maf_archive import fetch_from_maf_archive
from ._specs import SPECS

_DOC_COMMON = """
    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder for the downloaded archive and the cached splits. ``None`` uses the
        ``SKFFJORD_DATA`` environment variable, else ``~/skffjord_data``
        (see :func:`get_data_home`).
    download_if_missing : bool, default=True
        Download the data when it is not in ``data_home``; with ``False`` an ``OSError`` is
        raised instead.
    as_frame : bool, default=False
        Return pandas DataFrames with named columns instead of NumPy arrays.
    n_retries : int, default=3
        How many times to retry a download after a network error or a truncated transfer.
    delay : float, default=1.0
        Seconds between retries.
    verbose : bool, default=True
        Show a progress bar while downloading.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With ``train``, ``validation`` and ``test`` (ndarray of shape (n_rows, {d}) and dtype
        {dtype}, or DataFrames with ``as_frame=True``), ``feature_names`` (list of str) and
        ``DESCR`` (the description, with the preprocessing step by step).

    Raises
    ------
    DataIntegrityError
        When a download is truncated, a checksum does not match, the archive lacks a member,
        the data has the wrong shape, or a cached file is corrupt. A download that fails these
        checks is deleted; nothing is cached.
    PermissionError
        When something must be written and ``data_home`` is not writable.
    OSError
        When the data is missing and ``download_if_missing=False``, or the download fails.

    Examples
    --------
    With ``download_if_missing=False`` nothing is downloaded, and a folder without the data
    raises:

    >>> import tempfile
    >>> from skffjord.datasets import {func}
    >>> with tempfile.TemporaryDirectory() as home:
    ...     {func}(home, download_if_missing=False)
    Traceback (most recent call last):
        ...
    OSError: {upper} is not in ... and download_if_missing=False. ...

    The usual call downloads the archive once and then reads the cached splits (not run here:
    it needs the network):

    >>> data = {func}()  # doctest: +SKIP
    >>> data.train.shape, data.validation.shape, data.test.shape  # doctest: +SKIP
    {shapes}
"""


def _fetcher(name: str, summary: str, dtype: str = "float64") -> Callable[..., Bunch]:
    """Make the public ``fetch_<name>`` function, with its numpydoc docstring."""
    spec = SPECS[name]

    def fetch(
        data_home: str | os.PathLike[str] | None = None,
        *,
        download_if_missing: bool = True,
        as_frame: bool = False,
        n_retries: int = 3,
        delay: float = 1.0,
        verbose: bool = True,
    ) -> Bunch:
        return fetch_from_maf_archive(
            name,
            data_home=data_home,
            download_if_missing=download_if_missing,
            as_frame=as_frame,
            n_retries=n_retries,
            delay=delay,
            verbose=verbose,
        )

    train, validation, test = (f"{size:,}" for size in spec.split_sizes)
    fetch.__name__ = fetch.__qualname__ = f"fetch_{name}"
    fetch.__doc__ = (
        f"{summary}\n\n"
        f"    The splits are MAF's: {train} train, {validation} validation and {test} test rows\n"
        f"    of {spec.n_features} features, from the preprocessed archive of Papamakarios et\n"
        f"    al. (2017) (Zenodo record 1161203), processed as described in ``DESCR`` and in\n"
        f"    :mod:`skffjord.datasets._preprocessing`. The archive (about 1 GB, shared by all\n"
        f"    datasets) is kept in ``data_home/maf``; the processed splits are cached in\n"
        f"    ``data_home/processed``, so later calls only read that file.\n"
        + _DOC_COMMON.format(
            d=spec.n_features,
            dtype=dtype,
            func=f"fetch_{name}",
            upper=name.upper(),
            shapes=tuple((size, spec.n_features) for size in spec.split_sizes),
        )
    )
    return fetch


fetch_power = _fetcher("power", "Load POWER (UCI household electric power, d=6), MAF splits.")
fetch_gas = _fetcher("gas", "Load GAS (UCI gas sensor array, ethylene and CO, d=8), MAF splits.")
fetch_hepmass = _fetcher("hepmass", "Load HEPMASS (UCI, positive class, d=21), MAF splits.")
fetch_miniboone = _fetcher(
    "miniboone", "Load MINIBOONE (UCI MiniBooNE particle identification, d=43), MAF splits."
)
