"""ODE integration: the one entry point to torchdiffeq, and a per-row adaptive solver."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_GRID_METHODS",
    "SolverError",
    "SolverWarning",
    "integrate",
    "sets_grid",
]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_GRID_METHODS = ("euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams")

#: Number of fixed steps over [0, T] when a fixed-grid method is given no step size.
DEFAULT_FIXED_STEPS = 10
#: The same for likelihood training solves (FFJORDDensity's ``solver['method']``): fewer, coarser
#: steps train faster at equal budget (scores never come from the training solver), but a
#: long likelihood fit learns to exploit too coarse a solver's discretisation error: the
#: training loss keeps improving while the exact log-likelihood collapses. RNODE's penalties
#: (on by default) keep the field smooth enough for 4 RK4 steps (16 function evaluations per
#: solve), and FFJORDDensity adds one step during a fit whenever the ``solver_gap`` shows
#: exploitation. Step counts are compared at equal time by ``python benchmarks/defaults.py
#: --dataset gas --budget 600 --configs ...`` with ``solver['options']`` per configuration.
TRAINING_FIXED_STEPS = 4


class SolverError(RuntimeError):
    """The ODE solver could not finish (step size underflow, step cap, non-finite state).

    Raised by ``fit``, ``sample`` and ``trajectory`` with a message that says which of these
    happened (``score_samples`` and ``score`` instead give such rows ``-inf`` and warn with
    :class:`SolverWarning`). A ``fit`` that raises it leaves the previously fitted model in
    place. The usual remedies are a looser tolerance, a larger step cap
    (``solver={"max_num_steps": ...}``, or ``eval_solver={"max_num_steps": ...}`` for
    scoring) or a check of the data for extreme values.

    Parameters
    ----------
    message : str
        What failed.
    rows : sequence of int or None, default=None
        Indices, within the solved batch, of the rows that failed, where the solver knows
        them (the per-row solver does); other rows of the batch may fail later in the solve.

    Examples
    --------
    A step cap far too small for the adaptive solver:

    >>> import numpy as np
    >>> from skffjord import FFJORDDensity, SolverError
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> model = FFJORDDensity(hidden_layer_sizes=(16, 16), max_iter=5, random_state=0)
    >>> model = model.fit(X)
    >>> model.set_params(eval_solver={"max_num_steps": 2})
    FFJORDDensity(eval_solver={'max_num_steps': 2}, ...)
    >>> model.trajectory(X[:5])
    Traceback (most recent call last):
        ...
    skffjord.SolverError: the ODE solver failed on rows 0, 1, 2, 3 and 4 of X: the per-row ...
    >>> model.set_params(eval_solver=None).trajectory(X[:5]).shape
    (11, 5, 2)
    """

    def __init__(self, message: str, rows: list[int] | None = None) -> None:
        super().__init__(message)
        self.rows = rows


class SolverWarning(UserWarning):
    """The ODE solver could not integrate some rows, which score ``-inf``.

    Issued by ``score_samples`` (and so ``score``, ``decision_function`` and ``predict``)
    when the evaluation solver fails on some rows, typically rows far outside the training
    data (values too large for the solve's precision) or rows whose solve reaches the step
    cap. The message names the rows; every other row is scored as if it had been scored
    alone. Turn it into an error with ``warnings.simplefilter("error", SolverWarning)``.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from skffjord import FFJORDDensity, SolverWarning
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> model = FFJORDDensity(hidden_layer_sizes=(16,), max_iter=2, random_state=0).fit(X)
    >>> rows = np.array([[0.0, 0.0], [1e300, 0.0]])
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     scores = model.score_samples(rows)
    >>> bool(np.isfinite(scores[0])), scores[1]
    (True, np.float64(-inf))
    >>> any(issubclass(w.category, SolverWarning) for w in caught)
    True
    """


def _solver_options(
    method: str,
    t_span: float,
    options: dict | None,
    max_num_steps: int,
    fixed_steps: int = DEFAULT_FIXED_STEPS,
) -> dict:
    """Copy the user's options and add our defaults (never mutate the caller's dict)."""
    opts = dict(options or {})
    if method in ADAPTIVE_METHODS:
        opts.setdefault("max_num_steps", max_num_steps)
    elif method in FIXED_GRID_METHODS and not sets_grid(opts):
        opts["step_size"] = abs(t_span) / fixed_steps
    return opts


def sets_grid(options: dict | None) -> bool:
    """Whether torchdiffeq ``options`` fix a fixed-grid method's steps themselves (a
    ``step_size`` or ``grid_constructor``); otherwise ``fixed_steps`` decides."""
    return bool(options) and ("step_size" in options or "grid_constructor" in options)


def solver_error_from(err: AssertionError) -> SolverError:
    """Translate torchdiffeq's assertion into a :class:`SolverError` that says what failed."""
    text = str(err)
    if "underflow" in text:
        what = "the adaptive step size underflowed (the dynamics became stiff)"
    elif "max_num_steps" in text:
        what = "the adaptive solver reached its step cap (max_num_steps)"
    elif "non-finite" in text:
        what = "the ODE state became non-finite (NaN or inf)"
    else:
        what = f"the ODE solver failed ({text[:200]})"
    return SolverError(what)


def integrate(
    func: nn.Module,
    state: tuple[Tensor, ...],
    t0: float,
    t1: float,
    *,
    method: str,
    atol: float | list[float],
    rtol: float | list[float],
    options: dict | None = None,
    adjoint: bool = False,
    max_num_steps: int = 1000,
    fixed_steps: int = DEFAULT_FIXED_STEPS,
) -> tuple[Tensor, ...]:
    """Integrate ``d state / dt = func(t, state)`` from ``t0`` to ``t1`` with torchdiffeq.

    Parameters
    ----------
    func : nn.Module
        ``func(t, state) -> tuple of derivatives``; holds every trainable tensor so that
        the adjoint method finds them.
    state : tuple of Tensor
        Initial state.
    t0, t1 : float
        Integration interval (``t1 < t0`` integrates backwards).
    method : str
        A torchdiffeq method name.
    atol, rtol : float or list of float
        Tolerances of adaptive methods (one per state tensor when lists).
    options : dict or None
        torchdiffeq ``options``; copied, never modified.
    adjoint : bool
        Gradients by the adjoint method (constant memory) instead of backprop.
    max_num_steps : int
        Step cap of adaptive methods.
    fixed_steps : int
        Steps over the interval for a fixed-grid method given no ``step_size``.

    Returns
    -------
    tuple of Tensor
        The state at ``t1``.

    Raises
    ------
    SolverError
        When the step size underflows, the step cap is hit or the state turns non-finite.
    """
    ref = state[0]
    t = torch.tensor([t0, t1], dtype=ref.dtype, device=ref.device)
    opts = _solver_options(method, t1 - t0, options, max_num_steps, fixed_steps)
    if isinstance(atol, list):
        atol = tuple(atol)
    if isinstance(rtol, list):
        rtol = tuple(rtol)
    solve = odeint_adjoint if adjoint else odeint
    kwargs = {}
    if adjoint:
        kwargs["adjoint_params"] = tuple(p for p in func.parameters() if p.requires_grad)
    try:
        out = solve(func, state, t, method=method, atol=atol, rtol=rtol, options=opts, **kwargs)
    except AssertionError as err:
        raise solver_error_from(err) from err
    return tuple(s[-1] for s in out)
