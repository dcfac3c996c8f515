"""The fitted state of an estimator: which attributes it is, their values after a fit, and
its restoration when a fit fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ._fitting import FitOutcome
from ._settings import Settings
from ._utils import to_cpu

__all__ = ["FITTED", "fitted_attributes", "restored_on_failure"]

#: Fitted state, restored as a whole when a fit raises.
FITTED = (
    "flow_",
    "n_features_in_",
    "feature_names_in_",
    "n_iter_",
    "history_",
    "loss_curve_",
    "validation_scores_",
    "best_validation_score_",
    "best_loss_",
    "device_",
    "stop_reason_",
    "standardize_",
    "standardize_scores_",
    "discrete_features_",
    "bounds_",
    "n_components_",
    "n_components_scores_",
    "train_dtype_",
    "world_size_",
    "_support",
    "_grid_origin",
    "_optimizer_state",
    "_structure",
)


@contextmanager
def restored_on_failure(estimator: Any, keys: tuple[str, ...] = FITTED) -> Iterator[None]:
    """Run a fit of ``estimator``; if it raises (Ctrl-C included), put back the attributes
    ``keys`` as they were before, removing those it did not have."""
    saved = {k: estimator.__dict__[k] for k in keys if k in estimator.__dict__}
    try:
        yield
    except BaseException:
        for k in keys:
            estimator.__dict__.pop(k, None)
        estimator.__dict__.update(saved)
        raise


def fitted_attributes(
    outcome: FitOutcome,
    settings: Settings,
    *,
    device: torch.device,
    resolution: np.ndarray,
    bounds: np.ndarray,
    interval: np.ndarray,
    grid_origin: np.ndarray,
    early_stopping: bool,
    keep_optimizer_state: bool,
) -> dict[str, Any]:
    """The fitted attributes that ``outcome`` (a fit with ``settings``) gives an estimator;
    the caller sets them all at once, after the fit has succeeded."""
    result, model = outcome.result, outcome.model
    flow = model.flow
    history = result.history
    return {
        "flow_": flow,
        "device_": str(device),
        "train_dtype_": settings.train_dtype,
        "world_size_": outcome.world_size,
        "history_": history,
        "n_iter_": result.n_iter,
        "loss_curve_": [h["train_loss"] for h in history],
        "validation_scores_": [h["valid_score"] for h in history] if early_stopping else None,
        "best_validation_score_": result.best_validation_score,
        "best_loss_": result.best_loss,
        "stop_reason_": result.stop_reason,
        "_structure": settings.structure,
        "standardize_": model.standardize,
        "standardize_scores_": model.map_scores,
        "discrete_features_": resolution,
        "bounds_": bounds,
        "_support": interval,
        "_grid_origin": grid_origin,  # a value on each feature's grid, to round samples to
        "n_components_": 1 if flow.base is None else int(flow.base.means.shape[0]),
        "n_components_scores_": model.mixture_scores,
        "_optimizer_state": to_cpu(result.optimizer_state) if keep_optimizer_state else None,
    }
