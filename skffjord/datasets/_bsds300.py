"""``fetch_bsds300``: BSDS300 patches from MAF's archive, or cut from the original images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._bsds300_images import (
    download_images,
    image_folder,
    images_present,
    list_images,
    verify_images,
)
from ._bsds300_patches import FEATURE_NAMES, patches_from_images
from ._data_home import get_data_home, is_writable, missing_error
from ._exceptions import DataIntegrityError, add_hint
from ._maf_archive import fetch_from_maf_archive
from ._specs import check_fetch_args, check_splits
from ._splits import cache_path, load_splits, make_bunch, save_or_warn


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
    :func:`skffjord.datasets._bsds300_patches.patches_from_images`); this needs Pillow. The
    images are read from ``images_dir`` (which may be read-only), else from
    ``data_home/BSDS300/images/{train,test}/*.jpg``, downloading them from Berkeley into that
    folder when they are missing; their checksums are verified either way.
    The patches then follow MAF's recipe but are not MAF's patches, so scores compare with
    published BSDS300 results only approximately.

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
        return fetch_from_maf_archive(
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
    spec = check_fetch_args("bsds300", download_if_missing, as_frame, n_retries, delay)
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
        if not images_present(folder):
            raise OSError(f"images_dir {folder} has no train/*.jpg and test/*.jpg images.")
    else:
        folder = image_folder(home)
    if not images_present(folder):
        if not download_if_missing:
            raise missing_error("bsds300", home)
        download_images(home, spec, n_retries=n_retries, delay=delay, verbose=verbose)
    try:
        verify_images(folder, spec, str(folder))
    except DataIntegrityError as exc:
        if images_dir is None:
            add_hint(exc, f"Delete {folder} to download the images again.")
        raise
    train, test = list_images(folder)
    n_train, n_validation, n_test = spec.split_sizes
    splits = patches_from_images(
        train,
        test,
        n_train=n_train,
        n_validation=n_validation,
        n_test=n_test,
        random_state=int(random_state),
    )
    check_splits(spec, splits, str(folder))
    names = list(FEATURE_NAMES)
    save_or_warn(cache, splits, names, is_writable(home))
    return make_bunch(splits, names, "bsds300", as_frame=as_frame)
