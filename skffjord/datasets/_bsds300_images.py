"""The 300 original BSDS300 images: where they are kept, downloading them, and verifying them."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ._data_home import ensure_writable
from ._download import RemoteFile, download, extract
from ._exceptions import DataIntegrityError
from ._specs import DatasetSpec

BSDS300_IMAGES = RemoteFile(
    filename="BSDS300-images.tgz",
    url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/BSDS300-images.tgz",
)
"""The original Berkeley Segmentation Dataset images (300 JPEGs)."""


def image_folder(home: Path) -> Path:
    """The folder of the downloaded images in data folder ``home``: ``BSDS300/images``."""
    return home / "BSDS300" / "images"


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The ``train/*.jpg`` and ``test/*.jpg`` files under ``folder``, sorted by name.

    Parameters
    ----------
    folder : pathlib.Path
        A folder laid out as ``BSDS300/images`` in the Berkeley archive.

    Returns
    -------
    train, test : list of pathlib.Path
        The image files of each split.
    """
    return sorted((folder / "train").glob("*.jpg")), sorted((folder / "test").glob("*.jpg"))


def images_present(folder: Path) -> bool:
    """Whether ``folder`` has at least one train and one test image."""
    train, test = list_images(folder)
    return bool(train) and bool(test)


def images_digest(folder: Path) -> str:
    """SHA-256 of the checksum list of the images, in ``sha256sum`` format sorted by path.

    The list has one line ``<sha256>  images/<split>/<id>.jpg`` per image, as ``sha256sum``
    prints it, sorted by path. For the 300 original BSDS300 images the result is the constant
    the fetcher checks against.

    Parameters
    ----------
    folder : pathlib.Path
        A folder holding ``train/*.jpg`` and ``test/*.jpg``.

    Returns
    -------
    digest : str
        The hexadecimal SHA-256.
    """
    lines = []
    for split in ("test", "train"):
        for path in sorted((folder / split).glob("*.jpg")):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            lines.append(f"{digest}  images/{split}/{path.name}\n")
    return hashlib.sha256("".join(sorted(lines, key=lambda s: s[66:])).encode()).hexdigest()


def verify_images(folder: Path, spec: DatasetSpec, source: str) -> None:
    """Check the number of images and their digest against ``spec``.

    Parameters
    ----------
    folder : pathlib.Path
        A folder holding ``train/*.jpg`` and ``test/*.jpg``.
    spec : DatasetSpec
        The BSDS300 spec; a check whose expected value is ``None`` is skipped.
    source : str
        Where the images came from, for the message.

    Raises
    ------
    DataIntegrityError
        When the counts or the digest differ from the spec's.
    """
    train, test = list_images(folder)
    if spec.n_images is not None and (len(train), len(test)) != spec.n_images:
        raise DataIntegrityError(
            f"{source} has {len(train)} train and {len(test)} test images; BSDS300 has "
            f"{spec.n_images[0]} and {spec.n_images[1]}."
        )
    if spec.images_digest is not None:
        digest = images_digest(folder)
        if digest != spec.images_digest:
            raise DataIntegrityError(
                f"The images in {source} are not the original BSDS300 images: the SHA-256 of "
                f"their checksum list is {digest}, expected {spec.images_digest}."
            )


def download_images(home: Path, spec: DatasetSpec, **download_kwargs: object) -> None:
    """Download the Berkeley archive and unpack its JPEGs into ``home/BSDS300/images``.

    The images are unpacked and verified in a temporary folder of ``home`` and only then
    moved into place, replacing any incomplete folder there; the archive is not kept.

    Parameters
    ----------
    home : pathlib.Path
        The data folder.
    spec : DatasetSpec
        The BSDS300 spec the images are verified against.
    **download_kwargs
        Passed to :func:`~skffjord.datasets._download.download`.

    Raises
    ------
    DataIntegrityError
        When the download or the images fail their checks.
    PermissionError
        When ``home`` is not writable.
    """
    ensure_writable(home)
    target = image_folder(home)
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
        verify_images(unpacked / "images", spec, str(BSDS300_IMAGES.url))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            # an incomplete folder left by an interrupted call, or another process that got
            # there first: set it aside, put the verified images in place, then drop it
            stale = Path(workdir) / "stale"
            os.replace(target, stale)
        os.replace(unpacked / "images", target)
