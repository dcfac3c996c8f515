"""Scores of held-out rows: per-row log-likelihoods, their weighted mean, the paired
significance test of two fits, the training solver's gap, and the flow-matching validation
loss."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from ._fit_config import FitConfig
from ._flow import EvalConfig, FFJORDFlow, TrainConfig
from ._flow_matching import flow_matching_residuals
from ._ode import SolverError

__all__ = [
    "flow_matching_validation_loss",
    "guarded_validation",
    "row_log_probs",
    "significant_gain",
    "solver_gap",
    "validation_log_probs",
    "validation_score",
]


def _scoring_solver(config: FitConfig) -> TrainConfig | EvalConfig:
    """The solver of the likelihood validation scores: the validation solver, else the
    training solver."""
    return config.validation_solver if config.validation_solver is not None else config.solver


@torch.no_grad()
def row_log_probs(
    flow: FFJORDFlow, u: Tensor, config: TrainConfig | EvalConfig, chunk: int
) -> Tensor:
    """Log-likelihood of each standardised row with the exact trace.

    Parameters
    ----------
    flow : FFJORDFlow
        The flow scored.
    u : Tensor of shape (n_rows, n_features)
        Standardised rows.
    config : TrainConfig or EvalConfig
        The evaluation solver (an ``EvalConfig``) or the training solver (a
        ``TrainConfig``, run with the exact trace and without regularisation).
    chunk : int
        Rows solved at a time.

    Returns
    -------
    Tensor of shape (n_rows,)
        The rows' log-likelihoods.
    """
    if isinstance(config, EvalConfig):

        def log_prob(rows: Tensor) -> Tensor:
            return flow.standardized_log_prob(rows, config)

    else:
        exact = replace(
            config, adjoint=False, trace_estimator="exact", kinetic_energy_reg=0.0, jacobian_reg=0.0
        )

        def log_prob(rows: Tensor) -> Tensor:
            return flow.train_log_prob(rows, exact, None)[0]

    parts = [log_prob(u[start : start + chunk]) for start in range(0, u.shape[0], chunk)]
    return torch.cat(parts) if parts else u.new_zeros(0)


def validation_score(
    flow: FFJORDFlow, u: Tensor, w: Tensor, config: TrainConfig | EvalConfig, chunk: int
) -> float:
    """Weighted mean of :func:`row_log_probs`.

    Parameters
    ----------
    flow : FFJORDFlow
        The flow scored.
    u, w : Tensor
        Standardised rows and their weights.
    config : TrainConfig or EvalConfig
        The solver (see :func:`row_log_probs`).
    chunk : int
        Rows solved at a time.

    Returns
    -------
    float
        The weighted mean log-likelihood.
    """
    return float((row_log_probs(flow, u, config, chunk) * w).sum()) / float(w.sum())


def guarded_validation(flow: FFJORDFlow, u: Tensor, w: Tensor, config: FitConfig) -> float:
    """Validation log-likelihood of standardised rows, ``-inf`` when it cannot be had.

    Parameters
    ----------
    flow : FFJORDFlow
        The flow scored.
    u, w : Tensor
        Standardised validation rows and their weights.
    config : FitConfig
        Its ``validation_solver`` scores the rows (else its training solver).

    Returns
    -------
    float
        The weighted mean log-likelihood, or ``-inf`` (no improvement) when the solver
        failed or the score is not finite.
    """
    try:
        score = validation_score(flow, u, w, _scoring_solver(config), config.validation_chunk)
    except SolverError:
        return -math.inf
    return score if math.isfinite(score) else -math.inf


def validation_log_probs(flow: FFJORDFlow, u: Tensor, config: FitConfig) -> np.ndarray | None:
    """Log-likelihood of each standardised row, ``None`` when it cannot be had.

    Parameters
    ----------
    flow : FFJORDFlow
        The flow scored.
    u : Tensor
        Standardised rows.
    config : FitConfig
        Its ``validation_solver`` scores the rows (else its training solver).

    Returns
    -------
    ndarray of shape (n_rows,) or None
        The log-likelihoods in float64, or ``None`` when the solver fails or a score is not
        finite.
    """
    try:
        values = row_log_probs(flow, u, _scoring_solver(config), config.validation_chunk)
    except SolverError:
        return None
    values = values.double().cpu().numpy()
    return values if np.all(np.isfinite(values)) else None


def significant_gain(after: np.ndarray | None, before: np.ndarray | None, w: np.ndarray) -> bool:
    """Whether the rows' log-likelihoods improved by more than validation noise (paired).

    Parameters
    ----------
    after, before : ndarray of shape (n_rows,) or None
        Per-row log-likelihoods of the two models (:func:`validation_log_probs`); ``None``:
        that model could not be scored.
    w : ndarray of shape (n_rows,)
        Row weights.

    Returns
    -------
    bool
        Whether the weighted mean of ``after - before`` exceeds its standard error. A model
        that could not be scored loses to one that could; when neither could, ``after``
        wins.
    """
    if after is None:  # keep the trained weights only when neither can be scored
        return before is None
    if before is None:
        return True
    p = w / w.sum()
    diff = after - before
    mean = float(p @ diff)
    se = float(np.sqrt(np.sum(p**2 * (diff - mean) ** 2)))
    return mean > se


def solver_gap(
    flow: FFJORDFlow, u: Tensor, w: Tensor, config: FitConfig, n_rows: int = 256
) -> float:
    """How much more log-likelihood the training solver credits than the evaluation solver.

    Near zero while the training solver is accurate for the current field; a large positive
    gap means the fit is being credited with likelihood that the evaluation solver (and so
    ``score_samples``) does not confirm: the coarse solver is being exploited.

    Parameters
    ----------
    flow : FFJORDFlow
        The flow scored.
    u, w : Tensor
        Standardised training rows and their weights; ``n_rows`` rows of positive weight are
        taken, spread over the data (the same every epoch), and weighted equally.
    config : FitConfig
        Its training solver and ``validation_solver`` (both run with the exact trace).
    n_rows : int
        Rows scored.

    Returns
    -------
    float
        Mean log-likelihood through the training solver minus the same through the
        evaluation solver, in nats per row; NaN when either solver fails or no row has a
        positive weight.
    """
    if isinstance(u, Tensor):
        u = u[w > 0]
        step = max(1, u.shape[0] // n_rows)
        u = u[::step][:n_rows]
    else:  # a view of rows read when indexed (every weight positive)
        u = u.spread(n_rows)
    if u.shape[0] == 0:
        return math.nan
    w = torch.ones(u.shape[0], dtype=u.dtype, device=u.device)  # a solver check: unweighted
    try:
        coarse = validation_score(flow, u, w, config.solver, config.validation_chunk)
        fine = validation_score(flow, u, w, config.validation_solver, config.validation_chunk)
    except SolverError:
        return math.nan
    return coarse - fine


def flow_matching_validation_loss(
    flow: FFJORDFlow, u: Tensor, w: Tensor, config: FitConfig
) -> float:
    """Flow-matching loss of the validation rows, with the same noise and times every call.

    The draws come from a generator seeded with a fixed seed, so that epochs compare on
    equal terms; no ODE is solved.

    Parameters
    ----------
    flow : FFJORDFlow
        The flow scored.
    u, w : Tensor
        Standardised validation rows and their weights.
    config : FitConfig
        Its ``validation_chunk`` rows are scored at a time.

    Returns
    -------
    float
        The weighted mean loss.
    """
    generator = torch.Generator(device=u.device)
    generator.manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for start in range(0, u.shape[0], config.validation_chunk):
            rows = slice(start, start + config.validation_chunk)
            residuals = flow_matching_residuals(flow, u[rows], generator)
            total += float((residuals * w[rows]).sum())
    return total / float(w.sum())
