"""The optimizer steps of one training epoch: the mini-batch order, the loss of a
mini-batch (maximum likelihood or flow matching, optionally under autocast), the backward
pass and the checks that the loss and the gradients are finite."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._callbacks import Checkpoint, TimeBudget, WeightAverage, all_finite
from ._fit_config import FitConfig
from ._flow import FFJORDFlow
from ._flow_matching import flow_matching_loss
from ._ode import solver_error_from

__all__ = ["EpochSums", "TrainingFailure", "batch_order", "make_optimizer", "run_epoch"]


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


@dataclass
class EpochSums:
    """Running sums of one epoch's mini-batches."""

    loss: float = 0.0
    weight: float = 0.0
    nfe: int = 0
    nfe_backward: int = 0
    n_batches: int = 0


def batch_order(u: Tensor, config: FitConfig, rng: np.random.Generator) -> Tensor:
    """The indices of one epoch's rows of ``u`` in order, on ``u``'s device: whole passes
    over the rows, as many as make ``config.min_steps_per_epoch`` mini-batches."""
    n = u.shape[0]
    batch_size = min(config.batch_size, n)
    passes = max(1, math.ceil(config.min_steps_per_epoch / math.ceil(n / batch_size)))
    order = np.concatenate(
        [rng.permutation(n) if config.shuffle else np.arange(n) for _ in range(passes)]
    )
    return torch.as_tensor(order, device=u.device)


def run_epoch(
    flow: FFJORDFlow,
    optimizer: torch.optim.Optimizer,
    u: Tensor,
    w: Tensor,
    order: Tensor,
    config: FitConfig,
    generator: torch.Generator,
    last_good: Checkpoint,
    average: WeightAverage | None,
    budget: TimeBudget,
) -> tuple[EpochSums, bool]:
    """The optimizer steps of one epoch.

    Parameters
    ----------
    flow : FFJORDFlow
        Trained in place.
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
    """
    params = last_good.params
    batch_size = min(config.batch_size, u.shape[0])
    sums = EpochSums()
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        ub, wb = u[idx], w[idx]
        if float(wb.sum()) <= 0:
            continue
        optimizer.zero_grad(set_to_none=True)
        nll, loss, dynamics = _batch_loss(flow, ub, wb, config, generator)
        if not torch.isfinite(loss):
            raise TrainingFailure("the training loss became NaN or infinite")
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
