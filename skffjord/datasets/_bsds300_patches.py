"""BSDS300 patches: their layout, and the MAF recipe that cuts them from grey images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

PATCH_SIZE = 8
"""Side of a square patch, in pixels."""

N_FEATURES = PATCH_SIZE * PATCH_SIZE - 1
"""Values kept per patch: every pixel but the last, which the others determine."""

FEATURE_NAMES = tuple(
    f"pixel_{row}_{col}" for row in range(PATCH_SIZE) for col in range(PATCH_SIZE)
)[:N_FEATURES]
"""Column names, ``pixel_<row>_<col>``, in row-major order."""


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
    recipe but are not the same patches: scores compare with published BSDS300 results only
    approximately.

    Parameters
    ----------
    train_images, test_images : sequence of pathlib.Path
        The image files of each split; neither may be empty.
    n_train, n_validation, n_test : int
        How many patches each split gets.
    random_state : int, default=0
        Seed of the patch positions, the dequantisation noise and the shuffle.

    Returns
    -------
    splits : dict of str to ndarray
        ``train``, ``validation`` and ``test``, float32 arrays of 63 columns.
    """
    if not train_images or not test_images:
        raise ValueError("patches_from_images needs at least one train and one test image.")
    rng = np.random.default_rng(random_state)
    train = _patches(train_images, n_train + n_validation, rng)
    train = train[rng.permutation(train.shape[0])]
    test = _patches(test_images, n_test, rng)
    return {"train": train[:n_train], "validation": train[n_train:], "test": test}
