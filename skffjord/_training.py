"""The maximum-likelihood and flow-matching training loop (knows nothing of scikit-learn).

The loop runs the epochs' optimizer steps (:mod:`skffjord._optimizer_steps`) and scores
each epoch; what follows from the scores is decided by the classes of
:mod:`skffjord._callbacks`. The settings (:class:`FitConfig`) and the validation scores
(:mod:`skffjord._validation_scores`) are importable from here too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ._callbacks import (
    Checkpoint,
    EarlyStopping,
    SolverGapGuard,
    StepSizeSchedule,
    TimeBudget,
    WeightAverage,
    all_finite,
)
from ._distributed import Ranks
from ._fit_config import FitConfig
from ._flow import FFJORDFlow
from ._ode import SolverError
from ._optimizer_steps import (
    BatchObjective,
    EpochSums,
    TrainingFailure,
    batch_order,
    make_optimizer,
    run_epoch,
)
from ._progress import PHASE_NAMES, ProgressDisplay
from ._validation_scores import (
    flow_matching_validation_loss,
    guarded_validation,
    row_log_probs,
    significant_gain,
    solver_gap,
    validation_log_probs,
    validation_score,
)

__all__ = [
    "FitConfig",
    "TrainingFailure",
    "TrainingResult",
    "WeightAverage",
    "flow_matching_validation_loss",
    "guarded_validation",
    "row_log_probs",
    "significant_gain",
    "solver_gap",
    "train_flow",
    "validation_log_probs",
    "validation_score",
]


@dataclass
class TrainingResult:
    """What training produced; the flow's weights are set in place."""

    history: list[dict] = field(default_factory=list)
    n_iter: int = 0
    best_validation_score: float | None = None
    best_loss: float = math.inf
    stop_reason: str = "max_iter"
    message: str | None = None
    optimizer_state: dict | None = None
    #: ``solver_gap`` of the weights returned (those of a completed likelihood epoch with a
    #: validation solver), else NaN.
    final_solver_gap: float = math.nan
    #: Validation passes that the validation solver could not finish (scored ``-inf``).
    validation_failures: int = 0


@dataclass
class _Callbacks:
    """What the loop consults between steps and epochs (see :mod:`skffjord._callbacks`)."""

    last_good: Checkpoint
    stopping: EarlyStopping
    average: WeightAverage | None
    gap_guard: SolverGapGuard
    schedule: StepSizeSchedule
    budget: TimeBudget

    @classmethod
    def for_fit(
        cls,
        flow: FFJORDFlow,
        params: list[Tensor],
        optimizer: torch.optim.Optimizer,
        config: FitConfig,
        clock: Callable[[], float],
    ) -> _Callbacks:
        """The callbacks of one call of :func:`train_flow`."""
        return cls(
            last_good=Checkpoint(params),
            stopping=EarlyStopping(flow, config.n_iter_no_change, config.tol),
            average=WeightAverage.from_config(params, config),
            gap_guard=SolverGapGuard(config),
            schedule=StepSizeSchedule(optimizer, config),
            budget=TimeBudget(config.max_time, clock),
        )


def _epoch_record(
    epoch: int, sums: EpochSums, config: FitConfig, log_det_offset: float, lr: float
) -> dict:
    """The history's record of an epoch, before its scores and time are known."""
    train_loss = sums.loss / max(sums.weight, 1e-300)
    if config.training == "likelihood":
        train_loss -= log_det_offset  # a negative log-likelihood in the user's units
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "valid_score": math.nan,
        "nfe": sums.nfe / max(sums.n_batches, 1),
        "nfe_backward": sums.nfe_backward / max(sums.n_batches, 1),
        "n_steps": sums.n_batches,
        "solver_gap": math.nan,
        "time": math.nan,
        "learning_rate": lr,
    }


def _summed(sums: EpochSums, ranks: Ranks) -> EpochSums:
    """The epoch's sums over every process's share of the rows (the solver's evaluations
    per step averaged over the processes); ``sums`` itself in one process."""
    if not ranks.active:
        return sums
    loss, weight, nfe, nfe_backward = ranks.summed(
        [sums.loss, sums.weight, sums.nfe, sums.nfe_backward]
    )
    n = ranks.world_size
    return EpochSums(loss, weight, nfe / n, nfe_backward / n, sums.n_batches)


