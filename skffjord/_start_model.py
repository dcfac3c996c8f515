"""The model a fit starts from: a classical density behind the flow's fixed map.

Before any training the flow's field is zero, so the model is its base distribution behind
the fixed map: the bounded features opened (:mod:`~skffjord._bounds`), the per-feature map
of ``standardize`` with full-covariance whitening (:mod:`~skffjord._preprocessing`), and a
Gaussian mixture or the standard normal (:mod:`~skffjord._base_distribution`). This module
decides the discrete features, draws the validation split, and builds that start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._base_distribution import fit_mixture_base
from ._bounds import BoundsMap, ChainedMap
from ._defaults import INTEGRATION_TIME, MIXTURE_CV_FOLDS, MIXTURE_SPLIT_ROWS
from ._discrete import constant_features, dequantize, find_discrete_features
from ._flow import FFJORDFlow
from ._marginal import QuantileGaussianizer, quantile_knots
from ._preprocessing import (
    choose_map,
    fit_gaussianizing_map,
    kfold,
    location_scale,
    standardizing_map,
)

__all__ = [
    "StartModel",
    "check_row_count",
    "check_training_rows",
    "discrete_resolution",
    "refuse_constant",
    "start_model",
    "validation_count",
    "validation_split",
]


def discrete_resolution(option: object, X: np.ndarray, sample_weight: np.ndarray) -> np.ndarray:
    """The cell width of each feature (0: continuous) that ``discrete_features`` gives."""
    n_features = X.shape[1]
    if isinstance(option, str):  # 'auto', validated
        return find_discrete_features(X, sample_weight)
    if option is None:
        return np.zeros(n_features)
    resolution = np.asarray(option, dtype=np.float64)
    if resolution.shape != (n_features,) or not np.all(np.isfinite(resolution)):
        raise ValueError(
            "discrete_features must be 'auto', None or an array of shape "
            f"(n_features,) = ({n_features},) of finite cell widths (0: continuous), "
            f"got {option!r}."
        )
    if np.any(resolution < 0):
        raise ValueError("discrete_features must hold non-negative cell widths.")
    return resolution


def check_training_rows(
    X: np.ndarray,
    sample_weight: np.ndarray,
    resolution: np.ndarray,
    feature_names: np.ndarray | None,
    estimator: str,
) -> None:
    """Raise ``ValueError`` unless the rows of positive weight can define a density: at
    least two of them, and no continuous feature (``resolution`` 0) that holds one value in
    all of them (its density would be infinite), named by ``feature_names`` where given."""
    check_row_count(int(np.count_nonzero(sample_weight > 0)), len(sample_weight), estimator)
    refuse_constant(constant_features(X, sample_weight, resolution), X.shape[1], feature_names)


def check_row_count(n_rows: int, n_samples: int, estimator: str) -> None:
    """Raise ``ValueError`` when fewer than two of the ``n_samples`` rows (``n_rows``) have
    a positive weight."""
    if n_rows < 2:
        raise ValueError(
            f"{estimator} needs at least 2 rows with positive weight; got {n_rows} "
            f"(n_samples={n_samples})."
        )


def refuse_constant(flat: np.ndarray, n_features: int, feature_names: np.ndarray | None) -> None:
    """Raise ``ValueError`` naming the continuous features ``flat`` (indices) that hold a
    single value in every row of positive weight."""
    if flat.size == 0:
        return
    names = [str(feature_names[j]) if feature_names is not None else int(j) for j in flat]
    shown = names if len(names) <= 10 else [*names[:10], f"... ({len(names)} features)"]
    identical = " (all the rows are identical)" if flat.size == n_features else ""
    raise ValueError(
        f"Continuous feature(s) {shown} of X hold a single value in every row of positive "
        f"weight{identical}, so they have no density. Drop them (e.g. with "
        "sklearn.feature_selection.VarianceThreshold), or, if they are recorded to a "
        "resolution, declare their cell width in discrete_features so that each is spread "
        "over its cell."
    )


def validation_count(fraction: float, n_samples: int) -> int:
    """The number of validation rows that ``validation_fraction=fraction`` holds out of
    ``n_samples``; raises ``ValueError`` when it would leave no row to train on."""
    n_val = max(1, int(round(fraction * n_samples)))
    if n_samples - n_val < 1:
        raise ValueError(
            f"early_stopping with validation_fraction={fraction} holds out {n_val} of the "
            f"{n_samples} rows and leaves none to train on; lower validation_fraction, give "
            "more rows or set early_stopping=False."
        )
    return n_val


def validation_split(
    sample_weight: np.ndarray, fraction: float | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices; all rows train when ``fraction`` is ``None``."""
    n_samples = len(sample_weight)
    if fraction is None:
        return np.arange(n_samples), np.arange(0)
    n_val = validation_count(fraction, n_samples)
    perm = rng.permutation(n_samples)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    for part, idx in (("validation", val_idx), ("training", train_idx)):
        if not sample_weight[idx].sum() > 0:
            raise ValueError(
                f"early_stopping drew a {part} split whose sample weights are all "
                "zero; raise validation_fraction, use fewer zero weights or set "
                "early_stopping=False."
            )
    return train_idx, val_idx


