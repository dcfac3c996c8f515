"""The optimizer steps of one training epoch: the mini-batch order, the loss of a
mini-batch (maximum likelihood or flow matching, optionally under autocast), the backward
pass and the checks that the loss and the gradients are finite.

The loss is computed by a module, :class:`BatchObjective`, so that a data-parallel fit can
wrap it in :class:`~torch.nn.parallel.DistributedDataParallel`
(:mod:`skffjord._distributed`), which averages the gradients of what goes through its
wrapper's ``forward``."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ._callbacks import Checkpoint, TimeBudget, WeightAverage, all_finite
from ._distributed import RankFailure, Ranks
from ._fit_config import FitConfig
from ._flow import FFJORDFlow
from ._flow_matching import flow_matching_loss
from ._ode import SolverError, solver_error_from

__all__ = [
    "BatchObjective",
    "EpochSums",
    "TrainingFailure",
    "batch_order",
    "make_optimizer",
    "run_epoch",
]


class TrainingFailure(Exception):
    """Internal signal: the loss or the weights turned non-finite."""


def _adam(params: list[Tensor], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, fused into one kernel per tensor where this PyTorch and device support it
    (a fraction of the per-step cost of the per-tensor loop for these small networks, which
    matters to flow matching's short steps); the usual implementation otherwise."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def make_optimizer(
    params: list[Tensor], config: FitConfig, state: dict | None
) -> torch.optim.Optimizer:
    """Adam with the settings of ``config``, resumed from ``state`` when given (the current
    step size and weight decay win over the saved ones)."""
    optimizer = _adam(params, config.learning_rate_init, config.alpha)
    if state is not None:
        optimizer.load_state_dict(state)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate_init
            group["weight_decay"] = config.alpha
    return optimizer


def _autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing for ``None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum() / weights.sum()


def _batch_loss(
    flow: FFJORDFlow, ub: Tensor, wb: Tensor, config: FitConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor, list]:
    """The mini-batch's reported loss, the loss minimised (with the regularisers) and the
    dynamics solved (none in flow matching), under ``config.autocast_dtype``."""
    with _autocast(config.autocast_dtype, ub.device):
        if config.training == "flow_matching":
            loss = flow_matching_loss(flow, ub, wb, generator)
            return loss, loss, []
        logp, reg, dynamics = flow.train_log_prob(ub, config.solver, generator)
        nll = -_weighted_mean(logp, wb)
        return nll, nll + _weighted_mean(reg, wb), dynamics


class BatchObjective(nn.Module):
    """The loss of a mini-batch, as a module whose parameters are the flow's.

    Parameters
    ----------
    flow : FFJORDFlow
        The flow trained.
    """

    def __init__(self, flow: FFJORDFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(
        self, ub: Tensor, wb: Tensor, config: FitConfig, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, list]:
        """The mini-batch's reported loss, the loss minimised (with the regularisers) and
        the dynamics solved (none in flow matching), under ``config.autocast_dtype``.

        Parameters
        ----------
        ub, wb : Tensor
            Standardised rows and their weights.
        config : FitConfig
            The objective (``training``), training solver and precision.
        generator : torch.Generator
            Hutchinson probes and flow-matching draws.

        Returns
        -------
        tuple of (Tensor, Tensor, list)
            As described above.
        """
        return _batch_loss(self.flow, ub, wb, config, generator)


def _peer_failure(rank: int, kind: str, message: str, world_size: int) -> Exception:
    """The error a rank raises when rank ``rank`` failed a step with a ``kind`` error: the
    same kind of stop for the loop's own failures (so that every rank records the same
    stop), else :class:`RankFailure`."""
    text = f"rank {rank} of {world_size} failed in a training step with {kind}: {message}"
    if kind == "SolverError":
        return SolverError(text)
    if kind == "TrainingFailure":
        return TrainingFailure(text)
    return RankFailure(f"Every rank stopped: {text}")


def _step_loss(
    objective: nn.Module,
    ub: Tensor,
    wb: Tensor,
    config: FitConfig,
    generator: torch.Generator,
    ranks: Ranks,
) -> tuple[Tensor, Tensor, list]:
    """``objective``'s losses of a mini-batch, checked finite; across processes, every rank
    learns whether any rank's loss failed, and all stop if one did."""
    error = None
    try:
        nll, loss, dynamics = objective(ub, wb, config, generator)
        if not torch.isfinite(loss):
            raise TrainingFailure("the training loss became NaN or infinite")
    except Exception as err:
        if not ranks.active:
            raise
        error = err
    failure = ranks.first_failure(error) if ranks.active else None
    if failure is not None:
        if error is not None:
            raise error
        raise _peer_failure(*failure, ranks.world_size)
    return nll, loss, dynamics


