"""A fit's rows read from the user's array, memory map or frame a batch at a time.

A fit on more than :data:`STREAMED_FIT_ROWS` rows holds no copy of them: one pass checks
every row (finite, numeric, inside the bounds) and records each feature's range; the
discrete features and the starting model are found on a sample of
:data:`STREAMED_FIT_ROWS` rows; every mini-batch and validation chunk is then read,
checked, dequantised and mapped when the training loop asks for it. The row order of the
validation split and of every epoch is a :class:`~skffjord._keyed_order.KeyedPermutation`,
computed for each batch, so memory does not grow with the rows (beyond the validation
rows' log-likelihoods and, when some weights are zero, the indices of the others).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_array

from ._bounds import check_inside
from ._discrete import dequantize
from ._distributed import Ranks
from ._flow import FFJORDFlow
from ._keyed_order import KeyedPermutation, keyed_uniforms
from ._start_model import check_row_count, refuse_constant, validation_count
from ._training_rows import Prepared, detached
from ._utils import make_generator, numeric_columns

__all__ = ["READ_BLOCK", "STREAMED_FIT_ROWS", "StreamedRows", "streams"]

#: Rows above which a fit streams its rows; the size of the sample its discrete features
#: and starting model are fitted on.
STREAMED_FIT_ROWS = 65_536
#: Rows read, checked and mapped at a time outside the training loop.
READ_BLOCK = 65_536
#: Key of the fixed sample whose grids decide the discrete features.
_SAMPLE_KEY = 0


def streams(X: Any) -> bool:
    """Whether a fit on ``X`` streams its rows (a 2-D array or frame of more than
    :data:`STREAMED_FIT_ROWS` rows)."""
    return getattr(X, "ndim", 0) == 2 and X.shape[0] > STREAMED_FIT_ROWS


class StreamedRows:
    """The rows of ``X`` read a block or a batch at a time, each checked and converted to
    float64 as :func:`~sklearn.utils.check_array` would.

    The constructor reads every row once (the survey): it raises on a non-finite or
    non-numeric value and records each feature's smallest and largest value over the rows
    of positive weight.

    Parameters
    ----------
    X : ndarray, memory map or DataFrame of shape (n_samples, n_features)
    sample_weight : ndarray of shape (n_samples,) or None
        Checked weights (``None``: all one).
    estimator : str
        Named in error messages.
    """

    def __init__(self, X: Any, sample_weight: np.ndarray | None, estimator: str) -> None:
        self._rows = X.iloc if hasattr(X, "iloc") else X
        self.n_samples, self.n_features = X.shape
        self._estimator = estimator
        self.weight = sample_weight
        # the rows a fit draws from: those of positive weight
        self._ids = None
        if sample_weight is not None and not np.all(sample_weight > 0):
            self._ids = np.flatnonzero(sample_weight > 0)
        self.n_rows = self.n_samples if self._ids is None else len(self._ids)
        self.low = np.full(self.n_features, np.inf)
        self.high = np.full(self.n_features, -np.inf)
        for start in range(0, self.n_samples, READ_BLOCK):
            block = self._checked(self._rows[start : start + READ_BLOCK])
            if sample_weight is not None:
                block = block[sample_weight[start : start + READ_BLOCK] > 0]
            if len(block):
                self.low = np.minimum(self.low, block.min(axis=0))
                self.high = np.maximum(self.high, block.max(axis=0))
        self.order = KeyedPermutation(self.n_rows, _SAMPLE_KEY)
        self.n_val = 0

    def _checked(self, block: Any) -> np.ndarray:
        block = numeric_columns(block, self._estimator)
        return check_array(block, dtype=np.float64, estimator=self._estimator, input_name="X")

    def ids(self, positions: np.ndarray) -> np.ndarray:
        """The row numbers at ``positions`` of the fit's row order."""
        drawn = self.order(positions)
        return drawn if self._ids is None else self._ids[drawn]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows numbered ``rows``, checked, as float64 (read in file order)."""
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.n_features))
        out[order] = self._checked(self._rows[rows[order]])
        return out

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """The weights of the rows numbered ``rows``."""
        return np.ones(len(rows)) if self.weight is None else self.weight[rows]

    # the checks and choices made before the fit
    def discrete_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows and weights whose grids decide the discrete features: a fixed
        pseudo-random sample of :data:`STREAMED_FIT_ROWS` rows of positive weight."""
        rows = self.ids(np.arange(min(self.n_rows, STREAMED_FIT_ROWS)))
        return self.take(rows), self.weights(rows)

    def check(self, resolution: np.ndarray, feature_names: Any, estimator: str) -> None:
        """See :func:`~skffjord._start_model.check_training_rows`."""
        check_row_count(self.n_rows, self.n_samples, estimator)
        flat = np.flatnonzero((self.low == self.high) & (resolution == 0))
        refuse_constant(flat, self.n_features, feature_names)

    def inside(self, bounds: np.ndarray, interval: np.ndarray) -> None:
        """Raise if a row of positive weight lies on or beyond the bounds (rows of zero
        weight are never read)."""
        check_inside(np.stack([self.low, self.high]), bounds, interval)

    def lowest(self) -> np.ndarray:
        """The smallest value of each feature over the rows of positive weight."""
        return self.low

    def update_digest(self, digest: Any) -> None:
        """Feed every row (as checked float64) to the hash ``digest``, block by block."""
        digest.update(repr((self.n_samples, self.n_features)).encode())
        for start in range(0, self.n_samples, READ_BLOCK):
            digest.update(self._checked(self._rows[start : start + READ_BLOCK]).tobytes())

    def check_same_on_ranks(self, ranks: Ranks, params: dict) -> None:
        """Raise unless every process was given the same rows, weights and parameters."""
        weight = np.zeros(0) if self.weight is None else self.weight
        ranks.check_same_inputs(self, weight, params)

    # the fit
    def split(self, fraction: float | None, rng: np.random.Generator) -> int:
        """Fix the fit's row order (from ``rng``): its first ``fraction`` of the rows
        validate (``None``: none), the others train; the training rows' number."""
        self.order = KeyedPermutation(self.n_rows, int(rng.integers(2**63)))
        self.n_val = 0 if fraction is None else validation_count(fraction, self.n_rows)
        return self.n_rows - self.n_val

    def start_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows the starting model is fitted on: the first :data:`STREAMED_FIT_ROWS`
        training rows of the fit's order, a uniform sample; their weights and indices."""
        n = min(self.n_rows - self.n_val, STREAMED_FIT_ROWS)
        rows = np.sort(self.ids(np.arange(self.n_val, self.n_val + n)))
        return self.take(rows), self.weights(rows), np.arange(n)

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
        """``flow`` ready to train on this process's share of the training rows (an equal
        run of the fit's order; the rows left over do not train), a fresh dequantisation
        draw in every batch; the validation rows, when ``validate``, with one fixed draw."""
        parts = detached(flow, device)
        mapping = _RowMap(self, parts, resolution, device)
        n_train = self.n_rows - self.n_val
        share = n_train // ranks.world_size
        if share == 0:
            raise ValueError(
                f"{n_train} training rows cannot be shared among {ranks.world_size} processes."
            )
        start = self.n_val + ranks.rank * share
        train = RowView(mapping, start, start + share, noise)
        val_key = int(noise.integers(2**63))
        val = RowView(mapping, 0, self.n_val, val_key)
        val_weight = np.concatenate(
            [self.weights(self.ids(p)) for p in _blocks(0, self.n_val)] or [np.zeros(0)]
        )
        as_tensor = torch.as_tensor(val_weight, dtype=torch.float32, device=device)
        return Prepared(
            **parts,
            generator=make_generator(probe_seed, device),
            data=(train, WeightView(self, start, start + share, device), val, as_tensor)
            if validate
            else (train, WeightView(self, start, start + share, device), None, None),
            val_weight=val_weight,
            log_det_offset=mapping.mean_log_det(self.n_val, self.n_rows, val_key),
            val_log_det_offset=mapping.mean_log_det(0, self.n_val, val_key) if validate else None,
        )


