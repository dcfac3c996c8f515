"""Running a fitted flow over many rows: in chunks, so that memory stays bounded."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._flow import EvalConfig

__all__ = ["chunk_rows", "in_chunks"]

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
