"""The public ``fetch_*`` functions: cache first, then archive, then download."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

from . import _bsds300
from ._base import (
    DataIntegrityError,
    cache_path,
    ensure_writable,
    get_data_home,
    load_splits,
    make_bunch,
    save_splits,
)
from ._download import RemoteFile, download, extract, extract_members, git_blob_sha1
from ._preprocessing import (
    POWER_FEATURES,
    preprocess_gas,
    preprocess_hepmass,
    preprocess_miniboone,
    preprocess_power,
)

MAF_ARCHIVE = RemoteFile(
    filename="data.tar.gz",
    url="https://zenodo.org/record/1161203/files/data.tar.gz",
)
"""MAF's preprocessed datasets: G. Papamakarios, "Preprocessed datasets for MAF experiments",
Zenodo, 2018, doi:10.5281/zenodo.1161203. Its checksum is not recorded here; the byte count
the server announces, the members' checks and the shapes are."""

BSDS300_IMAGES = RemoteFile(
    filename="BSDS300-images.tgz",
    url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/BSDS300-images.tgz",
)
"""The original Berkeley Segmentation Dataset images (300 JPEGs)."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset must look like once processed, and where it comes from."""

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

DATASETS = tuple(SPECS)
"""Names accepted by :func:`fetch_dataset`."""


def _read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _process_power(paths: dict[str, Path]) -> tuple[dict[str, np.ndarray], list[str]]:
    train, validation, test = preprocess_power(_read_npy(paths["power/data.npy"]))
    return {"train": train, "validation": validation, "test": test}, list(POWER_FEATURES)


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


def _process_gas(paths: dict[str, Path]) -> tuple[dict[str, np.ndarray], list[str]]:
    # MAF ships GAS as a pandas pickle; reading it runs pickle on the archive's bytes.
    frame = _read_old_pickle(paths["gas/ethylene_CO.pickle"], "gas/ethylene_CO.pickle")
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    (train, validation, test), names = preprocess_gas(frame)
    return {"train": train, "validation": validation, "test": test}, names


def _process_hepmass(paths: dict[str, Path]) -> tuple[dict[str, np.ndarray], list[str]]:
    train_frame = pd.read_csv(paths["hepmass/1000_train.csv"], index_col=False)
    test_frame = pd.read_csv(paths["hepmass/1000_test.csv"], index_col=False)
    (train, validation, test), names = preprocess_hepmass(train_frame, test_frame)
    return {"train": train, "validation": validation, "test": test}, names


def _process_miniboone(paths: dict[str, Path]) -> tuple[dict[str, np.ndarray], list[str]]:
    train, validation, test = preprocess_miniboone(_read_npy(paths["miniboone/data.npy"]))
    names = [f"feature_{i}" for i in range(train.shape[1])]
    return {"train": train, "validation": validation, "test": test}, names


def _process_bsds300(paths: dict[str, Path]) -> tuple[dict[str, np.ndarray], list[str]]:
    return _bsds300.read_hdf5(paths["BSDS300/BSDS300.hdf5"]), list(_bsds300.FEATURE_NAMES)


_PROCESSORS: dict[str, Callable[[dict[str, Path]], tuple[dict[str, np.ndarray], list[str]]]] = {
    "power": _process_power,
    "gas": _process_gas,
    "hepmass": _process_hepmass,
    "miniboone": _process_miniboone,
    "bsds300": _process_bsds300,
}


def _check_splits(spec: DatasetSpec, splits: dict[str, np.ndarray], source: str) -> None:
    shapes = tuple(splits[split].shape for split in ("train", "validation", "test"))
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


def _add_hint(exc: BaseException, hint: str) -> None:
    exc.args = (f"{exc.args[0]} {hint}", *exc.args[1:]) if exc.args else (hint,)


def _is_writable(folder: Path) -> bool:
    try:
        ensure_writable(folder)
    except PermissionError:
        return False
    return True