def _blocks(start: int, stop: int) -> list[np.ndarray]:
    return [np.arange(b, min(b + READ_BLOCK, stop)) for b in range(start, stop, READ_BLOCK)]


class _RowMap:
    """Rows of a :class:`StreamedRows` as the flow sees them: dequantised, through the
    fixed map (float64), standardised, float32 on the flow's device."""

    def __init__(
        self, rows: StreamedRows, parts: dict, resolution: np.ndarray, device: torch.device
    ) -> None:
        self.rows, self.resolution, self.device = rows, resolution, device
        self.marginal = parts["marginal"]
        self.loc = torch.as_tensor(parts["loc"])
        self.scale = torch.as_tensor(parts["scale"])

    def mapped(self, positions: np.ndarray, noise: np.random.Generator | int) -> tuple:
        """The rows at ``positions`` of the fit's order mapped (float64, on the CPU), with
        their log-Jacobians and row numbers; ``noise``: a generator (a fresh draw) or a key
        (each row's fixed draw)."""
        ids = self.rows.ids(positions)
        x = self.rows.take(ids)
        if np.any(self.resolution > 0):
            if isinstance(noise, np.random.Generator):
                x = dequantize(x, self.resolution, noise)
            else:
                x = x + (keyed_uniforms(ids, x.shape[1], noise) - 0.5) * self.resolution
        x = torch.as_tensor(x)
        log_det = -torch.log(self.scale).sum().expand(x.shape[0])
        with torch.no_grad():
            if self.marginal is not None:
                x, log_det_marginal = self.marginal.cpu()(x)
                log_det = log_det + log_det_marginal
        return (x - self.loc) / self.scale, log_det, ids

    def mean_log_det(self, start: int, stop: int, key: int) -> float:
        """The weighted mean log-Jacobian of the map over positions ``[start, stop)``."""
        total = weight = 0.0
        for positions in _blocks(start, stop):
            _, log_det, ids = self.mapped(positions, key)
            w = self.rows.weights(ids)
            total += float(log_det.numpy() @ w)
            weight += float(w.sum())
        return total / weight if weight > 0 else 0.0


