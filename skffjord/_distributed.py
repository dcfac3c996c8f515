"""Data-parallel fitting on ``torch.distributed``: which process of a fit this is, and the
few collectives that keep the processes in agreement.

A fit is data-parallel when a default process group is initialised (``torchrun`` and
``torch.distributed.init_process_group``); ``fit`` itself never starts processes. Every
process (rank) must call ``fit`` with the same rows, sample weights and parameters, which
:meth:`Ranks.check_same_inputs` verifies. Every rank then builds the starting model as a
single process would and takes rank 0's (:meth:`Ranks.agreed`); the training rows are
shared out (:meth:`Ranks.shard`), each rank's mini-batch gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel` (:meth:`Ranks.wrap`), and every decision
taken from a score, a solver gap or the clock is taken from rank 0's value, so that every
rank runs the same steps and ends with the same model.

A rank whose training step fails tells the others (:meth:`Ranks.first_failure`), and they
all stop. A rank that dies outright cannot tell them: the others then wait in their next
collective until the process group's ``timeout`` (an argument of
``torch.distributed.init_process_group``) runs out, and raise.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

__all__ = ["RankFailure", "Ranks"]

T = TypeVar("T")

#: Parameters that may differ between the ranks of one fit: the device (each rank its own
#: GPU), the verbosity (a display on one rank only) and the seed, which is rank 0's.
PER_RANK_PARAMS = ("device", "verbose", "random_state")


class RankFailure(RuntimeError):
    """Another rank of a data-parallel fit failed in a training step, so this one stopped.

    Parameters
    ----------
    message : str
        Names the failing rank and its error.
    """


def _digest(*arrays: np.ndarray) -> str:
    """A hash of the arrays' shapes, types and contents."""
    h = hashlib.sha256()
    for a in arrays:
        if hasattr(a, "update_digest"):  # rows read block by block
            a.update_digest(h)
            continue
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Ranks:
    """The processes of one fit, and the collectives that keep them in agreement.

    With a single process (``world_size == 1``) every method is the identity and no
    collective is run, so that a plain fit computes exactly what it would without this class.

    Parameters
    ----------
    world_size : int
        Number of processes in the fit.
    rank : int
        This process's index among them.
    """

    world_size: int = 1
    rank: int = 0

    @classmethod
    def current(cls) -> Ranks:
        """The ranks of the default process group, or a single process when there is none.

        Returns
        -------
        Ranks
            ``torch.distributed``'s world size and rank where a default process group is
            initialised, else ``Ranks(1, 0)``.
        """
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_world_size(), dist.get_rank())
        return cls()

    @property
    def active(self) -> bool:
        """Whether the fit runs on more than one process."""
        return self.world_size > 1

    def _device(self) -> torch.device:
        """Where the tensors of collectives live: the current GPU for NCCL, else the CPU."""
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def agreed(self, value: T) -> T:
        """Rank 0's ``value``, on every rank (any picklable object).

        Parameters
        ----------
        value : object
            This rank's value; only rank 0's is used.

        Returns
        -------
        object
            Rank 0's value (``value`` itself on rank 0 and in a single process).
        """
        if not self.active:
            return value
        box = [value if self.rank == 0 else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def agreed_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank, exactly (one float64 broadcast).

        Parameters
        ----------
        value : float
            This rank's value; only rank 0's is used.

        Returns
        -------
        float
            Rank 0's value.
        """
        if not self.active:
            return value
        box = torch.tensor([value], dtype=torch.float64, device=self._device())
        torch.distributed.broadcast(box, src=0)
        return float(box.item())

    def clock(self) -> float:
        """Rank 0's :func:`time.perf_counter`, on every rank: the clock of ``max_time`` and of
        the history's times in a data-parallel fit."""
        return self.agreed_float(time.perf_counter())

    def fit_clock(self) -> Callable[[], float] | None:
        """The clock of a fit: :meth:`clock` across processes; ``None`` (the training
        loop's own default) in a single process."""
        return self.clock if self.active else None

    def summed(self, values: list[float]) -> list[float]:
        """Each of ``values`` summed over the ranks, in rank order (the same on every rank).

        Parameters
        ----------
        values : list of float
            This rank's values.

        Returns
        -------
        list of float
            The sums (``values`` itself in a single process).
        """
        if not self.active:
            return values
        mine = torch.tensor(values, dtype=torch.float64, device=self._device())
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, mine)
        total = parts[0].clone()
        for part in parts[1:]:
            total += part
        return total.cpu().tolist()

    def first_failure(self, error: BaseException | None) -> tuple[int, str, str] | None:
        """Tell the other ranks whether this rank's step failed; the first rank that did.

        Every rank calls it once per training step, ``error`` being what the step raised
        (``None``: it succeeded). One integer all-reduce when no rank failed.

        Parameters
        ----------
        error : BaseException or None
            This rank's error.

        Returns
        -------
        tuple of (int, str, str) or None
            The lowest failing rank, its error's class name and message; ``None`` when no
            rank failed.
        """
        if not self.active:
            return None if error is None else (self.rank, type(error).__name__, str(error))
        flag = torch.tensor([int(error is not None)], device=self._device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if not int(flag.item()):
            return None
        mine = None if error is None else (self.rank, type(error).__name__, str(error))
        reports: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(reports, mine)
        return next(r for r in reports if r is not None)

    def check_same_inputs(self, X: np.ndarray, sample_weight: np.ndarray, params: dict) -> None:
        """Raise ``ValueError`` on every rank unless every rank was given the same rows,
        sample weights and parameters (all but :data:`PER_RANK_PARAMS`).

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
            This rank's rows.
        sample_weight : ndarray of shape (n_samples,)
            This rank's weights.
        params : dict
            This rank's estimator parameters.
        """
        if not self.active:
            return
        shared = {k: v for k, v in sorted(params.items()) if k not in PER_RANK_PARAMS}
        params_digest = hashlib.sha256(repr(shared).encode()).hexdigest()
        mine = (_digest(X), _digest(sample_weight), params_digest)
        digests: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(digests, mine)
        names = ("X", "sample_weight", "parameters")
        differ = {
            name: [r for r, d in enumerate(digests) if d[i] != digests[0][i]]
            for i, name in enumerate(names)
        }
        differ = {name: ranks for name, ranks in differ.items() if ranks}
        if differ:
            found = "; ".join(
                f"{name} differs on rank(s) {ranks}" for name, ranks in differ.items()
            )
            raise ValueError(
                f"A data-parallel fit over {self.world_size} processes needs the same X, "
                f"sample_weight and parameters on every rank (compared with rank 0): {found}. "
                "Load the same table on every rank; it is shared out for training by fit."
            )

    def shard(self, train_idx: np.ndarray, sample_weight: np.ndarray, seed: int) -> np.ndarray:
        """This rank's share of the training rows ``train_idx``.

        The rows of positive weight are permuted (the same permutation on every rank, from
        ``seed``) and cut into ``world_size`` equal shares, so that every rank runs the same
        number of optimizer steps; the fewer than ``world_size`` rows left over do not train.

        Parameters
        ----------
        train_idx : ndarray of int
            The training rows.
        sample_weight : ndarray of shape (n_samples,)
            The weights of all rows.
        seed : int
            Seeds the permutation.

        Returns
        -------
        ndarray of int
            This rank's rows, sorted (``train_idx`` itself in a single process).
        """
        if not self.active:
            return train_idx
        rows = train_idx[sample_weight[train_idx] > 0]
        share = len(rows) // self.world_size
        if share == 0:
            raise ValueError(
                f"A data-parallel fit over {self.world_size} processes needs at least one "
                f"training row of positive weight per process; got {len(rows)}."
            )
        perm = np.random.default_rng((seed, self.world_size)).permutation(rows)
        return np.sort(perm[self.rank * share : (self.rank + 1) * share])

    def own_seed(self, seed: int) -> int:
        """A seed of this rank's own, from ``seed`` (``seed`` itself in a single process):
        the ranks' random draws in their training steps (Hutchinson probes, flow-matching
        noise) are then independent.

        Parameters
        ----------
        seed : int
            The fit's seed.

        Returns
        -------
        int
            This rank's seed.
        """
        if not self.active:
            return seed
        return int(np.random.SeedSequence((seed, self.rank)).generate_state(1)[0])

    def wrap(self, objective: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """``objective`` in :class:`~torch.nn.parallel.DistributedDataParallel` (which
        averages the gradients of its ``forward``'s computations over the ranks), or
        ``objective`` itself in a single process.

        Parameters
        ----------
        objective : nn.Module
            Computes a mini-batch's loss in its ``forward``.
        find_unused_parameters : bool, default=False
            Needed when a step may leave some trainable parameters out of the loss.

        Returns
        -------
        nn.Module
            What the training steps call.
        """
        if not self.active:
            return objective
        wrapper = nn.parallel.DistributedDataParallel
        # the buffers (the map's and the base's) are rank 0's already, and never change
        sync = "forward_sync_buffers"
        if sync not in inspect.signature(wrapper).parameters:
            sync = "broadcast_buffers"
        options = {sync: False, "find_unused_parameters": find_unused_parameters}
        return wrapper(objective, **options)
