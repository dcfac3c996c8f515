"""What each dataset must look like once processed, and the checks made against it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._exceptions import DataIntegrityError
from ._splits import SPLITS


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset must look like once processed, and where it comes from.

    Parameters
    ----------
    name : str
        The dataset's name.
    members : tuple of str
        The members of MAF's archive it is read from, without the leading ``data/``.
    split_sizes : tuple of int
        The number of rows of the train, validation and test splits.
    n_features : int
        The number of columns.
    member_blobs : tuple of (str, str), default=()
        Members with a known git blob id, as ``(member, blob id)`` pairs.
    images_digest : str or None, default=None
        For a dataset built from images: the SHA-256 of their ``sha256sum`` list.
    n_images : tuple of int or None, default=None
        For a dataset built from images: how many train and test images there are.
    """

    name: str
    members: tuple[str, ...]
    split_sizes: tuple[int, int, int]
    n_features: int
    member_blobs: tuple[tuple[str, str], ...] = ()
    images_digest: str | None = None
    n_images: tuple[int, int] | None = None


SPECS: dict[str, DatasetSpec] = {
    "power": DatasetSpec("power", ("power/data.npy",), (1_659_917, 184_435, 204_928), 6),
    "gas": DatasetSpec("gas", ("gas/ethylene_CO.pickle",), (852_174, 94_685, 105_206), 8),
    "hepmass": DatasetSpec(
        "hepmass",
        ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
        (315_123, 35_013, 174_987),
        21,
    ),
    "miniboone": DatasetSpec(
        "miniboone",
        ("miniboone/data.npy",),
        (29_556, 3_284, 3_648),
        43,
        # git blob id of MAF's file, as committed in EmoryMLIP/OT-Flow data/miniboone/data.npy
        member_blobs=(("miniboone/data.npy", "9737c80fa84df483ed368404e3110c324613d54c"),),
    ),
    "bsds300": DatasetSpec(
        "bsds300",
        ("BSDS300/BSDS300.hdf5",),
        (1_000_000, 50_000, 250_000),
        63,
        # SHA-256 of the sorted sha256sum list of the 300 original images
        images_digest="373d1ffde559b00ac79bdbff2b47886874b323400652723c762cf2b665fe7c69",
        n_images=(200, 100),
    ),
}
"""The datasets by name, in the order they are listed to users."""

DATASETS = tuple(SPECS)
"""Names accepted by :func:`fetch_dataset`."""


def unknown_dataset(name: object) -> ValueError:
    """The error for a dataset name that is not in :data:`DATASETS`.

    Parameters
    ----------
    name : object
        The name that was asked for.

    Returns
    -------
    error : ValueError
        The error to raise, listing the known names.
    """
    return ValueError(f"Unknown dataset {name!r}; the datasets are {', '.join(DATASETS)}.")


def check_fetch_args(
    name: str, download_if_missing: bool, as_frame: bool, n_retries: int, delay: float
) -> DatasetSpec:
    """Check the arguments that every fetcher takes, and return the dataset's spec.

    Parameters
    ----------
    name : str
        The dataset's name.
    download_if_missing : bool
        Must be a bool.
    as_frame : bool
        Must be a bool.
    n_retries : int
        Must be a non-negative int.
    delay : float
        Must be a non-negative number.

    Returns
    -------
    spec : DatasetSpec
        The spec of dataset ``name`` (looked up when called, so that it can be replaced).

    Raises
    ------
    ValueError
        For an unknown name, or a bad ``n_retries`` or ``delay``.
    TypeError
        When ``download_if_missing`` or ``as_frame`` is not a bool.
    """
    if name not in SPECS:
        raise unknown_dataset(name)
    for label, value in (("download_if_missing", download_if_missing), ("as_frame", as_frame)):
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"{label} must be a bool, got {value!r}.")
    if isinstance(n_retries, bool) or not isinstance(n_retries, int | np.integer) or n_retries < 0:
        raise ValueError(f"n_retries must be a non-negative int, got {n_retries!r}.")
    if not isinstance(delay, int | float | np.number) or not delay >= 0:
        raise ValueError(f"delay must be a non-negative number, got {delay!r}.")
    return SPECS[name]


def check_splits(spec: DatasetSpec, splits: dict[str, np.ndarray], source: str) -> None:
    """Check that freshly processed splits have the spec's shapes and only finite values.

    Parameters
    ----------
    spec : DatasetSpec
        What the splits must look like.
    splits : dict of str to ndarray
        The ``train``, ``validation`` and ``test`` arrays.
    source : str
        Where they were made from, for the message.

    Raises
    ------
    DataIntegrityError
        When a shape differs from the spec's, or a split has non-finite values.
    """
    shapes = tuple(splits[split].shape for split in SPLITS)
    expected = tuple((size, spec.n_features) for size in spec.split_sizes)
    if shapes != expected:
        raise DataIntegrityError(
            f"{spec.name.upper()} from {source} has split shapes {shapes}; the MAF splits are "
            f"{expected}. The source file is not the expected one."
        )
    for split, array in splits.items():
        if not np.isfinite(array).all():
            raise DataIntegrityError(
                f"{spec.name.upper()} from {source}: split {split!r} has non-finite values."
            )