@dataclass
class StartModel:
    """A flow with its fixed map and base, and how they were chosen: fresh (field zero)
    from :func:`start_model`, or the fitted model a warm refit continues."""

    flow: FFJORDFlow
    standardize: str
    map_scores: dict | None
    mixture_scores: dict | None


def _fixed_map(kind: str, X: np.ndarray, w: np.ndarray) -> nn.Module | None:
    if kind in ("affine", "sinh_arcsinh"):
        return fit_gaussianizing_map(X, w, marginal=kind == "sinh_arcsinh")
    if kind == "quantile":  # knots in standard units, where float64 holds them exactly
        X, w = X[w > 0], w[w > 0]
        loc, scale = location_scale(X, w)
        grid, knots = quantile_knots((X - loc) / scale, w)
        quantile = QuantileGaussianizer(torch.as_tensor(grid), torch.as_tensor(knots))
        return ChainedMap(standardizing_map(loc, scale), quantile)
    return None  # 'none'


def _mixture_base(
    flow: FFJORDFlow,
    X: np.ndarray,
    w: np.ndarray,
    n_components: int | str,
    validation_fraction: float,
    rng: np.random.Generator,
    seed: int,
) -> tuple[nn.Module | None, dict | None]:
    """The base (``n_components``) over the rows ``X`` through ``flow``'s map: ``None``
    (standard normal) or a Gaussian mixture whose component count has the best
    cross-validated log-likelihood (``MIXTURE_CV_FOLDS`` folds, or one split of
    ``validation_fraction`` from ``MIXTURE_SPLIT_ROWS`` rows on); with each tried count's
    held-out score."""
    if n_components == 1:
        return None, None
    rows = np.flatnonzero(w > 0)
    if len(rows) < 2:
        return None, None
    with torch.no_grad():
        U = flow.standardize(torch.as_tensor(X[rows])).numpy()
    perm = rng.permutation(len(rows))
    if len(rows) >= MIXTURE_SPLIT_ROWS:
        n_held = max(1, int(round(validation_fraction * len(rows))))
        folds = [(perm[n_held:], perm[:n_held])]
    else:
        folds = kfold(perm, MIXTURE_CV_FOLDS)
    counts = None if n_components == "auto" else (int(n_components),)
    return fit_mixture_base(U, w[rows], folds, seed, components=counts)


def start_model(
    X: np.ndarray,
    w: np.ndarray,
    train_idx: np.ndarray,
    *,
    resolution: np.ndarray,
    interval: np.ndarray,
    structure: dict,
    n_components: int | str,
    validation_fraction: float,
    rng: np.random.Generator,
    init_seed: int,
    noise_seed: int,
) -> StartModel:
    """The starting model fitted on the rows ``train_idx`` of ``X`` (weights ``w``).

    One dequantised draw of the discrete features (``resolution``, seeded by ``noise_seed``)
    is opened at the bounds
    (``interval``, see :func:`~skffjord._bounds.support`); the map of
    ``structure['standardize']`` ('auto': the cross-validated choice) is fitted on it, then
    the base mixture on the rows through that map.
    """
    X_drawn = dequantize(X, resolution, np.random.default_rng(noise_seed))
    opener = BoundsMap(interval) if np.isfinite(interval).any() else None
    X_open = X_drawn
    if opener is not None:
        with torch.no_grad():
            X_open = opener(torch.tensor(X_drawn))[0].numpy()
    X_open, X_drawn, w = X_open[train_idx], X_drawn[train_idx], w[train_idx]
    kind, map_scores = structure["standardize"], None
    if kind == "auto":
        kind, map_scores = choose_map(X_open, w, rng)
    fixed = _fixed_map(kind, X_open, w)
    if opener is not None:
        fixed = ChainedMap(opener, fixed)
    n_features = X.shape[1]
    flow = FFJORDFlow(
        n_features,
        structure["hidden_layer_sizes"],
        structure["activation"],
        structure["n_blocks"],
        INTEGRATION_TIME,
        torch.zeros(n_features, dtype=torch.float64),
        torch.ones(n_features, dtype=torch.float64),
        generator=torch.Generator().manual_seed(init_seed),
        marginal=fixed,
    )
    flow.base, mixture_scores = _mixture_base(
        flow, X_drawn, w, n_components, validation_fraction, rng, init_seed
    )
    return StartModel(flow, kind, map_scores, mixture_scores)
