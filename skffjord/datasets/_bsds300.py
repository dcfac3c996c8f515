"""BSDS300 patches: reading MAF's HDF5 file, or cutting patches from the original images."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._base import DataIntegrityError

PATCH_SIZE = 8
N_FEATURES = PATCH_SIZE * PATCH_SIZE - 1
FEATURE_NAMES = tuple(
    f"pixel_{row}_{col}" for row in range(PATCH_SIZE) for col in range(PATCH_SIZE)
)[:N_FEATURES]


def read_hdf5(path: Path) -> dict[str, np.ndarray]:
    """Read the ``train``, ``validation`` and ``test`` arrays of MAF's ``BSDS300.hdf5``."""
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading BSDS300.hdf5 needs h5py: pip install h5py (or skffjord[datasets])."
        ) from exc
    try:
        with h5py.File(path, "r") as fh:
            return {key: np.asarray(fh[key], dtype=np.float32) for key in _KEYS}
    except (OSError, KeyError) as exc:
        raise DataIntegrityError(f"{path} is not a readable BSDS300 HDF5 file ({exc}).") from exc


_KEYS = ("train", "validation", "test")


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The ``train/*.jpg`` and ``test/*.jpg`` files under ``folder``, sorted by name."""
    return sorted((folder / "train").glob("*.jpg")), sorted((folder / "test").glob("*.jpg"))


def images_digest(folder: Path) -> str:
    """SHA-256 of the checksum list of the images, in ``sha256sum`` format sorted by path.

    The list has one line ``<sha256>  images/<split>/<id>.jpg`` per image, as ``sha256sum``
    prints it, sorted by path. For the 300 original BSDS300 images the result is the constant
    the fetcher checks against.
    """
    lines = []
    for split in ("test", "train"):
        for path in sorted((folder / split).glob("*.jpg")):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            lines.append(f"{digest}  images/{split}/{path.name}\n")
    return hashlib.sha256("".join(sorted(lines, key=lambda s: s[66:])).encode()).hexdigest()


def _grey_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Building BSDS300 from images needs Pillow: pip install pillow (or skffjord[datasets])."
        ) from exc
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def _counts(n_patches: int, n_images: int) -> np.ndarray:
    counts = np.full(n_images, n_patches // n_images)
    counts[: n_patches % n_images] += 1
    return counts


def _patches(paths: Sequence[Path], n_patches: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n_patches, N_FEATURES), dtype=np.float32)
    start = 0
    for path, count in zip(paths, _counts(n_patches, len(paths)), strict=True):
        grey = _grey_image(path)
        rows = rng.integers(0, grey.shape[0] - PATCH_SIZE + 1, size=count)
        cols = rng.integers(0, grey.shape[1] - PATCH_SIZE + 1, size=count)
        window = np.lib.stride_tricks.sliding_window_view(grey, (PATCH_SIZE, PATCH_SIZE))
        pixels = window[rows, cols].reshape(count, -1).astype(np.float64)
        pixels = (pixels + rng.random(pixels.shape)) / 256.0
        pixels -= pixels.mean(axis=1, keepdims=True)
        out[start : start + count] = pixels[:, :N_FEATURES]
        start += count
    return out


def patches_from_images(
    train_images: Sequence[Path],
    test_images: Sequence[Path],
    *,
    n_train: int = 1_000_000,
    n_validation: int = 50_000,
    n_test: int = 250_000,
    random_state: int = 0,
) -> dict[str, np.ndarray]:
    """Cut BSDS300 patches from the original images, following the MAF recipe.

    1. Decode each JPEG and convert it to 8-bit grey with Pillow's ``"L"`` mode (ITU-R 601-2
       luma, ``L = (299 R + 587 G + 114 B) / 1000``).
    2. From the training images draw ``n_train + n_validation`` patches of 8x8 pixels, from the
       test images ``n_test``, spread evenly over the images (the first images take one more
       when the count does not divide), each at a uniformly random position that fits in the
       image.
    3. Dequantise: ``(value + u) / 256`` with ``u ~ U[0, 1)``, which puts pixels in [0, 1).
    4. Subtract each patch's mean and drop its last (bottom-right) pixel, which is minus the
       sum of the others: 63 values per patch, named ``pixel_<row>_<col>``.
    5. Shuffle the training-image patches; the first ``n_train`` are train, the rest
       validation.

    All randomness comes from ``numpy.random.default_rng(random_state)``. MAF's own patches
    came from an unpublished script with other random draws, so these patches follow the same
    recipe but are not the same patches: scores compare with published BSDS300 figures only
    approximately.
    """
    if not train_images or not test_images:
        raise ValueError("patches_from_images needs at least one train and one test image.")
    rng = np.random.default_rng(random_state)
    train = _patches(train_images, n_train + n_validation, rng)
    train = train[rng.permutation(train.shape[0])]
    test = _patches(test_images, n_test, rng)
    return {"train": train[:n_train], "validation": train[n_train:], "test": test}
