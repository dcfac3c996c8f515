"""What the training loop consults between steps and epochs: the last good weights, the time
budget, early stopping, the adaptive step size, the weight average and the solver-gap guard.

Each is a small class that the loop drives with plain numbers (scores, losses, gaps, epoch
counts, seconds), so that each can be exercised on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import Tensor

from ._fit_config import FitConfig
from ._flow import FFJORDFlow

__all__ = [
    "LR_EARLIEST_SHARE",
    "LR_FACTOR",
    "LR_LATE_SHARE",
    "LR_MAX_REDUCTIONS",
    "LR_PATIENCE",
    "Checkpoint",
    "EarlyStopping",
    "SolverGapGuard",
    "StepSizeSchedule",
    "TimeBudget",
    "WeightAverage",
    "all_finite",
    "refine_solver",
]

#: ``learning_rate='adaptive'``, in maximum-likelihood epochs: after this many epochs in a
#: row without progress (validation score, or training loss without validation; at most
#: ``n_iter_no_change``) the step size is multiplied by :data:`LR_FACTOR` (going on from the
#: best-validation weights when there is validation), at most :data:`LR_MAX_REDUCTIONS`
#: times; the fit stops only when the lowest step size stalls too. A likelihood fit that
#: stalls at a constant step size is limited by Adam's step noise, which a smaller step size
#: removes: the first reduction is usually followed by a jump of the validation score.
LR_PATIENCE = 4
LR_FACTOR = 0.3
LR_MAX_REDUCTIONS = 3
#: A likelihood phase that has not stalled by this share of its budget gets one reduction
#: then: a short low step size at the end of a fit cut by the clock (or the epoch count).
LR_LATE_SHARE = 0.8
#: No reduction before this share of the phase's budget: early on, a best score that is not
#: beaten for a few epochs is mostly noise about a rising trend, and reductions taken then
#: leave the rest of the phase at too small a step size. The share of the budget used is
#: that of ``max_time`` or of ``max_iter``, whichever is further along.
LR_EARLIEST_SHARE = 0.5


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every element of every tensor is finite.

    Parameters
    ----------
    tensors : list of Tensor
        The tensors checked (an empty list is finite).

    Returns
    -------
    bool
        The answer, from a few fused operations: ``x * 0`` is 0 for a finite ``x`` and NaN
        for an infinite or NaN one.
    """
    if not tensors:
        return True
    zeros = torch._foreach_mul(tensors, 0.0)
    return bool(torch.stack(torch._foreach_norm(zeros)).isfinite().all())


