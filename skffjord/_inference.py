"""Running a fitted flow over many rows: scores, samples and paths, in chunks so that
memory stays bounded, with rows outside the declared bounds handled apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._bounds import outside_support
from ._flow import EvalConfig, FFJORDFlow
from ._preprocessing import snap_to_grid
from ._utils import float64_tensor

__all__ = ["FittedFlow", "chunk_rows", "in_chunks"]

#: Work space of one chunk of rows, in bytes.
CHUNK_BYTES = 256 * 2**20


def chunk_rows(n_features: int, hidden: tuple[int, ...]) -> int:
    """Rows per chunk: about :data:`CHUNK_BYTES` of float64 work space per chunk."""
    d = n_features
    if len(hidden) <= 2:  # closed-form trace: solver stages plus a few activations
        row_bytes = 8 * (16 * (d + 1) + 8 * sum(hidden))
    else:  # d batched vector-Jacobian products through every layer
        row_bytes = 8 * (d + 1) * (d + sum(hidden)) * 16
    return int(max(64, min(8192, CHUNK_BYTES // max(row_bytes, 1))))


def in_chunks(
    method: Callable[[torch.Tensor, EvalConfig], torch.Tensor],
    A: np.ndarray,
    config: EvalConfig,
    chunk: int,
    device: torch.device,
) -> np.ndarray:
    """``method`` (a flow method taking float64 rows and a solve) over the rows of ``A``,
    ``chunk`` rows at a time, on ``device``."""
    A = np.asarray(A, dtype=np.float64)
    parts = []
    for start in range(0, A.shape[0], chunk):
        rows = torch.tensor(A[start : start + chunk], dtype=torch.float64, device=device)
        parts.append(method(rows, config).cpu().numpy())
    return np.concatenate(parts) if parts else np.empty((0, *A.shape[1:-1]))


@dataclass(frozen=True)
class FittedFlow:
    """A fitted flow with what inference needs around it.

    Parameters
    ----------
    flow : FFJORDFlow
        The fitted flow.
    config : EvalConfig
        The evaluation solve.
    hidden : tuple of int
        Hidden widths of the field (they size the chunks).
    support : ndarray of shape (n_features, 2)
        Where the density is positive (the declared bounds, widened by half a cell for a
        discrete feature).
    bounds : ndarray of shape (n_features, 2)
        The declared bounds (samples are kept within them).
    resolution : ndarray of shape (n_features,)
        Cell width of each discrete feature, 0 for continuous ones.
    origin : ndarray of shape (n_features,)
        A training value on each feature's grid (inside the support).
    """

    flow: FFJORDFlow
    config: EvalConfig
    hidden: tuple[int, ...]
    support: np.ndarray
    bounds: np.ndarray
    resolution: np.ndarray
    origin: np.ndarray

    @property
    def device(self) -> torch.device:
        return next(iter(self.flow.buffers())).device

    def _chunked(self, method: Callable, A: np.ndarray) -> np.ndarray:
        rows = chunk_rows(self.flow.n_features, self.hidden)
        return in_chunks(method, A, self.config, rows, self.device)

    def to_data(self, z: np.ndarray) -> np.ndarray:
        """Base-space rows mapped to the user's units."""
        return self._chunked(self.flow.to_data, z)

    def to_latent(self, X: np.ndarray) -> np.ndarray:
        """Rows in the user's units mapped to the base space."""
        return self._chunked(self.flow.to_latent, X)

    def log_density(self, X: np.ndarray) -> np.ndarray:
        """``log p(x)`` per row; ``-inf`` outside the support."""
        outside = outside_support(X, self.support)
        if outside.any():
            X = np.where(outside[:, None], self.origin, X)  # a row inside, scored apart
        scores = self._chunked(self.flow.log_prob, X)
        scores[outside] = -np.inf
        return scores

    def sample(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """``n`` draws: base noise integrated backwards, discrete features rounded to their
        grid, every feature within its bounds."""
        base = self.flow.base
        if base is None:
            z = rng.standard_normal((n, self.flow.n_features))
        else:
            z = base.sample_numpy(n, rng)
        X = snap_to_grid(self.to_data(z), self.resolution, self.origin)
        return np.clip(X, self.bounds[:, 0], self.bounds[:, 1])

    def path(self, X: np.ndarray, n_times: int) -> np.ndarray:
        """The states of each row at ``n_times`` times per block, in the user's units."""
        if outside_support(X, self.support).any():
            raise ValueError("X has rows outside the bounds the model was fitted with.")
        with torch.no_grad():
            path = self.flow.path(float64_tensor(X, self.device), n_times, self.config)
        return path.cpu().numpy()