def _save_or_warn(
    path: Path, splits: dict[str, np.ndarray], names: list[str], writable: bool
) -> None:
    if writable:
        save_splits(path, splits, names)
    else:
        warnings.warn(
            f"data_home is not writable: the processed splits were not cached at {path}, so "
            "the next call will process the source again.",
            UserWarning,
            stacklevel=3,
        )


def _check_common(
    name: str, download_if_missing: bool, as_frame: bool, n_retries: int, delay: float
) -> DatasetSpec:
    if name not in SPECS:
        raise ValueError(f"Unknown dataset {name!r}; the datasets are {', '.join(DATASETS)}.")
    for label, value in (("download_if_missing", download_if_missing), ("as_frame", as_frame)):
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"{label} must be a bool, got {value!r}.")
    if isinstance(n_retries, bool) or not isinstance(n_retries, int | np.integer) or n_retries < 0:
        raise ValueError(f"n_retries must be a non-negative int, got {n_retries!r}.")
    if not isinstance(delay, int | float | np.number) or not delay >= 0:
        raise ValueError(f"delay must be a non-negative number, got {delay!r}.")
    return SPECS[name]


def _missing(name: str, home: Path) -> OSError:
    return OSError(
        f"{name.upper()} is not in {home} and download_if_missing=False. Call again with "
        "download_if_missing=True, or point data_home (or SKFFJORD_DATA) at a folder that has it."
    )


