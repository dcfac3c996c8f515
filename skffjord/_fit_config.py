"""The optimisation settings of one call of the training loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._defaults import AVERAGING_DECAY, LEARNING_RATE_SCHEDULE
from ._flow import EvalConfig, TrainConfig

__all__ = ["FitConfig"]


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings of one fit."""

    batch_size: int
    learning_rate_init: float
    alpha: float
    max_iter: int
    max_time: float | None
    tol: float
    n_iter_no_change: int
    shuffle: bool
    solver: TrainConfig
    validation_chunk: int = 4096
    verbose: int = 0
    training: str = "likelihood"
    #: Solver of the likelihood validation scores; ``None``: the training solver (exact
    #: trace). The estimator passes its evaluation solver, so that early stopping sees what
    #: ``score_samples`` will report, not a coarse training solver that may be exploited.
    validation_solver: EvalConfig | None = None
    #: Score the validation rows before the first epoch, and let those weights compete for
    #: the best (the likelihood phase of ``training='hybrid'`` cannot end worse than the
    #: flow-matching fit it starts from, as judged on the validation rows).
    score_initial: bool = False
    #: Add one fixed step to the training solver (up to ``max_fixed_steps``) after a
    #: likelihood epoch whose ``solver_gap`` exceeds this many nats per row: the fit has
    #: begun to exploit the coarse solver. ``None``: never; it applies only when the step
    #: count is ours (``TrainConfig.refinable``) and a validation solver is set.
    refine_solver_gap: float | None = None
    max_fixed_steps: int = 64
    #: Decay of an exponential moving average of the weights in flow-matching training
    #: (``None``: none; likelihood training is never averaged). With one, validation and the
    #: weights returned are the average's, not the last optimizer step's.
    averaging_decay: float | None = AVERAGING_DECAY
    #: Mixed precision of the training steps' forward passes (flow matching and likelihood
    #: solves, under ``torch.autocast``): ``torch.bfloat16`` runs the matrix products in
    #: bfloat16, with weights, ODE states, losses and the optimizer in float32. ``None``:
    #: float32 throughout. Validation and the solver gap are never autocast.
    autocast_dtype: torch.dtype | None = None
    #: ``'adaptive'``: lower Adam's step size when likelihood epochs stall, and once late in
    #: the phase (``skffjord._callbacks.LR_PATIENCE``); ``'constant'``:
    #: ``learning_rate_init`` throughout.
    learning_rate: str = LEARNING_RATE_SCHEDULE
    #: An epoch is as many whole passes over the training rows as give at least this many
    #: optimizer steps (small tables: one pass is one or two mini-batches, too few steps
    #: between two validations for patience counted in epochs to mean anything).
    min_steps_per_epoch: int = 1
