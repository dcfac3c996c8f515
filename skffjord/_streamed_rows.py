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

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_array

from ._bounds import check_inside
from ._discrete import GRID_TOLERANCE, dequantize
from ._distributed import Ranks
from ._flow import FFJORDFlow
from ._keyed_order import KeyedPermutation, keyed_uniforms
from ._sample_weight import checked_sample_weight
from ._start_model import (
    check_row_count,
    discrete_resolution,
    refuse_constant,
    validation_count,
)
from ._training_rows import InMemoryRows, Prepared, detached
from ._utils import make_generator, numeric_columns

__all__ = ["READ_BLOCK", "STREAMED_FIT_ROWS", "StreamedRows", "streams", "training_rows"]

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


def training_rows(
    X: Any, sample_weight: Any, estimator: str, streamed: bool
) -> InMemoryRows | StreamedRows:
    """The validated ``X`` (float64 unless ``streamed``, see :func:`streams`) and the
    user's ``sample_weight`` as a fit's rows."""
    if not streamed:
        return InMemoryRows(X, checked_sample_weight(sample_weight, X))
    weight = None if sample_weight is None else checked_sample_weight(sample_weight, X)
    return StreamedRows(X, weight, estimator)


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
        # each feature's extreme rows (of positive weight), which the starting model sees
        self._extremes = np.zeros((2, self.n_features), dtype=np.int64)
        for start, block in self._blocks():
            rows = np.arange(start, start + len(block))
            if sample_weight is not None:
                kept = sample_weight[start : start + READ_BLOCK] > 0
                block, rows = block[kept], rows[kept]
            if not len(block):
                continue
            for side, (pick, better) in enumerate(((np.argmin, np.less), (np.argmax, np.greater))):
                at = pick(block, axis=0)
                values = block[at, np.arange(self.n_features)]
                bound = self.low if side == 0 else self.high
                new = better(values, bound)
                bound[new] = values[new]
                self._extremes[side, new] = rows[at[new]]
        self.order = KeyedPermutation(self.n_rows, _SAMPLE_KEY)
        self.n_val = 0

    def _blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Every row, checked, :data:`READ_BLOCK` at a time, with the first one's number."""
        for start in range(0, self.n_samples, READ_BLOCK):
            yield start, self._checked(self._rows[start : start + READ_BLOCK])

    def _checked(self, block: Any) -> np.ndarray:
        block = numeric_columns(block, self._estimator)
        return check_array(block, dtype=np.float64, estimator=self._estimator, input_name="X")

    def ids(self, positions: np.ndarray) -> np.ndarray:
        """The row numbers at ``positions`` of the fit's row order."""
        drawn = self.order(positions)
        return drawn if self._ids is None else self._ids[drawn]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows numbered ``rows`` as float64, read in file order (every row was checked
        by the survey, so they are only converted)."""
        order = np.argsort(rows, kind="stable")
        block = numeric_columns(self._rows[rows[order]], self._estimator)
        out = np.empty((len(rows), self.n_features))
        out[order] = block.to_numpy(np.float64) if hasattr(block, "iloc") else block
        return out

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """The weights of the rows numbered ``rows``."""
        return np.ones(len(rows)) if self.weight is None else self.weight[rows]

    # the checks and choices made before the fit
    def resolution(self, option: object) -> np.ndarray:
        """The cell width of each feature that ``discrete_features=option`` gives (see
        :func:`~skffjord._start_model.discrete_resolution`). With ``'auto'`` the grids are
        found on a fixed pseudo-random sample of :data:`STREAMED_FIT_ROWS` rows of positive
        weight, then checked on every row: a feature with a row off its grid (counted from
        its smallest value) is continuous."""
        if not (isinstance(option, str) and option == "auto"):
            return discrete_resolution(option, np.zeros((0, self.n_features)), np.zeros(0))
        rows = self.ids(np.arange(min(self.n_rows, STREAMED_FIT_ROWS)))
        resolution = discrete_resolution(option, self.take(rows), self.weights(rows))
        discrete = np.flatnonzero(resolution > 0)
        for start, block in self._blocks():
            if not discrete.size:
                break
            if self.weight is not None:
                block = block[self.weight[start : start + READ_BLOCK] > 0]
            cells = (block[:, discrete] - self.low[discrete]) / resolution[discrete]
            off = np.max(np.abs(cells - np.round(cells)), axis=0, initial=0.0) > GRID_TOLERANCE
            resolution[discrete[off]] = 0.0
            discrete = discrete[~off]
        return resolution

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
        for _, block in self._blocks():
            digest.update(block.tobytes())

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
        rows = self.ids(np.arange(self.n_val, self.n_val + n))
        # with the training rows that hold a feature's extreme value: the map's scale and
        # the base then cover every training row
        extremes = np.unique(self._extremes)
        drawn = extremes if self._ids is None else np.searchsorted(self._ids, extremes)
        training = self.order.position(drawn) >= self.n_val
        rows = np.union1d(rows, extremes[training])
        return self.take(rows), self.weights(rows), np.arange(len(rows))

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
        weights = WeightView(self, start, start + share, device)
        val_key = int(noise.integers(2**63))  # each validation row's fixed draw
        val_weight = np.concatenate(
            [self.weights(self.ids(p)) for p in _blocks(0, self.n_val)] or [np.zeros(0)]
        )
        val = (None, None)
        if validate:
            val_w = torch.as_tensor(val_weight, dtype=torch.float32, device=device)
            val = (RowView(mapping, 0, self.n_val, val_key), val_w)
        return Prepared(
            **parts,
            generator=make_generator(probe_seed, device),
            data=(train, weights, *val),
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
        self.marginal = None if parts["marginal"] is None else parts["marginal"].cpu()
        self.loc = torch.as_tensor(parts["loc"])
        self.scale = torch.as_tensor(parts["scale"])

    def mapped(self, ids: np.ndarray, noise: np.random.Generator | int) -> tuple:
        """The rows numbered ``ids`` mapped (float64, on the CPU), with their
        log-Jacobians; ``noise``: a generator (a fresh draw) or a key (each row's fixed
        draw)."""
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
                x, log_det_marginal = self.marginal(x)
                log_det = log_det + log_det_marginal
        return (x - self.loc) / self.scale, log_det

    def mean_log_det(self, start: int, stop: int, key: int) -> float:
        """The weighted mean log-Jacobian of the map over positions ``[start, stop)``."""
        total = weight = 0.0
        for positions in _blocks(start, stop):
            ids = self.rows.ids(positions)
            log_det = self.mapped(ids, key)[1]
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
        ids = _row_ids(self._map.rows, index, self._start, self.shape[0])
        u = self._map.mapped(ids, self._noise)[0]
        return u.to(device=self.device, dtype=torch.float32)

    def spread(self, n_rows: int) -> torch.Tensor:
        """``n_rows`` rows spread evenly over the view (the same at every call)."""
        step = max(1, self.shape[0] // n_rows)
        return self[np.arange(0, self.shape[0], step)[:n_rows]]

    def epoch_order(self, passes: int, shuffle: bool, rng: np.random.Generator) -> EpochOrder:
        """An epoch of ``passes`` passes over the view, each in a fresh order (from
        ``rng``) when ``shuffle``."""
        keys = [int(k) for k in rng.integers(2**63, size=passes)] if shuffle else None
        rows, start = self._map.rows, self._start
        return EpochOrder(self.shape[0], passes, keys, lambda p: rows.ids(p + start))


class WeightView:
    """The weights of a :class:`RowView`'s positions, as a float32 tensor when indexed."""

    def __init__(self, rows: StreamedRows, start: int, stop: int, device: torch.device) -> None:
        self._rows, self._start, self.device = rows, start, device
        self.shape = (stop - start,)

    def __getitem__(self, index: Any) -> torch.Tensor:
        w = self._rows.weights(_row_ids(self._rows, index, self._start, self.shape[0]))
        return torch.as_tensor(w, dtype=torch.float32, device=self.device)


