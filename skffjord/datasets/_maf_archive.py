"""MAF's preprocessed archive: downloading it once, and reading each dataset from its members."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

from ._bsds300_patches import FEATURE_NAMES as BSDS300_FEATURE_NAMES
from ._data_home import ensure_writable, get_data_home, is_writable, missing_error
from ._download import RemoteFile, download, extract_members, git_blob_sha1
from ._exceptions import DataIntegrityError, add_hint
from ._preprocessing import (
    POWER_FEATURES,
    preprocess_gas,
    preprocess_hepmass,
    preprocess_miniboone,
    preprocess_power,
)
from ._specs import DatasetSpec, check_fetch_args, check_splits
from ._splits import SPLITS, cache_path, load_splits, make_bunch, save_or_warn

MAF_ARCHIVE = RemoteFile(
    filename="data.tar.gz",
    url="https://zenodo.org/record/1161203/files/data.tar.gz",
)
"""MAF's preprocessed datasets: G. Papamakarios, "Preprocessed datasets for MAF experiments",
Zenodo, 2018, doi:10.5281/zenodo.1161203. Its checksum is not recorded here; the byte count
the server announces, the members' checks and the shapes are."""

Processed = tuple[dict[str, np.ndarray], list[str]]
"""Splits by name, and the feature names."""


def _read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _read_old_pickle(path: Path, member: str) -> object:
    """Read a pandas pickle, falling back to pandas' compatibility unpickler with latin-1
    strings, for pickles written by Python 2 and old pandas (as MAF's may be)."""
    try:
        return pd.read_pickle(path)
    except Exception as first:  # unpickling can raise nearly anything
        try:
            from pandas.compat.pickle_compat import Unpickler

            with open(path, "rb") as fh:
                return Unpickler(fh, encoding="latin1").load()
        except Exception:
            raise ValueError(
                f"pandas {pd.__version__} cannot read {member} ({type(first).__name__}: "
                f"{first}). The file is a pickle written by an old pandas under Python 2; an "
                "older pandas (2.x) may read it."
            ) from first


def _read_hdf5(path: Path) -> dict[str, np.ndarray]:
    """Read the ``train``, ``validation`` and ``test`` arrays of MAF's ``BSDS300.hdf5``."""
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading BSDS300.hdf5 needs h5py: pip install h5py (or skffjord[datasets])."
        ) from exc
    try:
        with h5py.File(path, "r") as fh:
            return {key: np.asarray(fh[key], dtype=np.float32) for key in SPLITS}
    except (OSError, KeyError) as exc:
        raise DataIntegrityError(f"{path} is not a readable BSDS300 HDF5 file ({exc}).") from exc


def _as_splits(
    train: np.ndarray, validation: np.ndarray, test: np.ndarray
) -> dict[str, np.ndarray]:
    return {"train": train, "validation": validation, "test": test}


def _process_power(paths: dict[str, Path]) -> Processed:
    splits = preprocess_power(_read_npy(paths["power/data.npy"]))
    return _as_splits(*splits), list(POWER_FEATURES)


def _process_gas(paths: dict[str, Path]) -> Processed:
    # MAF ships GAS as a pandas pickle; reading it runs pickle on the archive's bytes.
    frame = _read_old_pickle(paths["gas/ethylene_CO.pickle"], "gas/ethylene_CO.pickle")
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    splits, names = preprocess_gas(frame)
    return _as_splits(*splits), names


def _process_hepmass(paths: dict[str, Path]) -> Processed:
    train_frame = pd.read_csv(paths["hepmass/1000_train.csv"], index_col=False)
    test_frame = pd.read_csv(paths["hepmass/1000_test.csv"], index_col=False)
    splits, names = preprocess_hepmass(train_frame, test_frame)
    return _as_splits(*splits), names


def _process_miniboone(paths: dict[str, Path]) -> Processed:
    train, validation, test = preprocess_miniboone(_read_npy(paths["miniboone/data.npy"]))
    names = [f"feature_{i}" for i in range(train.shape[1])]
    return _as_splits(train, validation, test), names