@dataclass
class EpochSums:
    """Running sums of one epoch's mini-batches."""

    loss: float = 0.0
    weight: float = 0.0
    nfe: float = 0
    nfe_backward: float = 0
    n_batches: int = 0


def batch_order(u: Tensor, config: FitConfig, rng: np.random.Generator) -> Tensor:
    """The indices of one epoch's rows of ``u`` in order, on ``u``'s device: whole passes
    over the rows, as many as make ``config.min_steps_per_epoch`` mini-batches."""
    n = u.shape[0]
    batch_size = min(config.batch_size, n)
    passes = max(1, math.ceil(config.min_steps_per_epoch / math.ceil(n / batch_size)))
    if not isinstance(u, Tensor):  # a view of rows read when indexed: a computed order
        return u.epoch_order(passes, config.shuffle, rng)
    order = np.concatenate(
        [rng.permutation(n) if config.shuffle else np.arange(n) for _ in range(passes)]
    )
    return torch.as_tensor(order, device=u.device)


def run_epoch(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    u: Tensor,
    w: Tensor,
    order: Tensor,
    config: FitConfig,
    generator: torch.Generator,
    last_good: Checkpoint,
    average: WeightAverage | None,
    budget: TimeBudget,
    ranks: Ranks | None = None,
) -> tuple[EpochSums, bool]:
    """The optimizer steps of one epoch.

    Parameters
    ----------
    objective : nn.Module
        A :class:`BatchObjective` of the flow trained in place (wrapped in
        :class:`~torch.nn.parallel.DistributedDataParallel` across processes).
    optimizer : torch.optim.Optimizer
        Steps the flow's trainable parameters.
    u, w : Tensor
        Standardised training rows and their weights.
    order : Tensor of int
        The rows of the epoch in order (:func:`batch_order`), ``config.batch_size`` at a
        time; a mini-batch of zero weight is skipped.
    config : FitConfig
        The objective (``training``), training solver and precision.
    generator : torch.Generator
        Hutchinson probes and flow-matching draws.
    last_good : Checkpoint
        Saved before every step: the weights the step's loss and gradients were finite at.
    average : WeightAverage or None
        Updated after every step.
    budget : TimeBudget
        Checked after every step; the epoch ends at the first step past it.
    ranks : Ranks or None
        The processes of the fit, which all stop when one's loss fails; ``None``: one.

    Returns
    -------
    sums : EpochSums
        The epoch's sums.
    time_up : bool
        Whether the time budget ran out (the epoch ended early).

    Raises
    ------
    TrainingFailure
        When a loss or a gradient is not finite.
    SolverError
        When a solve fails.
    RankFailure
        When another process's step failed with an error other than these.
    """
    ranks = Ranks() if ranks is None else ranks
    params = last_good.params
    batch_size = min(config.batch_size, u.shape[0])
    sums = EpochSums()
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        ub, wb = u[idx], w[idx]
        if float(wb.sum()) <= 0:  # (never across processes: their shares weigh > 0)
            continue
        optimizer.zero_grad(set_to_none=True)
        nll, loss, dynamics = _step_loss(objective, ub, wb, config, generator, ranks)
        nfe_forward = sum(d.nfe for d in dynamics)
        try:
            loss.backward()
        except AssertionError as err:  # the adjoint's backward solve failed
            raise solver_error_from(err) from err
        # the adjoint re-evaluates the field backwards; backprop does not.
        nfe_back = sum(d.nfe for d in dynamics) - nfe_forward
        if not all_finite([p.grad for p in params if p.grad is not None]):
            raise TrainingFailure("the gradients became NaN or infinite")
        last_good.save()
        optimizer.step()
        if average is not None:
            average.update()
        batch_w = float(wb.sum())
        sums.loss += nll.item() * batch_w
        sums.weight += batch_w
        sums.nfe += nfe_forward
        sums.nfe_backward += nfe_back
        sums.n_batches += 1
        if budget.exceeded():
            return sums, True
    return sums, False
