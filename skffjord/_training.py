"""The maximum-likelihood training loop (knows nothing of scikit-learn)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from ._flow import EvalConfig, FFJORDFlow, TrainConfig
from ._flow_matching import flow_matching_loss, flow_matching_residuals
from ._ode import SolverError, solver_error_from

__all__ = [
    "FitConfig",
    "TrainingFailure",
    "TrainingResult",
    "significant_gain",
    "train_flow",
    "validation_log_probs",
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
    averaging_decay: float | None = None
    #: Mixed precision of the training steps' forward passes (flow matching and likelihood
    #: solves, under ``torch.autocast``): ``torch.bfloat16`` runs the matrix products in
    #: bfloat16, with weights, ODE states, losses and the optimizer in float32. ``None``:
    #: float32 throughout. Validation and the solver gap are never autocast.
    autocast_dtype: torch.dtype | None = None
    #: ``'adaptive'``: lower Adam's step size when likelihood epochs stall, and once late in
    #: the phase (:data:`LR_PATIENCE`); ``'constant'``: ``learning_rate_init`` throughout.
    learning_rate: str = "constant"
    #: An epoch is as many whole passes over the training rows as give at least this many
    #: optimizer steps (small tables: one pass is one or two mini-batches, too few steps
    #: between two validations for patience counted in epochs to mean anything).
    min_steps_per_epoch: int = 1


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


class TrainingFailure(Exception):
    """Internal signal: the loss or the weights turned non-finite."""


def _snapshot(flow: FFJORDFlow) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


class _Checkpoint:
    """A copy of the trainable parameters, refreshed in place with one fused copy (it is
    taken before every optimizer step, where a state-dict snapshot's per-tensor clones cost
    several times more)."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.saved = [p.detach().clone() for p in params]

    @torch.no_grad()
    def save(self) -> None:
        torch._foreach_copy_(self.saved, [p.detach() for p in self.params])

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self.params, self.saved)


class _StepSizeSchedule:
    """``learning_rate='adaptive'`` in maximum-likelihood epochs (see :data:`LR_PATIENCE`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: FitConfig) -> None:
        self.optimizer = optimizer
        self.active = config.learning_rate == "adaptive" and config.training == "likelihood"
        self.patience = min(LR_PATIENCE, config.n_iter_no_change)
        self.max_time = config.max_time
        self.max_iter = config.max_iter
        self.reductions = 0

    def lowered(self, no_improve: int, elapsed: float, epochs: int) -> bool:
        """Lower the step size after an epoch if it stalled long enough (or, never lowered
        yet, the phase is late), not before :data:`LR_EARLIEST_SHARE` of the phase's budget
        (``elapsed`` seconds of ``max_time``, ``epochs`` of ``max_iter``: whichever is
        further along); whether it did."""
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


def _all_finite(tensors: list[Tensor]) -> bool:
    """Whether every element is finite, in a few fused operations: ``x * 0`` is 0 for a
    finite ``x`` and NaN for an infinite or NaN one."""
    if not tensors:
        return True
    zeros = torch._foreach_mul(tensors, 0.0)
    return bool(torch.stack(torch._foreach_norm(zeros)).isfinite().all())


def _adam(params: list[Tensor], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, fused into one kernel per tensor where this PyTorch and device support it
    (about a third of the per-step cost of the per-tensor loop for these small networks,
    which matters to flow matching's short steps); the usual implementation otherwise."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class WeightAverage:
    """Exponential moving average of parameters, with the usual warm-up: the decay after
    ``k`` updates is ``min(decay, (1 + k) / (10 + k))``, so the first steps' weights, far from
    the later ones, fade quickly."""

    def __init__(self, params: list[Tensor], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.average = [p.detach().clone() for p in params]
        self.n_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.n_updates += 1
        decay = min(self.decay, (1 + self.n_updates) / (10 + self.n_updates))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the parameters for the duration, the trained ones after."""
        trained = _Checkpoint(self.params)
        self.apply()
        try:
            yield
        finally:
            trained.restore()

    @torch.no_grad()
    def apply(self) -> None:
        """Copy the averaged weights into the parameters for good."""
        torch._foreach_copy_(self.params, self.average)