def _validation(
    flow: FFJORDFlow,
    validation: tuple[Tensor, Tensor, float],
    config: FitConfig,
    result: TrainingResult,
    ranks: Ranks,
) -> float:
    """The validation score of the flow's weights (higher is better): the negated
    flow-matching loss, or the log-likelihood in the user's units (``validation``: rows,
    weights and the offset added; a pass the validation solver cannot finish scores
    ``-inf`` and is counted in ``result``); rank 0's across processes."""
    u, w, offset = validation
    if config.training == "flow_matching":
        return ranks.agreed_float(-flow_matching_validation_loss(flow, u, w, config))
    score = ranks.agreed_float(guarded_validation(flow, u, w, config) + offset)
    result.validation_failures += score == -math.inf
    return score


def _judge_epoch(
    flow: FFJORDFlow,
    record: dict,
    training_rows: tuple[Tensor, Tensor],
    validation: tuple[Tensor, Tensor, float] | None,
    config: FitConfig,
    callbacks: _Callbacks,
    result: TrainingResult,
    ranks: Ranks,
) -> FitConfig:
    """Score the epoch's weights (the average's, when there is one) into ``record`` and the
    callbacks; the settings of the next epoch (a refined training solver). Across
    processes, the scores and the solver gap are rank 0's."""
    with callbacks.average.applied() if callbacks.average is not None else nullcontext():
        if callbacks.gap_guard.active:
            record["solver_gap"] = ranks.agreed_float(solver_gap(flow, *training_rows, config))
        config = callbacks.gap_guard.observe(config, record["solver_gap"])
        result.n_iter = record["epoch"]
        if validation is not None:
            record["valid_score"] = _validation(flow, validation, config, result, ranks)
            callbacks.stopping.observe_score(record["valid_score"], record["solver_gap"])
        elif config.training == "likelihood":
            callbacks.stopping.observe_loss(record["train_loss"])
        # (flow matching without validation runs to max_iter / max_time: its per-epoch
        # loss is a Monte Carlo estimate too noisy to compare against tol)
    return config


def _converged(callbacks: _Callbacks, validated: bool, epochs: int) -> bool:
    """Lower the step size when the schedule calls for it (going on from the best weights
    so far, with validation), then whether early stopping calls for a stop."""
    stopping = callbacks.stopping
    # (not while every validation has failed: the step size is not what is wrong)
    scored = not validated or stopping.has_best
    if scored and callbacks.schedule.lowered(
        stopping.no_improve, callbacks.budget.elapsed(), epochs
    ):
        stopping.restart()
        if validated:
            stopping.restore_best()
    return stopping.should_stop


def _finish(result: TrainingResult, callbacks: _Callbacks, validated: bool) -> None:
    """Leave the chosen weights in the flow: the best validated ones, else (a fit that did
    not fail) the average, when there is one; record their solver gap."""
    if validated and callbacks.stopping.has_best:
        callbacks.stopping.restore_best()
        result.best_validation_score = callbacks.stopping.best_score
        result.final_solver_gap = callbacks.stopping.best_gap
    elif result.stop_reason in ("max_iter", "max_time", "converged", "interrupted"):
        # without validation the fit ends on the average, also when interrupted (Ctrl-C
        # keeps the model that a finished fit would have returned so far)
        if callbacks.average is not None:
            callbacks.average.apply_if_finite()
        if result.stop_reason != "interrupted":
            # the gap of the weights at the end of the last epoch
            result.final_solver_gap = callbacks.gap_guard.last_gap