def _fetch_from_maf_archive(
    name: str,
    *,
    data_home: str | os.PathLike[str] | None,
    download_if_missing: bool,
    as_frame: bool,
    n_retries: int,
    delay: float,
    verbose: bool,
) -> Bunch:
    spec = _check_common(name, download_if_missing, as_frame, n_retries, delay)
    home = get_data_home(data_home)
    cache = cache_path(home, name, "maf")
    if cache.exists():
        splits, names = load_splits(cache, spec.n_features, spec.split_sizes)
        return make_bunch(splits, names, name, as_frame=as_frame)

    archive = home / "maf" / MAF_ARCHIVE.filename
    downloaded = False
    if not archive.exists():
        if not download_if_missing:
            raise _missing(name, home)
        ensure_writable(home)
        download(MAF_ARCHIVE, archive.parent, n_retries=n_retries, delay=delay, verbose=verbose)
        downloaded = True
    writable = _is_writable(home)
    workdir_parent = home if writable else None
    with tempfile.TemporaryDirectory(dir=workdir_parent, prefix=".skffjord-") as workdir:
        try:
            paths = extract_members(archive, spec.members, Path(workdir), strip_prefix="data/")
        except DataIntegrityError as exc:
            # the archive itself is bad (unreadable, truncated, without the member)
            if downloaded:
                archive.unlink(missing_ok=True)
            else:
                _add_hint(exc, f"Delete {archive} to download it again.")
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
            except (
                ValueError,
                TypeError,
                KeyError,
                AttributeError,
                ImportError,
                EOFError,
                pickle.UnpicklingError,
            ) as exc:
                raise DataIntegrityError(
                    f"Could not read {name.upper()} from {archive}: {exc}"
                ) from exc
            _check_splits(spec, splits, str(archive))
        except DataIntegrityError as exc:
            # The archive reads but this member is not what MAF published. It is kept (it may
            # serve the other datasets); nothing is cached.
            _add_hint(exc, f"If {archive} is not MAF's archive, delete it to download it again.")
            raise
    _save_or_warn(cache, splits, names, writable)
    return make_bunch(splits, names, name, as_frame=as_frame)


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
        return _fetch_from_maf_archive(
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


def _image_folder(home: Path) -> Path:
    return home / "BSDS300" / "images"


def _images_present(folder: Path) -> bool:
    train, test = _bsds300.list_images(folder)
    return bool(train) and bool(test)


def _download_images(home: Path, spec: DatasetSpec, **download_kwargs: object) -> None:
    """Download the Berkeley archive and unpack its JPEGs into ``home/BSDS300/images``."""
    ensure_writable(home)
    target = _image_folder(home)
    with tempfile.TemporaryDirectory(dir=home, prefix=".skffjord-") as workdir:
        archive = download(BSDS300_IMAGES, Path(workdir), **download_kwargs)  # type: ignore[arg-type]
        unpacked = Path(workdir) / "unpacked"
        extract(
            archive,
            unpacked,
            lambda key: key.startswith(("images/train/", "images/test/")) and key.endswith(".jpg"),
            strip_prefix="BSDS300/",
            flatten=False,
        )
        _verify_images(unpacked / "images", spec, str(BSDS300_IMAGES.url))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            # an incomplete folder from an earlier attempt, or another process that got there
            # first: set it aside, put the verified images in place, then drop it
            stale = Path(workdir) / "stale"
            os.replace(target, stale)
        os.replace(unpacked / "images", target)


def _verify_images(folder: Path, spec: DatasetSpec, source: str) -> None:
    train, test = _bsds300.list_images(folder)
    if spec.n_images is not None and (len(train), len(test)) != spec.n_images:
        raise DataIntegrityError(
            f"{source} has {len(train)} train and {len(test)} test images; BSDS300 has "
            f"{spec.n_images[0]} and {spec.n_images[1]}."
        )
    if spec.images_digest is not None:
        digest = _bsds300.images_digest(folder)
        if digest != spec.images_digest:
            raise DataIntegrityError(
                f"The images in {source} are not the original BSDS300 images: the SHA-256 of "
                f"their checksum list is {digest}, expected {spec.images_digest}."
            )


def fetch_bsds300(
    data_home: str | os.PathLike[str] | None = None,
    *,
    source: str = "maf",
    images_dir: str | os.PathLike[str] | None = None,
    download_if_missing: bool = True,
    as_frame: bool = False,
    random_state: int = 0,
    n_retries: int = 3,
    delay: float = 1.0,
    verbose: bool = True,
) -> Bunch:
    """Load BSDS300 (8x8 natural-image patches, d=63), MAF splits.

    1,000,000 train, 50,000 validation and 250,000 test patches of 63 features, as float32
    (about 330 MB in memory).

    With ``source="maf"`` the patches are MAF's own, read from ``BSDS300/BSDS300.hdf5`` in the
    preprocessed archive of Papamakarios et al. (2017) (Zenodo record 1161203); reading it
    needs h5py. With ``source="images"`` they are cut from the 300 original Berkeley images
    with the MAF recipe (see ``DESCR`` and
    :func:`skffjord.datasets._bsds300.patches_from_images`); this needs Pillow. The images are
    read from ``images_dir`` (which may be read-only), else from
    ``data_home/BSDS300/images/{train,test}/*.jpg``, downloading them from Berkeley into that
    folder when they are missing; their checksums are verified either way.
    The patches then follow MAF's recipe but are not MAF's patches, so scores compare with
    published BSDS300 figures only approximately.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder for downloads and cached splits; see :func:`get_data_home`.
    source : {"maf", "images"}, default="maf"
        Where the patches come from, as above.
    images_dir : str or path-like, default=None
        For ``source="images"``: a folder holding ``train/*.jpg`` and ``test/*.jpg``, such as
        the ``BSDS300/images`` folder of the original archive. It is only read; the splits are
        still cached in ``data_home``. ``None`` uses ``data_home/BSDS300/images``.
    download_if_missing : bool, default=True
        Download what is not in ``data_home``; with ``False`` an ``OSError`` is raised instead.
    as_frame : bool, default=False
        Return pandas DataFrames with named columns (``pixel_<row>_<col>``).
    random_state : int, default=0
        Seed of the patch positions, dequantisation noise and train/validation shuffle, for
        ``source="images"`` only. Each seed is cached separately.
    n_retries : int, default=3
        Retries of a download after a network error or a truncated transfer.
    delay : float, default=1.0
        Seconds between retries.
    verbose : bool, default=True
        Show a progress bar while downloading.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With ``train``, ``validation`` and ``test``, ``feature_names`` and ``DESCR``.

    Raises
    ------
    DataIntegrityError
        For a truncated download, a checksum mismatch, a missing member, images that are not
        the original ones, data of the wrong shape or a corrupt cached file.
    PermissionError
        When something must be written and ``data_home`` is not writable.
    OSError
        When the data is missing and ``download_if_missing=False``, or the download fails.

    Examples
    --------
    With ``download_if_missing=False`` nothing is downloaded, and a folder without the data
    raises:

    >>> import tempfile
    >>> from skffjord.datasets import fetch_bsds300
    >>> with tempfile.TemporaryDirectory() as home:
    ...     fetch_bsds300(home, source="images", download_if_missing=False)
    Traceback (most recent call last):
        ...
    OSError: BSDS300 is not in ... and download_if_missing=False. ...

    Patches cut from a local copy of the original images (not run here: it needs the images):

    >>> data = fetch_bsds300(source="images", images_dir="BSDS300/images")  # doctest: +SKIP
    >>> data.train.shape, data.validation.shape, data.test.shape  # doctest: +SKIP
    ((1000000, 63), (50000, 63), (250000, 63))
    """
    if source == "maf":
        if images_dir is not None:
            raise ValueError("images_dir is only used with source='images'.")
        return _fetch_from_maf_archive(
            "bsds300",
            data_home=data_home,
            download_if_missing=download_if_missing,
            as_frame=as_frame,
            n_retries=n_retries,
            delay=delay,
            verbose=verbose,
        )
    if source != "images":
        raise ValueError(f"source must be 'maf' or 'images', got {source!r}.")
    spec = _check_common("bsds300", download_if_missing, as_frame, n_retries, delay)
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer):
        raise ValueError(
            f"random_state must be an int for source='images' (each seed is cached), "
            f"got {random_state!r}."
        )
    home = get_data_home(data_home)
    cache = cache_path(home, "bsds300", f"images_seed{int(random_state)}")
    if cache.exists():
        splits, names = load_splits(cache, spec.n_features, spec.split_sizes)
        return make_bunch(splits, names, "bsds300", as_frame=as_frame)
    if images_dir is not None:
        folder = Path(os.path.expanduser(os.fspath(images_dir))).absolute()
        if not _images_present(folder):
            raise OSError(f"images_dir {folder} has no train/*.jpg and test/*.jpg images.")
    else:
        folder = _image_folder(home)
    if not _images_present(folder):
        if not download_if_missing:
            raise _missing("bsds300", home)
        _download_images(home, spec, n_retries=n_retries, delay=delay, verbose=verbose)
    try:
        _verify_images(folder, spec, str(folder))
    except DataIntegrityError as exc:
        if images_dir is None:
            _add_hint(exc, f"Delete {folder} to download the images again.")
        raise
    train, test = _bsds300.list_images(folder)
    n_train, n_validation, n_test = spec.split_sizes
    splits = _bsds300.patches_from_images(
        train,
        test,
        n_train=n_train,
        n_validation=n_validation,
        n_test=n_test,
        random_state=int(random_state),
    )
    _check_splits(spec, splits, str(folder))
    names = list(_bsds300.FEATURE_NAMES)
    _save_or_warn(cache, splits, names, _is_writable(home))
    return make_bunch(splits, names, "bsds300", as_frame=as_frame)


def fetch_dataset(
    name: str, data_home: str | os.PathLike[str] | None = None, **kwargs: object
) -> Bunch:
    """Load one of the MAF datasets by name: ``"power"``, ``"gas"``, ``"hepmass"``,
    ``"miniboone"`` or ``"bsds300"``.

    ``kwargs`` go to the dataset's ``fetch_*`` function.

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
    fetchers: dict[str, Callable[..., Bunch]] = {
        "power": fetch_power,
        "gas": fetch_gas,
        "hepmass": fetch_hepmass,
        "miniboone": fetch_miniboone,
        "bsds300": fetch_bsds300,
    }
    if not isinstance(name, str) or name.lower() not in fetchers:
        raise ValueError(f"Unknown dataset {name!r}; the datasets are {', '.join(DATASETS)}.")
    return fetchers[name.lower()](data_home, **kwargs)
