"""One fit, start to end: the starting model, training, and the guard that keeps the start.

:func:`fit_flow` takes validated rows and resolved settings (:mod:`~skffjord._settings`)
and returns a :class:`FitOutcome` for the estimator to commit; it changes nothing else, so a
fit that raises leaves the previous model as it was.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from ._defaults import LIKELIHOOD_SHARE, SOLVER_GAP_WARNING
from ._distributed import Ranks
from ._flow import FFJORDFlow, TrainConfig
from ._ode import FIXED_GRID_METHODS
from ._progress import ProgressDisplay
from ._settings import Settings, fit_config
from ._start_model import StartModel, start_model
from ._streamed_rows import StreamedRows
from ._training import (
    FitConfig,
    TrainingResult,
    flow_matching_validation_loss,
    significant_gain,
    train_flow,
    validation_log_probs,
)
from ._training_rows import InMemoryRows

__all__ = ["FAILED", "FitOutcome", "fit_flow", "warn_solver_gap", "warn_stop"]

#: Stop reasons after which a fit goes no further.
FAILED = ("diverged", "solver_failed", "interrupted")


def _hybrid_epochs(max_iter: int) -> tuple[int, int]:
    """The epochs of the flow-matching phase and of the likelihood phase of a hybrid fit of
    ``max_iter`` epochs (the likelihood phase gets :data:`LIKELIHOOD_SHARE`, each at least
    one)."""
    n_likelihood = max(1, round(LIKELIHOOD_SHARE * max_iter))
    return max(1, max_iter - n_likelihood), n_likelihood


def _planned_epochs(params: dict, fit_cfg: FitConfig) -> int | None:
    """The progress display's total: the epochs of the whole fit, or ``None`` when only
    ``max_time`` bounds it."""
    # A fit bounded by the clock alone has no meaningful epoch total (the phases' epochs
    # take very different times), and a bar counting seconds would not count epochs: the
    # bar then shows the epochs done, their rate and the time elapsed, with no total.
    if params["max_iter"] is None and params["max_time"] is not None:
        return None
    if params["training"] == "hybrid":
        return sum(_hybrid_epochs(fit_cfg.max_iter))
    return fit_cfg.max_iter


def _train_hybrid(
    flow: FFJORDFlow,
    data: tuple,
    fit_cfg: FitConfig,
    optimizer_state: dict | None,
    common: dict,
    start: float,
) -> TrainingResult:
    """Flow matching, then maximum likelihood for :data:`LIKELIHOOD_SHARE` of the budget
    (``start``: when the fit began; ``common`` holds the fit's progress display, and its
    clock across processes)."""
    n_matching, n_likelihood = _hybrid_epochs(fit_cfg.max_iter)
    clock = common.get("clock") or time.perf_counter
    matching_time = None
    if fit_cfg.max_time is not None:
        matching_time = (1 - LIKELIHOOD_SHARE) * fit_cfg.max_time - (clock() - start)
    first = TrainingResult(optimizer_state=optimizer_state)
    if matching_time is None or matching_time > 0:
        phase = replace(
            fit_cfg, training="flow_matching", max_iter=n_matching, max_time=matching_time
        )
        first = train_flow(flow, *data, phase, optimizer_state=optimizer_state, **common)
    for record in first.history:
        record["phase"] = "flow_matching"
    if first.stop_reason in FAILED:
        return first
    # the likelihood phase's epochs follow at once on the bar
    common["progress"].skip(n_matching - first.n_iter)
    remaining = None
    if fit_cfg.max_time is not None:
        remaining = max(fit_cfg.max_time - (clock() - start), 1e-3)
    phase = replace(fit_cfg, training="likelihood", max_iter=n_likelihood, max_time=remaining)
    phase = replace(phase, score_initial=True)
    second = train_flow(flow, *data, phase, optimizer_state=first.optimizer_state, **common)
    for record in second.history:
        record["phase"] = "likelihood"
        record["epoch"] += first.n_iter
        record["time"] += first.history[-1]["time"] if first.history else 0.0
    second.history = first.history + second.history
    second.n_iter += first.n_iter
    return second


@dataclass
class FitOutcome:
    """What a fit produced, for the estimator's fitted attributes: the trained model and
    the training record."""

    model: StartModel
    result: TrainingResult
    #: Number of processes that trained the model together.
    world_size: int = 1


def fit_flow(
    rows: InMemoryRows | StreamedRows,
    settings: Settings,
    *,
    resolution: np.ndarray,
    interval: np.ndarray,
    device: torch.device,
    seeds: tuple[int, int, int, int],
    previous: StartModel | None = None,
    optimizer_state: dict | None = None,
) -> FitOutcome:
    """Fit on checked training ``rows``; ``previous`` (a warm refit) starts from that model.

    Under an initialised ``torch.distributed`` process group the fit is data-parallel (see
    :mod:`skffjord._distributed`): every rank is given the same rows and settings, starts
    from rank 0's starting model and trains on its own share of the training rows.
    """
    params = settings.params
    ranks = Ranks.current()
    rows.check_same_on_ranks(ranks, params)
    init_seed, data_seed, probe_seed, noise_seed = ranks.agreed(seeds)
    rng = np.random.default_rng(data_seed)
    early = bool(params["early_stopping"])
    fraction = float(params["validation_fraction"]) if early else None
    n_train = rows.split(fraction, rng)
    if params["batch_size"] != "auto" and params["batch_size"] > n_train:
        warnings.warn(
            f"Got batch_size={params['batch_size']} larger than the {n_train} training "
            "rows; it is clipped.",
            UserWarning,
            stacklevel=4,
        )
    autocast = torch.bfloat16 if settings.train_dtype == "bfloat16" else None
    # validation in the training precision (the flow being trained is float32)
    validation_solver = replace(settings.eval_solver, dtype=None)
    fit_cfg = fit_config(params, n_train, settings.solver, validation_solver, autocast)
    # each rank's mini-batches add up to batch_size
    fit_cfg = replace(fit_cfg, batch_size=max(1, fit_cfg.batch_size // ranks.world_size))
    clock = ranks.fit_clock()
    start = (clock or time.perf_counter)()
    # one progress display for the whole fit, closed however the fit ends
    with ProgressDisplay(fit_cfg.verbose, _planned_epochs(params, fit_cfg)) as progress:
        noise = np.random.default_rng(noise_seed)
        if previous is not None:
            started = replace(previous, flow=copy.deepcopy(previous.flow))
        else:
            progress.phase("starting model")  # choosing the map and the base
            started = start_model(
                *rows.start_rows(),
                resolution=resolution,
                interval=interval,
                structure=settings.structure,
                n_components=params["n_components"],
                validation_fraction=float(params["validation_fraction"]),
                rng=rng,
                init_seed=init_seed,
                noise_seed=noise_seed + 1,
            )
        started = ranks.agreed(started)  # every rank starts from rank 0's model
        probe_seed = ranks.own_seed(probe_seed)
        run = rows.prepared(
            started.flow,
            device,
            probe_seed=probe_seed,
            resolution=resolution,
            noise=noise,
            ranks=ranks,
            data_seed=data_seed,
            validate=early,
        )
        flow, data = run.flow, run.data
        common = dict(
            rng=rng,
            generator=run.generator,
            log_det_offset=run.log_det_offset,
            val_log_det_offset=run.val_log_det_offset,
            redraw=run.redraw,
            progress=progress,
        )
        if ranks.active:
            common.update(clock=clock, ranks=ranks)
        # with early stopping the starting model competes too (the classical model of the
        # fixed map and base, the field being zero; or the fitted model in a warm refit): the
        # fit keeps it unless the validation rows improve by more than their noise
        initial = None
        if early:
            initial = (
                validation_log_probs(flow, data[2], fit_cfg),
                copy.deepcopy(flow.state_dict()),
            )
        if params["training"] != "hybrid":
            fit_cfg = replace(fit_cfg, score_initial=previous is not None)
            result = train_flow(flow, *data, fit_cfg, optimizer_state=optimizer_state, **common)
        else:
            result = _train_hybrid(flow, data, fit_cfg, optimizer_state, common, start)
        if initial is not None:
            end = validation_log_probs(flow, data[2], fit_cfg)
            w_val = run.val_weight
            offset = common["val_log_det_offset"]
            if not ranks.agreed(significant_gain(end, initial[0], w_val)):
                flow.load_state_dict(initial[1])
                result.final_solver_gap = math.nan
                if params["training"] == "flow_matching":  # validation scores are -losses there
                    score = -flow_matching_validation_loss(flow, data[2], data[3], fit_cfg)
                else:
                    score = float(np.average(initial[0], weights=w_val)) + offset
                result.best_validation_score = ranks.agreed_float(score)
            elif result.best_validation_score is None and end is not None:
                score = float(np.average(end, weights=w_val)) + offset
                result.best_validation_score = ranks.agreed_float(score)

    # the fitted model with its fixed map and base back in place
    flow = run.restored(device)
    return FitOutcome(replace(started, flow=flow), result, ranks.world_size)


_FIXES = (
    "lower learning_rate_init; raise solver['kinetic_energy_reg'] and "
    "solver['jacobian_reg'] (e.g. to 0.1) for smoother dynamics; use a fixed-step "
    "solver['method'] such as 'rk4'; loosen solver['atol'] and solver['rtol'] or raise "
    "solver['max_num_steps']; check the data for extreme values or near-duplicate columns"
)


def warn_solver_gap(gap: float, solver: TrainConfig, early_stopping: bool) -> None:
    """Warn when the fitted weights' ``solver_gap`` shows an exploited training solver."""
    if gap > SOLVER_GAP_WARNING:
        advice = (
            "more training steps (a smaller solver['options']['step_size'])"
            if solver.method in FIXED_GRID_METHODS
            else "tighter training tolerances (solver['atol'], solver['rtol'])"
        )
        if not early_stopping:
            advice += " or early_stopping=True (validated through the evaluation solver)"
        warnings.warn(
            f"The training solver credits the fitted model with {gap:.2f} nats per row "
            "more log-likelihood than the evaluation solver finds (solver_gap): the fit "
            "has probably learned to exploit a too coarse training solver, and "
            f"score_samples reports the lower, correct values. Use {advice}.",
            ConvergenceWarning,
            stacklevel=3,
        )