def train_flow(
    flow: FFJORDFlow,
    u_train: Tensor,
    w_train: Tensor,
    u_val: Tensor | None,
    w_val: Tensor | None,
    config: FitConfig,
    *,
    rng: np.random.Generator,
    generator: torch.Generator,
    log_det_offset: float = 0.0,
    val_log_det_offset: float | None = None,
    optimizer_state: dict | None = None,
    redraw: Callable[[], Tensor] | None = None,
    clock: Callable[[], float] | None = None,
    progress: ProgressDisplay | None = None,
    ranks: Ranks | None = None,
) -> TrainingResult:
    """Fit ``flow`` by maximum likelihood or flow matching with Adam, in place.

    Parameters
    ----------
    flow : FFJORDFlow
        Trained in place; at return it holds the weights chosen (best validation weights
        with a validation set, else the last good ones, or their average).
    u_train, w_train : Tensor
        Standardised training rows and their weights.
    u_val, w_val : Tensor or None
        Validation rows and weights (early stopping), or ``None``.
    config : FitConfig
        The optimisation settings.
    rng : numpy Generator
        Order of the mini-batches.
    generator : torch.Generator
        Hutchinson probes and flow-matching draws.
    log_det_offset : float
        Constant added to log-likelihoods so that reported training losses are in the
        user's units (the standardisation's mean log-Jacobian over the training rows).
    val_log_det_offset : float or None
        The same for the validation scores (the validation rows' mean log-Jacobian);
        ``None``: ``log_det_offset``.
    optimizer_state : dict or None
        Adam state to resume from (``warm_start``).
    redraw : callable or None
        Called at the start of every epoch after the first for a fresh copy of the training
        rows (same order and weights): a new dequantisation draw of discrete columns.
    clock : callable or None
        Returns the current time in seconds: ``config.max_time`` and the ``time`` of the
        history's records are measured with it. ``None``: :func:`time.perf_counter` (as
        found in the :mod:`time` module when the call starts).
    progress : ProgressDisplay or None
        The fit's progress display, which names this phase and counts its epochs; the
        caller closes it. ``None``: a display of this call's own (a bar of
        ``config.max_iter`` epochs with ``config.verbose``), closed at return.
    ranks : Ranks or None
        The processes of a data-parallel fit, each training on its own share of the rows
        (``u_train``) with the same validation rows: the gradients are averaged, the epoch's
        sums added up, and the scores, solver gaps and ``clock`` (pass
        :meth:`Ranks.clock`) are rank 0's, so that every rank takes the same decisions.
        ``None``: one process.

    Returns
    -------
    TrainingResult
        ``stop_reason`` is one of ``'converged'``, ``'max_iter'``, ``'max_time'``,
        ``'interrupted'``, ``'diverged'`` or ``'solver_failed'``.
    """
    ranks = Ranks() if ranks is None else ranks
    params = [p for p in flow.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config, optimizer_state)
    # flow matching with several blocks may leave a block out of a mini-batch
    unused = config.training == "flow_matching" and len(flow.blocks) > 1
    objective = ranks.wrap(BatchObjective(flow), find_unused_parameters=unused)
    clock = time.perf_counter if clock is None else clock
    callbacks = _Callbacks.for_fit(flow, params, optimizer, config, clock)
    result = TrainingResult()
    validation = None
    if u_val is not None and u_val.shape[0] > 0:
        offset = log_det_offset if val_log_det_offset is None else val_log_det_offset
        validation = (u_val, w_val, offset)
    validated = validation is not None
    own_progress = progress is None
    if progress is None:
        progress = ProgressDisplay(config.verbose, config.max_iter)
    try:
        progress.phase(PHASE_NAMES[config.training])
        epochs = range(config.max_iter)
        if validated and config.score_initial and config.training == "likelihood":
            callbacks.stopping.start_from(_validation(flow, validation, config, result, ranks))
            if callbacks.budget.exceeded():
                result.stop_reason, epochs = "max_time", range(0)
        for epoch in epochs:
            if redraw is not None and epoch > 0:
                u_train = redraw()
            order = batch_order(u_train, config, rng)
            sums, time_up = run_epoch(
                objective, optimizer, u_train, w_train, order, config, generator,
                callbacks.last_good, callbacks.average, callbacks.budget, ranks,
            )  # fmt: skip
            sums = _summed(sums, ranks)
            if not all_finite(params):
                raise TrainingFailure("the weights became NaN or infinite")
            callbacks.last_good.save()
            lr = optimizer.param_groups[0]["lr"]
            record = _epoch_record(epoch, sums, config, log_det_offset, lr)
            rows = (u_train, w_train)
            config = _judge_epoch(flow, record, rows, validation, config, callbacks, result, ranks)
            result.best_loss = min(result.best_loss, record["train_loss"])
            record["time"] = callbacks.budget.elapsed()
            result.history.append(record)
            progress.epoch(record, config.training, validated)
            if time_up:
                result.stop_reason = "max_time"
                break
            if _converged(callbacks, validated, epoch + 1):
                result.stop_reason = "converged"
                break
    except (TrainingFailure, SolverError) as err:
        result.stop_reason = "diverged" if isinstance(err, TrainingFailure) else "solver_failed"
        result.message = str(err)
        if not (validated and callbacks.stopping.has_best):
            callbacks.last_good.restore()
    except KeyboardInterrupt:
        result.stop_reason = "interrupted"
        result.message = "training was interrupted by the user (KeyboardInterrupt)"
        callbacks.last_good.restore_if_not_finite()
    finally:
        if own_progress:
            progress.close()
    _finish(result, callbacks, validated)
    result.optimizer_state = optimizer.state_dict()
    return result