class Checkpoint:
    """A copy of some parameters, refreshed and restored in place with one fused copy.

    The training loop keeps the last good weights in one: saved before every optimizer step
    (where a state-dict snapshot's per-tensor clones would cost more) and after every
    epoch, restored when training fails with no best validation weights to fall back to,
    or is interrupted with non-finite weights.

    Parameters
    ----------
    params : list of Tensor
        The parameters watched; their values at construction are the first saved.
    """

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.saved = [p.detach().clone() for p in params]

    @torch.no_grad()
    def save(self) -> None:
        """Copy the parameters' current values into the checkpoint."""
        torch._foreach_copy_(self.saved, [p.detach() for p in self.params])

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the saved values back into the parameters."""
        torch._foreach_copy_(self.params, self.saved)

    def restore_if_not_finite(self) -> None:
        """Restore the saved values when a parameter holds a NaN or an infinity."""
        if not all_finite(self.params):
            self.restore()


class TimeBudget:
    """Seconds spent since construction, against an optional limit.

    Parameters
    ----------
    max_time : float or None
        The limit in seconds; ``None``: none.
    clock : callable, default=time.perf_counter
        Returns the current time in seconds; read once at construction.
    """

    def __init__(
        self, max_time: float | None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.max_time = max_time
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        """Seconds since construction."""
        return self.clock() - self.start

    def exceeded(self) -> bool:
        """Whether more than ``max_time`` seconds have passed (never without a limit, and
        then the clock is not read)."""
        return self.max_time is not None and self.elapsed() > self.max_time


def _snapshot(flow: FFJORDFlow) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


class EarlyStopping:
    """The best weights so far, and the patience rule of early stopping.

    An epoch improves when its validation score beats the best so far by more than ``tol``
    (without validation: its training loss is below the lowest so far by more than
    ``tol``); training should stop after ``n_iter_no_change`` epochs in a row that do not.

    Parameters
    ----------
    flow : FFJORDFlow
        The flow trained; its weights at construction are the first best weights.
    n_iter_no_change : int
        Epochs in a row without improvement after which training should stop.
    tol : float
        The improvement that counts.
    """

    def __init__(self, flow: FFJORDFlow, n_iter_no_change: int, tol: float) -> None:
        self.flow = flow
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.best_score = -math.inf
        self.best_loss = math.inf
        self.best_state = _snapshot(flow)
        #: ``solver_gap`` of the best weights.
        self.best_gap = math.nan
        self.no_improve = 0

    def start_from(self, score: float) -> None:
        """Let the weights held at construction compete for the best with ``score``."""
        self.best_score = score

    def observe_score(self, score: float, solver_gap: float = math.nan) -> None:
        """Count an epoch by its validation ``score`` (higher is better; ``-inf``: not
        scored); keep the flow's weights, and their ``solver_gap``, when best."""
        if score > self.best_score + self.tol:
            self.no_improve = 0
        else:
            self.no_improve += 1
        if score > self.best_score:
            self.best_score = score
            self.best_state = _snapshot(self.flow)
            self.best_gap = solver_gap

    def observe_loss(self, loss: float) -> None:
        """Count an epoch by its training loss (lower is better), without validation."""
        if loss < self.best_loss - self.tol:
            self.no_improve = 0
        else:
            self.no_improve += 1
        self.best_loss = min(self.best_loss, loss)

    @property
    def has_best(self) -> bool:
        """Whether some weights were scored (a finite best validation score)."""
        return self.best_score > -math.inf

    @property
    def should_stop(self) -> bool:
        """Whether ``n_iter_no_change`` epochs in a row have not improved."""
        return self.no_improve >= self.n_iter_no_change

    def restart(self) -> None:
        """Count the epochs without improvement from zero again."""
        self.no_improve = 0

    def restore_best(self) -> None:
        """Load the best weights into the flow."""
        self.flow.load_state_dict(self.best_state)


