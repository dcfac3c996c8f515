"""Every default of the package in one place: the solver settings behind the estimator's
``solver`` and ``eval_solver`` parameters, and the fixed design choices that are not
parameters. Each says what it does and why.
"""

from __future__ import annotations

from typing import Any

#: The training solve (``solver``): torchdiffeq's ``method`` with its ``options`` (for a
#: fixed-step method, ``{"step_size": h}``; without one, four steps over ``[0, T]``, one more
#: whenever an epoch's ``solver_gap`` exceeds :data:`REFINE_SOLVER_GAP`), ``atol``, ``rtol``
#: and ``max_num_steps`` of an adaptive method, gradients by backpropagation or the
#: ``adjoint`` method, the precision of the training steps (``dtype``: 'auto', 'float32' or
#: 'bfloat16'), and RNODE's penalties on the field's kinetic energy and Jacobian, which keep
#: the dynamics smooth enough for the short training solve.
TRAIN_SOLVER_DEFAULTS: dict[str, Any] = {
    "method": "rk4",
    "options": None,
    "atol": 1e-5,
    "rtol": 1e-5,
    "max_num_steps": 1000,
    "adjoint": False,
    "dtype": "auto",
    "kinetic_energy_reg": 0.01,
    "jacobian_reg": 0.01,
}
#: The scoring and sampling solve (``eval_solver``): a per-row adaptive Dormand-Prince solve
#: (``'dopri5'``) or a fixed-step torchdiffeq ``method``, its tolerances and step cap, and
#: the precision of the solve (``dtype``: 'float32' or 'float64'; the map and the final sum
#: stay float64).
EVAL_SOLVER_DEFAULTS: dict[str, Any] = {
    "method": "dopri5",
    "options": None,
    "atol": 1e-6,
    "rtol": 1e-5,
    "max_num_steps": 10_000,
    "dtype": "float32",
}

#: End time ``T`` of each CNF block (the field is free to scale itself).
INTEGRATION_TIME = 1.0
#: Share of the epochs (or of ``max_time``) that ``training='hybrid'`` gives maximum
#: likelihood after flow matching: flow matching is cheap per step and reaches a good field
#: fast; the likelihood phase then fits what the matching objective does not see.
LIKELIHOOD_SHARE = 0.25
#: Distribution of the Hutchinson probe (Rademacher has the smaller variance).
HUTCHINSON_NOISE = "rademacher"
#: Step-size schedule of the likelihood epochs (see :class:`~skffjord._fit_config.FitConfig`).
LEARNING_RATE_SCHEDULE = "adaptive"
#: Decay of the weight average of flow-matching training (its stochastic regression targets
#: make the last step's weights noisy).
AVERAGING_DECAY = 0.999
#: Optimizer steps per epoch at least with ``max_iter=None``: an epoch of a small table is
#: then as many passes over its rows as make this many mini-batches (one pass of 200 rows is
#: a single step, too few between two validations for patience counted in epochs).
MIN_EPOCH_STEPS = 20
#: Epochs of a fit given ``max_iter=None`` and no ``max_time``.
DEFAULT_EPOCHS = 100
#: Epoch cap standing for "none" when ``max_time`` bounds the fit.
UNBOUNDED_EPOCHS = 10**9
#: The base mixture's component count is chosen by this many folds of cross-validation below
#: ``MIXTURE_SPLIT_ROWS`` training rows, on one held-out split from there on.
MIXTURE_CV_FOLDS = 5
MIXTURE_SPLIT_ROWS = 5_000
#: ``solver_gap`` (nats per row) of the fitted weights above which ``fit`` warns that the
#: training solver is being exploited: far above a sound training solve's error, below what
#: a fit that exploits a too coarse solver reaches within a few epochs.
SOLVER_GAP_WARNING = 1.0
#: ``solver_gap`` (nats per row) after a likelihood epoch above which the default fixed-step
#: training solve takes one step more (one more step, not twice as many: the gap is the
#: field's discretisation error, which one step usually brings back under the threshold).
REFINE_SOLVER_GAP = 1.0
