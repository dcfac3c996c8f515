"""Running a fitted flow over many rows: scores, samples and paths, in chunks so that
memory stays bounded, with rows outside the declared bounds handled apart and rows the
solver cannot integrate found and set aside."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._bounds import outside_support
from ._discrete import snap_to_grid
from ._flow import EvalConfig, FFJORDFlow
from ._ode import SolverError, SolverWarning

__all__ = ["FittedFlow", "chunk_rows", "describe_rows", "solve_rows"]

#: Work space of one chunk of rows, in bytes.
CHUNK_BYTES = 256 * 2**20
#: Rows of a user's array or frame validated and scored at a time: memory for scoring does
#: not grow with its rows beyond the scores themselves.
SCORED_BLOCK = 65_536
#: Most row indices a message lists.
LISTED_ROWS = 10


def chunk_rows(n_features: int, hidden: tuple[int, ...]) -> int:
    """Rows per chunk: about :data:`CHUNK_BYTES` of float64 work space per chunk."""
    d = n_features
    if len(hidden) <= 2:  # closed-form trace: solver stages plus a few activations
        row_bytes = 8 * (16 * (d + 1) + 8 * sum(hidden))
    else:  # d batched vector-Jacobian products through every layer
        row_bytes = 8 * (d + 1) * (d + sum(hidden)) * 16
    return int(max(64, min(8192, CHUNK_BYTES // max(row_bytes, 1))))


def describe_rows(indices: np.ndarray) -> str:
    """``'row 3'``, ``'rows 0, 4 and 7'`` or the first :data:`LISTED_ROWS` of many rows and
    their count."""
    listed = [str(int(i)) for i in indices[:LISTED_ROWS]]
    if len(indices) == 1:
        return f"row {listed[0]}"
    if len(indices) > LISTED_ROWS:
        return f"rows {', '.join(listed)}, ... ({len(indices)} rows)"
    return f"rows {', '.join(listed[:-1])} and {listed[-1]}"


def _hinted_rows(err: SolverError, n_rows: int) -> np.ndarray | None:
    """The failed rows that ``err`` names, when it names some and all are in the batch."""
    rows = getattr(err, "rows", None)
    if not rows:
        return None
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if rows[0] < 0 or rows[-1] >= n_rows:
        return None
    return rows


def solve_rows(
    method: Callable[[torch.Tensor, EvalConfig], torch.Tensor],
    A: np.ndarray,
    config: EvalConfig,
    chunk: int,
    device: torch.device,
    shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``method`` (a flow method taking float64 rows and a solve, returning one result of
    shape ``shape`` per row) over the rows of ``A``, ``chunk`` rows at a time, on
    ``device``, with the rows it cannot solve set aside.

    A chunk is solved in one call. Where that raises :class:`SolverError`, the rows that
    failed (those the error names, else found by bisection) are set aside and the others
    solved again, so every other row's result is the one it gets among rows that solve.

    Returns
    -------
    values : ndarray of shape (n_rows, *shape)
        NaN on the rows that failed.
    failed : ndarray of shape (n_rows,), dtype bool
    reason : str or None
        The first failure's message.
    """
    A = np.asarray(A, dtype=np.float64)
    values = np.full((A.shape[0], *shape), np.nan)
    failed = np.zeros(A.shape[0], dtype=bool)
    reason = None
    pending = [np.arange(start, min(start + chunk, len(A))) for start in range(0, len(A), chunk)]
    pending.reverse()
    while pending:
        rows = pending.pop()
        block = A[rows[0] : rows[-1] + 1] if rows[-1] - rows[0] + 1 == len(rows) else A[rows]
        try:
            out = method(torch.tensor(block, dtype=torch.float64, device=device), config)
        except SolverError as err:
            reason = reason or str(err)
            hinted = _hinted_rows(err, len(rows))
            if hinted is not None:
                failed[rows[hinted]] = True
                rest = np.delete(rows, hinted)
                parts = [rest] if rest.size else []
            elif len(rows) == 1:
                failed[rows] = True
                parts = []
            else:
                half = len(rows) // 2
                parts = [rows[half:], rows[:half]]
            pending.extend(parts)
            continue
        values[rows] = out.cpu().numpy()
    return values, failed, reason


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

    def _solved(
        self, method: Callable, A: np.ndarray, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, str | None]:
        rows = chunk_rows(self.flow.n_features, self.hidden)
        return solve_rows(method, A, self.config, rows, self.device, shape)

    def _all_solved(
        self, method: Callable, A: np.ndarray, what: str, first_row: int = 0
    ) -> np.ndarray:
        """``method`` over the rows of ``A``; :class:`SolverError` naming the rows (of
        ``what``, numbered from ``first_row``) whose solve fails or whose result is not
        finite."""
        values, failed, reason = self._solved(method, A, (self.flow.n_features,))
        failed |= ~np.isfinite(values).all(axis=1)
        if failed.any():
            rows = describe_rows(first_row + np.flatnonzero(failed))
            raise SolverError(
                f"the ODE solver failed on {rows} of {what}: "
                f"{reason or 'the result is not finite (NaN or inf)'}"
            )
        return values

    def to_data(self, z: np.ndarray, first_row: int = 0) -> np.ndarray:
        """Base-space rows mapped to the user's units."""
        return self._all_solved(self.flow.to_data, z, "the base draws", first_row)

    def to_latent(self, X: np.ndarray) -> np.ndarray:
        """Rows in the user's units mapped to the base space."""
        return self._all_solved(self.flow.to_latent, X, "X")

    def log_density(self, X: np.ndarray, first_row: int = 0) -> np.ndarray:
        """``log p(x)`` per row; ``-inf`` outside the support, and ``-inf`` with a
        :class:`SolverWarning` naming them for rows whose solve fails or whose score is
        NaN or ``+inf`` (numbered from ``first_row``: ``X`` may be a block of a larger
        array)."""
        outside = outside_support(X, self.support)
        if outside.any():
            X = np.where(outside[:, None], self.origin, X)  # a row inside, scored apart
        scores, failed, reason = self._solved(self.flow.log_prob, X, ())
        failed |= np.isnan(scores) | np.isposinf(scores)
        failed &= ~outside
        scores[outside | failed] = -np.inf
        if failed.any():
            warnings.warn(
                f"The ODE solver could not score "
                f"{describe_rows(first_row + np.flatnonzero(failed))} of "
                f"X ({reason or 'the log-density is not finite'}); they score -inf. Check "
                "them for extreme values, or loosen eval_solver (atol, rtol, max_num_steps).",
                SolverWarning,
                stacklevel=3,
            )
        return scores

    def log_density_in_blocks(self, X: Any, validated: Callable[[Any], np.ndarray]) -> np.ndarray:
        """:meth:`log_density` of the user's ``X``, checked and converted by ``validated``;
        a 2-D array or frame of more than :data:`SCORED_BLOCK` rows (a memory-mapped
        file, say) block by block, so that no float64 copy of the whole is made."""
        n_rows = X.shape[0] if getattr(X, "ndim", 0) == 2 else 0
        if n_rows <= SCORED_BLOCK:
            return self.log_density(validated(X))
        rows = X.iloc if hasattr(X, "iloc") else X
        blocks = range(0, n_rows, SCORED_BLOCK)
        return np.concatenate(
            [self.log_density(validated(rows[i : i + SCORED_BLOCK]), i) for i in blocks]
        )

    def sample(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """``n`` draws: base noise integrated backwards, discrete features rounded to their
        grid, every feature within its bounds; :data:`SCORED_BLOCK` draws at a time, so
        that memory beyond the returned array does not grow with ``n``."""
        base = self.flow.base
        out = np.empty((n, self.flow.n_features))
        for start in range(0, n, SCORED_BLOCK):
            m = min(SCORED_BLOCK, n - start)
            if base is None:
                z = rng.standard_normal((m, self.flow.n_features))
            else:
                z = base.sample_numpy(m, rng)
            X = snap_to_grid(self.to_data(z, start), self.resolution, self.origin)
            out[start : start + m] = np.clip(X, self.bounds[:, 0], self.bounds[:, 1])
        return out

    def path(self, X: np.ndarray, n_times: int) -> np.ndarray:
        """The states of each row at ``n_times`` times per block, in the user's units."""
        if outside_support(X, self.support).any():
            raise ValueError("X has rows outside the bounds the model was fitted with.")
        n_states = 1 + len(self.flow.blocks) * (n_times - 1)

        def rows_first(rows: torch.Tensor, config: EvalConfig) -> torch.Tensor:
            with torch.no_grad():
                return self.flow.path(rows, n_times, config).transpose(0, 1)

        values, failed, reason = self._solved(rows_first, X, (n_states, self.flow.n_features))
        failed |= ~np.isfinite(values).all(axis=(1, 2))
        if failed.any():
            raise SolverError(
                f"the ODE solver failed on {describe_rows(np.flatnonzero(failed))} of X: "
                f"{reason or 'the path is not finite (NaN or inf)'}"
            )
        return values.transpose(1, 0, 2)