def warn_stop(result: TrainingResult, max_iter: int | None, eval_method: str) -> None:
    """Warn when training stopped early (it failed, was interrupted or ran out of epochs),
    and when the evaluation solver (``eval_method``) failed on the validation rows."""
    if result.validation_failures:
        warnings.warn(
            f"The evaluation solver (eval_solver['method']={eval_method!r}) could not "
            f"score the validation rows {result.validation_failures} time(s); those "
            "epochs counted as no improvement for early stopping. Loosen "
            "eval_solver['atol'] and eval_solver['rtol'] or raise "
            "eval_solver['max_num_steps'].",
            ConvergenceWarning,
            stacklevel=3,
        )
    reason, message = result.stop_reason, result.message
    if reason in ("diverged", "solver_failed"):
        warnings.warn(
            f"Training stopped after {result.n_iter} complete epoch(s): {message}. The "
            f"model keeps the last good weights. To avoid this: {_FIXES}.",
            ConvergenceWarning,
            stacklevel=3,
        )
    elif reason == "interrupted":
        warnings.warn(
            "Training interrupted by the user; the model keeps the best weights so far.",
            UserWarning,
            stacklevel=3,
        )
    elif reason == "max_iter":
        warnings.warn(
            f"Maximum iterations ({max_iter}) reached and the optimization hasn't converged yet.",
            ConvergenceWarning,
            stacklevel=3,
        )
