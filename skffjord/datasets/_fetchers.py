"""Fetching a dataset by name: :func:`fetch_dataset`, over every ``fetch_*`` function."""

from __future__ import annotations

import os
from collections.abc import Callable

from sklearn.utils import Bunch

from ._bsds300 import fetch_bsds300
from ._maf_tabular import fetch_gas, fetch_hepmass, fetch_miniboone, fetch_power
from ._specs import unknown_dataset

__all__ = ["FETCHERS", "fetch_dataset"]

FETCHERS: dict[str, Callable[..., Bunch]] = {
    "power": fetch_power,
    "gas": fetch_gas,
    "hepmass": fetch_hepmass,
    "miniboone": fetch_miniboone,
    "bsds300": fetch_bsds300,
}
"""The ``fetch_*`` function of each dataset, by name."""


def fetch_dataset(
    name: str, data_home: str | os.PathLike[str] | None = None, **kwargs: object
) -> Bunch:
    """Load one of the MAF datasets by name: ``"power"``, ``"gas"``, ``"hepmass"``,
    ``"miniboone"`` or ``"bsds300"``.

    Parameters
    ----------
    name : str
        The dataset's name, case-insensitive; see :data:`~skffjord.datasets.DATASETS`.
    data_home : str or path-like, default=None
        Folder for downloads and cached splits; see :func:`get_data_home`.
    **kwargs
        Passed to the dataset's ``fetch_*`` function.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        What the dataset's ``fetch_*`` function returns.

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.

    Examples
    --------
    >>> from skffjord.datasets import fetch_dataset
    >>> fetch_dataset("cifar10")
    Traceback (most recent call last):
        ...
    ValueError: Unknown dataset 'cifar10'; the datasets are power, gas, hepmass, miniboone, bsds300.
    >>> data = fetch_dataset("gas", download_if_missing=False)  # doctest: +SKIP
    """
    if not isinstance(name, str) or name.lower() not in FETCHERS:
        raise unknown_dataset(name)
    return FETCHERS[name.lower()](data_home, **kwargs)