def _autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing for ``None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum() / weights.sum()


@torch.no_grad()
def row_log_probs(
    flow: FFJORDFlow, u: Tensor, config: TrainConfig | EvalConfig, chunk: int
) -> Tensor:
    """Log-likelihood of each standardised row with the exact trace, through the evaluation
    solver (an ``EvalConfig``) or the training solver (a ``TrainConfig``), ``chunk`` rows at
    a time."""
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
    """Weighted mean of :func:`row_log_probs`."""
    return float((row_log_probs(flow, u, config, chunk) * w).sum()) / float(w.sum())


def guarded_validation(flow: FFJORDFlow, u: Tensor, w: Tensor, config: FitConfig) -> float:
    """Validation log-likelihood of standardised rows (``config.validation_solver``, else
    the training solver), or ``-inf`` (no improvement) when the weights cannot be scored:
    the solver failed or the score is not finite."""
    solver = config.validation_solver if config.validation_solver is not None else config.solver
    try:
        score = validation_score(flow, u, w, solver, config.validation_chunk)
    except SolverError:
        return -math.inf
    return score if math.isfinite(score) else -math.inf


def validation_log_probs(flow: FFJORDFlow, u: Tensor, config: FitConfig) -> np.ndarray | None:
    """Log-likelihood of each standardised row (``config.validation_solver``), or ``None``
    when the solver fails or a score is not finite."""
    solver = config.validation_solver if config.validation_solver is not None else config.solver
    try:
        values = row_log_probs(flow, u, solver, config.validation_chunk)
    except SolverError:
        return None
    values = values.double().cpu().numpy()
    return values if np.all(np.isfinite(values)) else None