def _process_bsds300(paths: dict[str, Path]) -> Processed:
    return _read_hdf5(paths["BSDS300/BSDS300.hdf5"]), list(BSDS300_FEATURE_NAMES)


_PROCESSORS: dict[str, Callable[[dict[str, Path]], Processed]] = {
    "power": _process_power,
    "gas": _process_gas,
    "hepmass": _process_hepmass,
    "miniboone": _process_miniboone,
    "bsds300": _process_bsds300,
}

_READ_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    ImportError,
    EOFError,
    pickle.UnpicklingError,
)
"""What reading a member can raise when its content is not what MAF published."""


def _process_archive(
    spec: DatasetSpec, archive: Path, workdir: Path, *, downloaded: bool
) -> Processed:
    """Extract the dataset's members of ``archive`` into ``workdir``, check and process them.

    A member missing from the archive, or an archive that cannot be read, deletes the archive
    when it was just ``downloaded``; otherwise the errors get a hint on what to do with it.
    """
    name = spec.name
    try:
        paths = extract_members(archive, spec.members, workdir, strip_prefix="data/")
    except DataIntegrityError as exc:
        # the archive itself is bad (unreadable, truncated, without the member)
        if downloaded:
            archive.unlink(missing_ok=True)
        else:
            add_hint(exc, f"Delete {archive} to download it again.")
        raise
    try:
        for member, blob in spec.member_blobs:
            found = git_blob_sha1(paths[member])
            if found != blob:
                raise DataIntegrityError(
                    f"Checksum mismatch for member {member!r} of {archive}: git blob id "
                    f"{found}, expected {blob}."
                )
        try:
            splits, names = _PROCESSORS[name](paths)
        except DataIntegrityError:
            raise
        except _READ_ERRORS as exc:
            raise DataIntegrityError(
                f"Could not read {name.upper()} from {archive}: {exc}"
            ) from exc
        check_splits(spec, splits, str(archive))
    except DataIntegrityError as exc:
        # The archive reads but this member is not what MAF published. It is kept (it may
        # serve the other datasets); nothing is cached.
        add_hint(exc, f"If {archive} is not MAF's archive, delete it to download it again.")
        raise
    return splits, names


def fetch_from_maf_archive(
    name: str,
    *,
    data_home: str | os.PathLike[str] | None,
    download_if_missing: bool,
    as_frame: bool,
    n_retries: int,
    delay: float,
    verbose: bool,
) -> Bunch:
    """Load dataset ``name`` from its cache, else from MAF's archive, downloaded if needed.

    The archive is kept in ``data_home/maf`` for the other datasets; only the members the
    dataset needs are extracted, into a temporary folder. The processed splits are cached in
    ``data_home/processed``, or a warning says why not.

    Parameters
    ----------
    name : str
        The dataset's name, one of :data:`~skffjord.datasets.DATASETS`.
    data_home, download_if_missing, as_frame, n_retries, delay, verbose
        As for the public ``fetch_*`` functions.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        The splits, ``feature_names`` and ``DESCR``.
    """
    spec = check_fetch_args(name, download_if_missing, as_frame, n_retries, delay)
    home = get_data_home(data_home)
    cache = cache_path(home, name, "maf")
    if cache.exists():
        splits, names = load_splits(cache, spec.n_features, spec.split_sizes)
        return make_bunch(splits, names, name, as_frame=as_frame)

    archive = home / "maf" / MAF_ARCHIVE.filename
    downloaded = False
    if not archive.exists():
        if not download_if_missing:
            raise missing_error(name, home)
        ensure_writable(home)
        download(MAF_ARCHIVE, archive.parent, n_retries=n_retries, delay=delay, verbose=verbose)
        downloaded = True
    writable = is_writable(home)
    workdir_parent = home if writable else None
    with tempfile.TemporaryDirectory(dir=workdir_parent, prefix=".skffjord-") as workdir:
        splits, names = _process_archive(spec, archive, Path(workdir), downloaded=downloaded)
    save_or_warn(cache, splits, names, writable)
    return make_bunch(splits, names, name, as_frame=as_frame)