class RowView:
    """Positions ``[start, stop)`` of the fit's row order, mapped when indexed: what the
    training loop indexes instead of a tensor of rows (``view[idx]``, ``view[a:b]``)."""

    def __init__(
        self, mapping: _RowMap, start: int, stop: int, noise: np.random.Generator | int
    ) -> None:
        self._map, self._start, self._noise = mapping, start, noise
        self.shape = (stop - start, mapping.rows.n_features)
        self.device = mapping.device
        self.dtype = torch.float32

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> torch.Tensor:
        positions = _positions(index, self.shape[0]) + self._start
        u = self._map.mapped(positions, self._noise)[0]
        return u.to(device=self.device, dtype=torch.float32)

    def spread(self, n_rows: int) -> torch.Tensor:
        """``n_rows`` rows spread evenly over the view (the same at every call)."""
        step = max(1, self.shape[0] // n_rows)
        return self[np.arange(0, self.shape[0], step)[:n_rows]]

    def epoch_order(self, passes: int, shuffle: bool, rng: np.random.Generator) -> EpochOrder:
        """An epoch of ``passes`` passes over the view, each in a fresh order (from
        ``rng``) when ``shuffle``."""
        keys = [int(k) for k in rng.integers(2**63, size=passes)] if shuffle else None
        return EpochOrder(self.shape[0], passes, keys)


class WeightView:
    """The weights of a :class:`RowView`'s positions, as a float32 tensor when indexed."""

    def __init__(self, rows: StreamedRows, start: int, stop: int, device: torch.device) -> None:
        self._rows, self._start, self.device = rows, start, device
        self.shape = (stop - start,)

    def __getitem__(self, index: Any) -> torch.Tensor:
        positions = _positions(index, self.shape[0]) + self._start
        w = self._rows.weights(self._rows.ids(positions))
        return torch.as_tensor(w, dtype=torch.float32, device=self.device)


class EpochOrder:
    """The positions of one epoch, ``passes`` whole passes over ``n`` rows, each pass in
    the order of its own :class:`KeyedPermutation` (or in order without ``keys``): sliced
    like the index tensor of an in-memory epoch."""

    def __init__(self, n: int, passes: int, keys: list[int] | None) -> None:
        self.n, self.passes = n, passes
        self._perms = None if keys is None else [KeyedPermutation(n, k) for k in keys]

    def __len__(self) -> int:
        return self.n * self.passes

    def __getitem__(self, index: slice) -> np.ndarray:
        k = np.arange(*index.indices(len(self)))
        within = k % self.n
        if self._perms is None:
            return within
        out = np.empty_like(within)
        which = k // self.n
        for p in np.unique(which):
            mask = which == p
            out[mask] = self._perms[p](within[mask])
        return out


def _positions(index: Any, n: int) -> np.ndarray:
    """``index`` (a slice, an int array or tensor) as positions in ``[0, n)``."""
    if isinstance(index, slice):
        return np.arange(*index.indices(n))
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    positions = np.asarray(index, dtype=np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise IndexError(f"positions must lie in [0, {n}).")
    return positions
