"""The rows a fit trains and validates on, held in memory.

:class:`InMemoryRows` and :class:`~skffjord._streamed_rows.StreamedRows` (a large array or
file, read batch by batch) give :func:`~skffjord._fitting.fit_flow` the same things: the
checks of the training rows, the validation split, the rows the starting model is fitted
on, and a :class:`Prepared` flow with its training and validation data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._bounds import fit_rows
from ._discrete import dequantize
from ._distributed import Ranks
from ._flow import FFJORDFlow
from ._start_model import check_training_rows, discrete_resolution, validation_split
from ._utils import float64_tensor, make_generator

__all__ = ["InMemoryRows", "Prepared", "detached"]


@dataclass
class Prepared:
    """A flow ready to train, float32 on its device with its fixed map (float64) taken out,
    and the rows as the flow sees them.

    ``data`` holds the training rows and weights (this process's share), then the
    validation rows and weights (or ``None``); ``val_weight`` the validation weights as an
    array; the offsets the mean log-Jacobians of the map over the training and the
    validation rows; ``redraw`` (or ``None``) gives the training rows a fresh dequantisation
    draw of their discrete columns.
    """

    flow: FFJORDFlow
    marginal: nn.Module | None
    base: nn.Module | None
    loc: np.ndarray
    scale: np.ndarray
    generator: torch.Generator
    data: tuple
    val_weight: np.ndarray
    log_det_offset: float
    val_log_det_offset: float | None
    redraw: Callable[[], torch.Tensor] | None = None

    def restored(self, device: torch.device) -> FFJORDFlow:
        """The trained flow in evaluation mode with its fixed map and base back in place
        (the blocks stay float32, the precision they were trained and are scored in; the map
        around them is float64)."""
        flow = self.flow
        flow.eval()
        flow.loc = torch.as_tensor(self.loc, device=flow.loc.device)
        flow.scale = torch.as_tensor(self.scale, device=flow.scale.device)
        flow.marginal = None if self.marginal is None else self.marginal.to(device=device)
        flow.base = None if self.base is None else self.base.to(device=device)
        return flow


def detached(flow: FFJORDFlow, device: torch.device) -> dict[str, Any]:
    """Take the fixed map (not trained, float64) out of ``flow`` and move the rest to
    float32 on ``device``: the parts of a :class:`Prepared` that do not depend on the rows."""
    loc, scale = flow.loc.cpu().numpy(), flow.scale.cpu().numpy()
    marginal, flow.marginal = flow.marginal, None
    base = copy.deepcopy(flow.base)  # float64, restored after training
    trained = flow.to(device=device, dtype=torch.float32)
    return dict(flow=trained, marginal=marginal, base=base, loc=loc, scale=scale)


def _as_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32, device=device)


class InMemoryRows:
    """Validated rows ``X`` (float64) and their weights, mapped all at once.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    sample_weight : ndarray of shape (n_samples,)
    """

    def __init__(self, X: np.ndarray, sample_weight: np.ndarray) -> None:
        self.X, self.sample_weight = X, sample_weight
        self.n_features = X.shape[1]
        self.train_idx = self.val_idx = np.arange(0)

    def resolution(self, option: object) -> np.ndarray:
        """The cell width of each feature that ``discrete_features=option`` gives (see
        :func:`~skffjord._start_model.discrete_resolution`), from every row."""
        return discrete_resolution(option, self.X, self.sample_weight)

    def check(self, resolution: np.ndarray, feature_names: Any, estimator: str) -> None:
        """See :func:`~skffjord._start_model.check_training_rows`."""
        check_training_rows(self.X, self.sample_weight, resolution, feature_names, estimator)

    def inside(self, bounds: np.ndarray, interval: np.ndarray) -> None:
        """See :func:`~skffjord._bounds.fit_rows`."""
        self.X = fit_rows(self.X, self.sample_weight, bounds, interval)

    def lowest(self) -> np.ndarray:
        """The smallest value of each feature over the rows of positive weight."""
        return self.X[self.sample_weight > 0].min(axis=0)

    def check_same_on_ranks(self, ranks: Ranks, params: dict) -> None:
        """Raise unless every process was given the same rows, weights and parameters."""
        ranks.check_same_inputs(self.X, self.sample_weight, params)

    def split(self, fraction: float | None, rng: np.random.Generator) -> int:
        """Draw the validation rows (``fraction``; ``None``: none); the training rows'
        number."""
        self.train_idx, self.val_idx = validation_split(self.sample_weight, fraction, rng)
        return len(self.train_idx)

    def start_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows, weights and training rows' indices the starting model is fitted on."""
        return self.X, self.sample_weight, self.train_idx

    def _mean_log_det(self, log_det: np.ndarray, idx: np.ndarray) -> float:
        if not len(idx):
            return 0.0
        return float(np.average(log_det[idx], weights=self.sample_weight[idx]))

    def prepared(
        self,
        flow: FFJORDFlow,
        device: torch.device,
        *,
        probe_seed: int,
        resolution: np.ndarray,
        noise: np.random.Generator,
        ranks: Ranks,
        data_seed: int,
        validate: bool,
    ) -> Prepared:
        """``flow`` ready to train on this process's share of the training rows (one
        dequantised draw of their discrete columns, redrawn every epoch), with the
        validation rows when ``validate``."""
        X_drawn = dequantize(self.X, resolution, noise)
        with torch.no_grad():
            u, log_det = flow.standardize_with_log_det(float64_tensor(X_drawn, flow.loc.device))
        parts = detached(flow, device)
        rows, log_det = u.cpu().numpy(), log_det.cpu().numpy()
        own = ranks.shard(self.train_idx, self.sample_weight, data_seed)
        val = self.val_idx if validate else None
        w = self.sample_weight
        data = (
            _as_tensor(rows[own], device),
            _as_tensor(w[own], device),
            None if val is None else _as_tensor(rows[val], device),
            None if val is None else _as_tensor(w[val], device),
        )
        return Prepared(
            **parts,
            generator=make_generator(probe_seed, device),
            data=data,
            val_weight=w[self.val_idx],
            log_det_offset=self._mean_log_det(log_det, self.train_idx),
            val_log_det_offset=self._mean_log_det(log_det, self.val_idx) if validate else None,
            redraw=self._redraw(own, resolution, noise, parts, device),
        )

    def _redraw(
        self,
        idx: np.ndarray,
        resolution: np.ndarray,
        noise: np.random.Generator,
        parts: dict,
        device: torch.device,
    ) -> Callable[[], torch.Tensor] | None:
        """A function giving the rows ``idx`` freshly dequantised and mapped, as the flow
        sees them (float32 on its device); ``None`` without discrete columns."""
        if not np.any(resolution > 0):
            return None
        X = self.X[idx]
        marginal = parts["marginal"]
        loc, scale = torch.as_tensor(parts["loc"]), torch.as_tensor(parts["scale"])

        def draw() -> torch.Tensor:
            x = torch.as_tensor(dequantize(X, resolution, noise))
            with torch.no_grad():
                u = x if marginal is None else marginal.cpu()(x)[0]
            return ((u - loc) / scale).to(device=device, dtype=torch.float32)

        return draw