class RowIds:
    """Row numbers of the fit's source, as an :class:`EpochOrder` hands a mini-batch to the
    views (which then need not look them up)."""

    __slots__ = ("ids",)

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)


class EpochOrder:
    """One epoch of ``passes`` whole passes over ``n`` positions, each pass in the order of
    its own :class:`KeyedPermutation` (in order without ``keys``), sliced like the index
    tensor of an in-memory epoch: a slice gives the :class:`RowIds` that ``to_ids`` maps
    its positions to, computed :data:`READ_BLOCK` positions at a time."""

    def __init__(
        self,
        n: int,
        passes: int,
        keys: list[int] | None,
        to_ids: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        self.n, self.passes, self._to_ids = n, passes, to_ids
        self._perms = None if keys is None else [KeyedPermutation(n, k) for k in keys]
        self._block, self._ids = -1, np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.n * self.passes

    def _load(self, block: int) -> None:
        k = np.arange(block * READ_BLOCK, min((block + 1) * READ_BLOCK, len(self)))
        within = k % self.n
        if self._perms is not None:
            which = k // self.n
            for p in np.unique(which):
                mask = which == p
                within[mask] = self._perms[p](within[mask])
        self._block, self._ids = block, self._to_ids(within)

    def __getitem__(self, index: slice) -> RowIds:
        start, stop, _ = index.indices(len(self))
        parts = []
        while start < stop:
            block = start // READ_BLOCK
            if block != self._block:
                self._load(block)
            end = min(stop, (block + 1) * READ_BLOCK)
            offset = block * READ_BLOCK
            parts.append(self._ids[start - offset : end - offset])
            start = end
        return RowIds(np.concatenate(parts) if len(parts) != 1 else parts[0])


def _row_ids(rows: StreamedRows, index: Any, start: int, n: int) -> np.ndarray:
    """The row numbers that ``index`` (:class:`RowIds`, a slice, or integer positions in
    ``[0, n)``) stands for in a view starting at position ``start``."""
    if isinstance(index, RowIds):
        return index.ids
    return rows.ids(_positions(index, n) + start)


def _positions(index: Any, n: int) -> np.ndarray:
    """``index`` (a slice, an int array or tensor) as positions in ``[0, n)``."""
    if isinstance(index, slice):
        return np.arange(*index.indices(n))
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    positions = np.asarray(index)
    if positions.dtype.kind not in "iu":
        raise TypeError(f"rows are indexed by a slice or integers, not {positions.dtype}.")
    positions = positions.astype(np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise IndexError(f"positions must lie in [0, {n}).")
    return positions