class StepSizeSchedule:
    """``learning_rate='adaptive'`` in maximum-likelihood epochs (see :data:`LR_PATIENCE`).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its step sizes are lowered in place.
    config : FitConfig
        Active for ``learning_rate='adaptive'`` and ``training='likelihood'``; its
        ``n_iter_no_change`` caps the patience, its ``max_time`` and ``max_iter`` are the
        phase's budget.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: FitConfig) -> None:
        self.optimizer = optimizer
        self.active = config.learning_rate == "adaptive" and config.training == "likelihood"
        self.patience = min(LR_PATIENCE, config.n_iter_no_change)
        self.max_time = config.max_time
        self.max_iter = config.max_iter
        self.reductions = 0

    def lowered(self, no_improve: int, elapsed: float, epochs: int) -> bool:
        """Lower the step size after an epoch when the schedule calls for it.

        It does when the epochs stalled long enough (or, never lowered yet, the phase is
        late), not before :data:`LR_EARLIEST_SHARE` of the phase's budget, and at most
        :data:`LR_MAX_REDUCTIONS` times.

        Parameters
        ----------
        no_improve : int
            Epochs in a row without improvement.
        elapsed : float
            Seconds spent, of ``max_time``.
        epochs : int
            Epochs done, of ``max_iter``; the budget's share used is the larger of the two.

        Returns
        -------
        bool
            Whether the step size was lowered.
        """
        if not self.active or self.reductions >= LR_MAX_REDUCTIONS:
            return False
        used = epochs / self.max_iter
        if self.max_time is not None:
            used = max(used, elapsed / self.max_time)
        if used < LR_EARLIEST_SHARE:
            return False
        late = self.reductions == 0 and used >= LR_LATE_SHARE
        if no_improve < self.patience and not late:
            return False
        for group in self.optimizer.param_groups:
            group["lr"] *= LR_FACTOR
        self.reductions += 1
        return True


class WeightAverage:
    """Exponential moving average of parameters, with the usual warm-up.

    The decay after ``k`` updates is ``min(decay, (1 + k) / (10 + k))``, so the first
    steps' weights, far from the later ones, fade quickly.

    Parameters
    ----------
    params : list of Tensor
        The parameters averaged; their values at construction start the average.
    decay : float
        The decay once warmed up.
    """

    def __init__(self, params: list[Tensor], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.average = [p.detach().clone() for p in params]
        self.n_updates = 0

    @classmethod
    def from_config(cls, params: list[Tensor], config: FitConfig) -> WeightAverage | None:
        """The average a fit keeps: flow matching with an ``averaging_decay`` only.

        Flow matching's loss is a noisy regression whose raw weights jitter about the
        optimum, while the likelihood phase is still making steady progress at the end of a
        budget, which an average lags behind.

        Parameters
        ----------
        params : list of Tensor
            The trainable parameters.
        config : FitConfig
            Its ``averaging_decay`` and ``training``.

        Returns
        -------
        WeightAverage or None
            The average, or ``None`` when the fit is not averaged.
        """
        if config.averaging_decay is None or config.training != "flow_matching":
            return None
        return cls(params, config.averaging_decay)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the parameters' current values into the average."""
        self.n_updates += 1
        decay = min(self.decay, (1 + self.n_updates) / (10 + self.n_updates))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the parameters for the duration, the trained ones after."""
        trained = Checkpoint(self.params)
        self.apply()
        try:
            yield
        finally:
            trained.restore()

    @torch.no_grad()
    def apply(self) -> None:
        """Copy the averaged weights into the parameters for good."""
        torch._foreach_copy_(self.params, self.average)

    def apply_if_finite(self) -> None:
        """:meth:`apply`, unless the average holds a NaN or an infinity."""
        if all_finite(self.average):
            self.apply()


def refine_solver(config: FitConfig, gap: float) -> FitConfig:
    """The settings with one more fixed step of the training solver when ``gap`` calls for it.

    Parameters
    ----------
    config : FitConfig
        Its ``refine_solver_gap`` (the threshold; ``None``: never), ``max_fixed_steps`` and
        training solver (refined only when ``refinable``).
    gap : float
        The last ``solver_gap``, in nats per row (NaN: unknown, no refinement).

    Returns
    -------
    FitConfig
        ``config`` itself, or a copy whose solver takes one more fixed step.
    """
    solver = config.solver
    if (
        config.refine_solver_gap is None
        or not solver.refinable
        or not gap > config.refine_solver_gap
        or solver.fixed_steps + 1 > config.max_fixed_steps
    ):
        return config
    return replace(config, solver=replace(solver, fixed_steps=solver.fixed_steps + 1))


class SolverGapGuard:
    """Watches the training solver's ``solver_gap`` and refines the solver while it is
    exploited (:func:`refine_solver`).

    Parameters
    ----------
    config : FitConfig
        The gap is measured in likelihood training with a ``validation_solver`` only.
    """

    def __init__(self, config: FitConfig) -> None:
        self.active = config.training == "likelihood" and config.validation_solver is not None
        #: The gap of the last epoch's weights (NaN: not measured).
        self.last_gap = math.nan

    def observe(self, config: FitConfig, gap: float) -> FitConfig:
        """Record an epoch's ``gap`` (NaN: not measured); the settings for the next epoch
        (``config``, refined by :func:`refine_solver`)."""
        self.last_gap = gap
        return refine_solver(config, gap)