def significant_gain(after: np.ndarray | None, before: np.ndarray | None, w: np.ndarray) -> bool:
    """Whether the weighted mean of ``after - before`` exceeds its standard error: the
    rows' log-likelihoods improved by more than validation noise (paired). ``None``: the
    model could not be scored."""
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
    """Mean log-likelihood of ``n_rows`` fixed training rows of positive weight ``w`` (the
    same every epoch, spread over the data, unweighted mean) through the training solver
    minus the same through the evaluation solver (both exact trace), in nats per row.

    Near zero while the training solver is accurate for the current field; a large positive
    gap means the fit is being credited with likelihood that the evaluation solver (and so
    ``score_samples``) does not confirm: the coarse solver is being exploited. NaN when
    either solver fails.
    """
    u = u[w > 0]
    step = max(1, u.shape[0] // n_rows)
    u = u[::step][:n_rows]
    if u.shape[0] == 0:
        return math.nan
    w = torch.ones(u.shape[0], dtype=u.dtype, device=u.device)  # a solver check: unweighted
    try:
        coarse = validation_score(flow, u, w, config.solver, config.validation_chunk)
        fine = validation_score(flow, u, w, config.validation_solver, config.validation_chunk)
    except SolverError:
        return math.nan
    return coarse - fine


def _refined(config: FitConfig, gap: float) -> FitConfig:
    """``config`` with one more fixed step of the training solver when ``gap`` calls for it."""
    solver = config.solver
    if (
        config.refine_solver_gap is None
        or not solver.refinable
        or not gap > config.refine_solver_gap
        or solver.fixed_steps + 1 > config.max_fixed_steps
    ):
        return config
    return replace(config, solver=replace(solver, fixed_steps=solver.fixed_steps + 1))


def flow_matching_validation_loss(
    flow: FFJORDFlow, u: Tensor, w: Tensor, config: FitConfig
) -> float:
    """Flow-matching loss of the validation rows with the same noise and times every epoch
    (a fixed seed), so that epochs compare on equal terms; no ODE is solved."""
    generator = torch.Generator(device=u.device)
    generator.manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for start in range(0, u.shape[0], config.validation_chunk):
            rows = slice(start, start + config.validation_chunk)
            residuals = flow_matching_residuals(flow, u[rows], generator)
            total += float((residuals * w[rows]).sum())
    return total / float(w.sum())


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
) -> TrainingResult:
    """Fit ``flow`` by maximum likelihood with Adam, in place.

    Parameters
    ----------
    flow : FFJORDFlow
        Trained in place; at return it holds the weights chosen (best validation weights
        with a validation set, else the last good ones).
    u_train, w_train : Tensor
        Standardised training rows and their weights.
    u_val, w_val : Tensor or None
        Validation rows and weights (early stopping), or ``None``.
    config : FitConfig
    rng : numpy Generator
        Order of the mini-batches.
    generator : torch.Generator
        Hutchinson probes.
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

    Returns
    -------
    TrainingResult
        ``stop_reason`` is one of ``'converged'``, ``'max_iter'``, ``'max_time'``,
        ``'interrupted'``, ``'diverged'`` or ``'solver_failed'``.
    """
    params = [p for p in flow.parameters() if p.requires_grad]
    optimizer = _adam(params, config.learning_rate_init, config.alpha)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:  # the current settings win over the saved ones
            group["lr"] = config.learning_rate_init
            group["weight_decay"] = config.alpha
    result = TrainingResult()
    n = u_train.shape[0]
    batch_size = min(config.batch_size, n)
    use_validation = u_val is not None and u_val.shape[0] > 0
    if val_log_det_offset is None:
        val_log_det_offset = log_det_offset
    last_good = _Checkpoint(params)
    best_state = _snapshot(flow)
    # Flow matching only: its loss is a noisy regression whose raw weights jitter about the
    # optimum, while the likelihood phase is still making steady progress at the end of a
    # budget, which an average lags behind.
    average = None
    if config.averaging_decay is not None and config.training == "flow_matching":
        average = WeightAverage(params, config.averaging_decay)
    best_score = -math.inf
    best_gap = last_gap = math.nan  # solver_gap of the best / the last epoch's weights
    no_improve = 0
    schedule = _StepSizeSchedule(optimizer, config)
    start = time.perf_counter()
    progress = None
    if config.verbose:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.max_iter, desc="FFJORD fit", unit="epoch")

    try:
        epochs = range(config.max_iter)
        if use_validation and config.score_initial and config.training == "likelihood":
            best_score = guarded_validation(flow, u_val, w_val, config) + val_log_det_offset
            result.validation_failures += best_score == -math.inf
            if config.max_time is not None and time.perf_counter() - start > config.max_time:
                result.stop_reason, epochs = "max_time", range(0)
        for epoch in epochs:
            if redraw is not None and epoch > 0:
                u_train = redraw()
            # whole passes over the rows, as many as make min_steps_per_epoch batches
            passes = max(1, math.ceil(config.min_steps_per_epoch / math.ceil(n / batch_size)))
            order = np.concatenate(
                [rng.permutation(n) if config.shuffle else np.arange(n) for _ in range(passes)]
            )
            order_t = torch.as_tensor(order, device=u_train.device)
            loss_sum = weight_sum = 0.0
            nfe_sum = nfe_back_sum = n_batches = 0
            time_up = False
            for b in range(0, len(order), batch_size):
                idx = order_t[b : b + batch_size]
                ub, wb = u_train[idx], w_train[idx]
                if float(wb.sum()) <= 0:
                    continue
                optimizer.zero_grad(set_to_none=True)
                with _autocast(config.autocast_dtype, ub.device):
                    if config.training == "flow_matching":
                        loss = nll = flow_matching_loss(flow, ub, wb, generator)
                        dynamics = []
                    else:
                        logp, reg, dynamics = flow.train_log_prob(ub, config.solver, generator)
                        nll = -_weighted_mean(logp, wb)
                        loss = nll + _weighted_mean(reg, wb)
                if not torch.isfinite(loss):
                    raise TrainingFailure("the training loss became NaN or infinite")
                nfe_forward = sum(d.nfe for d in dynamics)
                try:
                    loss.backward()
                except AssertionError as err:  # the adjoint's backward solve failed
                    raise solver_error_from(err) from err
                # the adjoint re-evaluates the field backwards; backprop does not.
                nfe_back = sum(d.nfe for d in dynamics) - nfe_forward
                if not _all_finite([p.grad for p in params if p.grad is not None]):
                    raise TrainingFailure("the gradients became NaN or infinite")
                last_good.save()
                optimizer.step()
                if average is not None:
                    average.update()
                batch_w = float(wb.sum())
                loss_sum += nll.item() * batch_w
                weight_sum += batch_w
                nfe_sum += nfe_forward
                nfe_back_sum += nfe_back
                n_batches += 1
                if config.max_time is not None and time.perf_counter() - start > config.max_time:
                    time_up = True
                    break
            if not _all_finite(params):
                raise TrainingFailure("the weights became NaN or infinite")
            last_good.save()
            train_loss = loss_sum / max(weight_sum, 1e-300)
            if config.training == "likelihood":
                train_loss -= log_det_offset  # a negative log-likelihood in the user's units
            record = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "valid_score": math.nan,
                "nfe": nfe_sum / max(n_batches, 1),
                "nfe_backward": nfe_back_sum / max(n_batches, 1),
                "n_steps": n_batches,
                "solver_gap": math.nan,
                "time": time.perf_counter() - start,
                "learning_rate": optimizer.param_groups[0]["lr"],
            }
            # the weights judged (and kept as the best) are the average's, when there is one
            with average.applied() if average is not None else nullcontext():
                if config.training == "likelihood" and config.validation_solver is not None:
                    record["solver_gap"] = solver_gap(flow, u_train, w_train, config)
                    config = _refined(config, record["solver_gap"])
                last_gap = record["solver_gap"]
                result.n_iter = epoch + 1
                if use_validation:
                    if config.training == "flow_matching":
                        score = -flow_matching_validation_loss(flow, u_val, w_val, config)
                    else:
                        score = guarded_validation(flow, u_val, w_val, config) + val_log_det_offset
                        result.validation_failures += score == -math.inf
                    record["valid_score"] = score
                    if score > best_score + config.tol:
                        no_improve = 0
                    else:
                        no_improve += 1
                    if score > best_score:
                        best_score = score
                        best_state = _snapshot(flow)
                        best_gap = record["solver_gap"]
                elif config.training == "likelihood":
                    if train_loss < result.best_loss - config.tol:
                        no_improve = 0
                    else:
                        no_improve += 1
            # (flow matching without validation runs to max_iter / max_time: its per-epoch
            # loss is a Monte Carlo estimate too noisy to compare against tol)
            result.best_loss = min(result.best_loss, train_loss)
            record["time"] = time.perf_counter() - start
            result.history.append(record)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    loss=f"{train_loss:.4f}",
                    valid=f"{record['valid_score']:.4f}",
                    nfe=f"{record['nfe']:.0f}",
                )
            if time_up:
                result.stop_reason = "max_time"
                break
            # (not while every validation has failed: the step size is not what is wrong)
            scored = not use_validation or best_score > -math.inf
            if scored and schedule.lowered(no_improve, time.perf_counter() - start, epoch + 1):
                no_improve = 0
                if use_validation:
                    flow.load_state_dict(best_state)  # go on from the best weights so far
            if no_improve >= config.n_iter_no_change:
                result.stop_reason = "converged"
                break
    except (TrainingFailure, SolverError) as err:
        result.stop_reason = "diverged" if isinstance(err, TrainingFailure) else "solver_failed"
        result.message = str(err)
        if not (use_validation and best_score > -math.inf):
            last_good.restore()
    except KeyboardInterrupt:
        result.stop_reason = "interrupted"
        result.message = "training was interrupted by the user (KeyboardInterrupt)"
        if not _all_finite(params):
            last_good.restore()
    finally:
        if progress is not None:
            progress.close()

    if use_validation and best_score > -math.inf:
        flow.load_state_dict(best_state)
        result.best_validation_score = best_score
        result.final_solver_gap = best_gap
    elif result.stop_reason in ("max_iter", "max_time", "converged", "interrupted"):
        # without validation the fit ends on the average, also when interrupted (Ctrl-C
        # keeps the model that a finished fit would have returned so far)
        if average is not None and _all_finite(average.average):
            average.apply()
        if result.stop_reason != "interrupted":
            result.final_solver_gap = last_gap  # the weights at the end of the last epoch
    result.optimizer_state = optimizer.state_dict()
    return result
