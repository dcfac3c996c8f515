"""FFJORDDensity: the scikit-learn estimator (glue between sklearn and the torch flow)."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
from torch import nn

from ._base_distribution import fit_mixture_base
from ._bounds import BoundsMap, ChainedMap, check_bounds, outside_support, support
from ._dynamics import ACTIVATIONS, auto_hidden_layer_sizes
from ._flow import EvalConfig, FFJORDFlow, TrainConfig
from ._marginal import QuantileGaussianizer, quantile_knots
from ._ode import ADAPTIVE_METHODS, FIXED_GRID_METHODS, ROWWISE_TABLEAUS
from ._preprocessing import (
    choose_map,
    dequantize,
    find_discrete_features,
    fit_gaussianizing_map,
    kfold,
    snap_to_grid,
)
from ._training import (
    FitConfig,
    TrainingResult,
    flow_matching_validation_loss,
    significant_gain,
    train_flow,
    validation_log_probs,
)
from ._utils import (
    float64_tensor,
    make_generator,
    resolve_device,
    resolve_train_dtype,
    spawn_seeds,
)

__all__ = ["FFJORDDensity"]

_FITTED = (
    "flow_",
    "n_features_in_",
    "feature_names_in_",
    "n_iter_",
    "history_",
    "loss_curve_",
    "validation_scores_",
    "best_validation_score_",
    "best_loss_",
    "device_",
    "stop_reason_",
    "standardize_",
    "standardize_scores_",
    "discrete_features_",
    "bounds_",
    "_support",
    "n_components_",
    "n_components_scores_",
    "_grid_origin",
    "_optimizer_state",
    "_structure",
)

#: Optimizer steps per epoch at least with ``max_iter=None``: an epoch of a small table is then
#: as many passes over its rows as make this many mini-batches (one pass of 200 rows is a
#: single step, too few between two validations for patience counted in epochs).
MIN_EPOCH_STEPS = 20
#: The base mixture's component count is chosen by this many folds of cross-validation below
#: ``MIXTURE_SPLIT_ROWS`` training rows, on one held-out split from there on.
MIXTURE_CV_FOLDS = 5
MIXTURE_SPLIT_ROWS = 5_000
#: Epochs of a fit given ``max_iter=None`` and no ``max_time``.
DEFAULT_EPOCHS = 100
#: Epoch cap standing for "none" when ``max_time`` bounds the fit.
UNBOUNDED_EPOCHS = 10**9
#: Stop reasons after which a fit goes no further.
_FAILED = ("diverged", "solver_failed", "interrupted")

#: ``solver_gap`` (nats per row) of the fitted weights above which ``fit`` warns that the
#: training solver is being exploited.
SOLVER_GAP_WARNING = 1.0
#: ``solver_gap`` (nats per row) after a likelihood epoch above which the default fixed-step
#: training solver takes one step more (rather than doubling them: one step more uses 18.8
#: instead of 27.6 evaluations per solve on the GAS-shaped stand-in and 18.4 instead of 22.9
#: on the real BSDS300 patches, within the error bars in test NLL). Sound
#: 10-minute fits measured 0.002 to 0.14 with 8 steps and 0.008 to 0.27 with 5 steps and
#: RNODE (up to 0.52 after averaged flow matching). With
#: 4 steps and RNODE the stand-ins with d >= 8 start at 0.3 to 0.6 and the real BSDS300
#: patches at 0.95 (the flow-matching field's discretisation error, before any likelihood
#: step), rising to about 1 by 600 s with no loss in test NLL; at 0.5 the 43-d stand-in
#: refined to 8 steps at once (README, performance).
#: A 4-step fit without RNODE on the GAS-shaped stand-in broke down above 1.
REFINE_SOLVER_GAP = 1.0

_FIXES = (
    "lower learning_rate_init; raise kinetic_energy_reg and jacobian_reg (e.g. to 0.1) for "
    "smoother dynamics; use a fixed-step ode_solver such as 'rk4'; loosen atol/rtol or raise "
    "max_num_steps; check the data for extreme values or near-duplicate columns"
)


def _reject_non_numeric_columns(X: Any) -> None:
    """Name the columns of a DataFrame that are not numeric (before numpy conversion)."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None or not hasattr(dtypes, "items"):
        return
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    bad = [str(c) for c, dt in dtypes.items() if not (is_numeric_dtype(dt) or is_bool_dtype(dt))]
    if bad:
        raise ValueError(
            f"FFJORDDensity needs numeric features, but column(s) {bad} are not numeric. "
            "Encode categorical columns first (e.g. OneHotEncoder in a ColumnTransformer)."
        )


def _standardization_name(standardize: bool | str) -> str:
    """'affine', 'quantile' or 'none' for a ``standardize`` parameter."""
    if isinstance(standardize, str):
        return standardize
    return "affine" if standardize else "none"


def _to_cpu(obj: Any) -> Any:
    """Move every tensor of a nested dict/list structure to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@dataclass
class _Run:
    """A flow prepared for training: float32 on its device with the fixed map detached, and
    every row as the flow sees it (float64, with its log-Jacobian).

    With discrete columns (``resolution > 0``) the rows are one dequantised draw, and
    :meth:`redraw` gives the training rows a fresh draw every epoch.
    """

    flow: FFJORDFlow
    marginal: nn.Module | None
    base: nn.Module | None
    loc: np.ndarray
    scale: np.ndarray
    rows: np.ndarray
    row_log_det: np.ndarray
    sample_weight: np.ndarray
    generator: torch.Generator
    X: np.ndarray
    resolution: np.ndarray
    noise: np.random.Generator

    def data(self, train_idx: np.ndarray, val_idx: np.ndarray | None) -> tuple:
        """Training rows and weights, then validation rows and weights (or ``None``)."""
        device = self.flow.loc.device

        def as_tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.float32, device=device)

        return (
            as_tensor(self.rows[train_idx]),
            as_tensor(self.sample_weight[train_idx]),
            None if val_idx is None else as_tensor(self.rows[val_idx]),
            None if val_idx is None else as_tensor(self.sample_weight[val_idx]),
        )

    def mean_log_det(self, idx: np.ndarray) -> float:
        """Weighted mean log-Jacobian of the map over the rows ``idx``."""
        if not len(idx):
            return 0.0
        return float(np.average(self.row_log_det[idx], weights=self.sample_weight[idx]))

    def redraw(self, idx: np.ndarray) -> Callable[[], torch.Tensor] | None:
        """A function giving the rows ``idx`` freshly dequantised and mapped, as the flow
        sees them (float32 on its device); ``None`` without discrete columns."""
        if not np.any(self.resolution > 0):
            return None
        X = self.X[idx]
        device = self.flow.loc.device
        loc, scale = torch.as_tensor(self.loc), torch.as_tensor(self.scale)

        def draw() -> torch.Tensor:
            x = torch.as_tensor(dequantize(X, self.resolution, self.noise))
            with torch.no_grad():
                u = x if self.marginal is None else self.marginal.cpu()(x)[0]
            return ((u - loc) / scale).to(device=device, dtype=torch.float32)

        return draw


class FFJORDDensity(DensityMixin, BaseEstimator):
    """Density estimation with an FFJORD continuous normalizing flow.

    The model maps data ``x`` to a standard normal latent ``z(T)`` by integrating
    ``dz/dt = f(z, t)`` from ``z(0) = x``, where ``f`` is a time-conditioned neural network.
    The log-density follows the instantaneous change of variables,
    ``log p(x) = log N(z(T); 0, I) + int_0^T tr(df/dz) dt``. By default the field is
    first fitted by flow matching (no ODE solve) and then fine-tuned by maximum likelihood
    through a short RK4 solve with the exact trace and RNODE's penalties
    (``training='hybrid'``);
    :meth:`score_samples` uses the exact trace and a per-row adaptive solver, so scores
    are deterministic and, up to the solver tolerance (exactly with
    ``eval_dtype='float64'``), do not depend on which rows are scored together.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int or 'auto', default='auto'
        Widths of the hidden layers of ``f``. ``'auto'`` gives two layers of width ``8 d``
        rounded up to a multiple of 64 and kept within [128, 256] (how this was chosen:
        README, performance). With at most two hidden layers the exact trace has a closed
        form as cheap as a forward pass. A hidden layer narrower than the data is a
        bottleneck: the Hutchinson probe is then drawn there (lower variance).
    activation : {'softplus', 'tanh', 'elu', 'swish'}, default='softplus'
        Smooth non-linearity of ``f``.
    n_blocks : int, default=1
        Number of stacked CNF blocks, each with its own network.
    integration_time : float, default=1.0
        End time ``T`` of each block.
    training : {'likelihood', 'flow_matching', 'hybrid'}, default='hybrid'
        How the vector field is fitted. ``'likelihood'`` maximises the log-likelihood through
        the ODE solver (FFJORD). ``'flow_matching'`` regresses the field onto the velocities of
        straight paths between data rows and Gaussian draws (conditional flow matching): no
        ODE is solved in training, so an epoch costs one network pass per row, and the
        likelihood of the resulting flow is still computed exactly by ``score_samples``.
        With flow matching, ``loss_curve_`` holds the regression loss, early stopping
        compares the regression loss of the validation rows (same noise every epoch; the
        validation scores are its negative), without early stopping training runs for
        ``max_iter`` epochs or ``max_time`` (the per-epoch loss is too noisy for ``tol``), and
        the training solver, trace settings and RNODE penalties are unused.
        ``'hybrid'`` runs flow matching first and then maximum likelihood for the share
        ``likelihood_fraction`` of ``max_iter`` and of ``max_time`` (the likelihood phase
        inherits any time the first phase leaves unused); ``history_`` marks each epoch's
        ``phase``, and the validation scores of the final model are log-likelihoods.
    likelihood_fraction : float, default=0.25
        With ``training='hybrid'``, the share of the budget given to maximum likelihood.
    trace_estimator : {'auto', 'hutchinson', 'exact'}, default='auto'
        Trace of ``df/dz`` in likelihood training: one vector-Jacobian product with a random
        probe (fixed within each solve), or the exact trace (closed form for fields with at
        most two hidden layers, else ``d`` vector-Jacobian products). ``'auto'`` is
        ``'exact'`` with at most two hidden layers and ``'hutchinson'`` otherwise.
    hutchinson_noise : {'rademacher', 'gaussian'}, default='rademacher'
        Distribution of the Hutchinson probe.
    ode_solver : str, default='rk4'
        torchdiffeq method used in likelihood training: adaptive ('dopri5', 'dopri8',
        'bosh3', 'fehlberg2', 'adaptive_heun') or fixed-step ('euler', 'midpoint', 'heun3',
        'rk4', 'explicit_adams', 'implicit_adams'). The default, four RK4 steps (16
        function evaluations per solve, kept accurate by the default RNODE penalties below),
        trains faster than dopri5 at equal budget; scores
        always come from the tight evaluation solver (``eval_*``), so the coarse training
        solver cannot flatter the reported likelihoods (fewer steps are faster still, but
        long fits learn to exploit them: ``history_`` reports the ``solver_gap``). When
        an epoch's ``solver_gap`` exceeds 1 nat per row, a fixed-step solver with the
        default step count takes one more step for the rest of the fit (at most 64; the
        ``nfe`` entries of ``history_`` show it).
    ode_solver_params : dict, default=None
        torchdiffeq ``options`` for training solves, e.g. ``{'step_size': 0.1}`` for
        fixed-step methods (default: ``integration_time / 4``, refined as above; a
        ``step_size`` given here is kept). Copied, never modified.
    atol, rtol : float, default=1e-5
        Absolute and relative tolerances of adaptive training solves.
    max_num_steps : int, default=1000
        Step cap of adaptive training solves; reaching it stops training with a warning.
    adjoint : bool, default=False
        Compute gradients with the adjoint method (memory independent of the number of
        solver steps) instead of backpropagating through the solver (faster for small
        states).
    kinetic_energy_reg, jacobian_reg : float, default=0.01
        Weights of RNODE's penalties, ``int |f|^2 dt`` and a one-probe estimate of
        ``int |df/dz|_F^2 dt`` (with the Hutchinson trace, ``|eps^T df/dz|^2`` from its
        vector-Jacobian product; with the closed-form exact trace, ``|(df/dz) eps|^2`` pushed
        through the linearised network alongside it, at about the cost of one more field
        evaluation and without second-order backprop; it is taken at a random quarter of
        each batch's rows and weighted up by 4, still unbiased, which made likelihood steps
        1.14-1.16 times faster at d=43 and 63). They ride along the solve as extra
        states that are left out of the adaptive error control. With
        ``jacobian_reg > 0`` the probe is drawn in data space, not in the bottleneck.
        They keep the field smooth enough for the short default training solve (README,
        performance); set both to 0 for plain maximum likelihood. Unused by flow matching.
    eval_ode_solver : {'dopri5'} or a fixed-step method, default='dopri5'
        Solver of :meth:`score_samples` and :meth:`sample`. 'dopri5' runs a Dormand-Prince
        solver with per-row step-size control; fixed-step methods use torchdiffeq. In
        likelihood training it also computes the early-stopping validation scores and
        each epoch's ``solver_gap`` (in the training precision, float32), so its settings
        affect training time and when training stops.
    eval_atol : float, default=1e-6
        Absolute tolerance of the evaluation solver.
    eval_rtol : float, default=1e-5
        Relative tolerance of the evaluation solver. With ``eval_atol`` these are zuko's CNF
        defaults, here applied to every component of every row; against a 1e-10 reference
        the scores were off by 4e-4 nats at worst and 3e-5 on average (POWER-shaped
        stand-in; 7e-5 and 7e-6 at ``eval_rtol=1e-6``, at 0.7 times the speed).
    eval_ode_solver_params : dict, default=None
        Options of the evaluation solver: ``step_size`` for fixed-step methods,
        ``max_num_steps`` (default 10000) for 'dopri5'.
    eval_dtype : {'float32', 'float64'}, default='float32'
        Precision of the solves of :meth:`score_samples`, :meth:`sample` and
        :meth:`trajectory`. The standardisation and the final sum of each log-density are
        always float64. 'float32' (the precision the weights were trained in) scores about
        twice as fast; its rounding is far below the solver tolerance, but it can tip a
        step-size decision, so a row's score may move by about the tolerance (1e-4 nats
        measured) with the rows scored alongside it. 'float64' makes every row's score
        independent of its batch-mates to rounding.
    train_dtype : {'auto', 'float32', 'bfloat16'}, default='auto'
        Precision of the training steps. 'bfloat16' is mixed precision (``torch.autocast``):
        the matrix products of the flow-matching steps and of the likelihood training
        solves run in bfloat16, while the weights, the ODE states, the losses and Adam stay
        float32; validation, the ``solver_gap`` and all scoring stay in float32 (or
        ``eval_dtype``). On a CPU with bfloat16 instructions (AVX512-BF16 or AMX) those
        products are about four times as fast and likelihood steps of widths 192 to 256
        1.2 to 1.8 times (README, performance); at width 128 a step is bound by overheads
        and no faster, and where the CPU lacks those instructions bfloat16 is emulated
        (expected to be slower; not measured). 'auto': 'bfloat16' on such a CPU when the
        widest hidden layer has at least 192 units, else 'float32' (GPUs included: not
        measured there). The choice is in ``train_dtype_``; the same seed can fit
        differently on machines of other kinds.
    standardize : bool or {'auto', 'affine', 'sinh_arcsinh', 'quantile'}, default='auto'
        The fixed map in front of the flow, fitted once on the training rows; its
        log-Jacobian is added to every score, so scores stay log-densities in the user's
        units. The flow's field starts at zero, so the untrained model is the map's Gaussian
        (or the base mixture, ``n_components``) in the user's units. ``True`` or
        ``'affine'``: subtract the mean and whiten with the Cholesky factor of the
        covariance (the untrained model is the full-covariance Gaussian).
        ``'sinh_arcsinh'``: first a smooth, strictly increasing map of each feature,
        ``sinh(delta asinh((x - a) / b) - eps)``, whose skewness ``eps`` and tail weight
        ``delta`` are fitted per feature by maximum likelihood, then the whitening; it
        nests the affine map and suits skewed and heavy-tailed features. ``'quantile'``: a
        piecewise-linear map through up to 64 training quantiles per feature onto normal
        quantiles, with exponential tails and no whitening (its Jacobian is piecewise
        constant). ``'auto'``: 'affine' or 'sinh_arcsinh', whichever Gaussian has the higher
        5-fold cross-validated log-likelihood on the training rows (closed form, at most
        20,000 rows; milliseconds to seconds). ``False``: the identity.
    discrete_features : 'auto', None or array-like of shape (n_features,), default='auto'
        Cell width of each feature recorded to a resolution (0 for continuous features).
        Training rows of such features are dequantised, spread uniformly over their cell,
        with a fresh draw every epoch, so the model is a continuous density that does not
        spike on repeated values. ``'auto'``: :func:`~skffjord.find_discrete_features` (a
        feature with repeated values lying on a grid of constant step). ``None``: no
        dequantisation. The score of a row on the grid is then the log-density at the cell
        centre, which approximates the log-probability of the cell minus the log of its
        width (the expectation of the log-density over the cell is a lower bound on it), and
        :meth:`sample` rounds these features to their grid.
    bounds : dict, array-like of shape (n_features, 2) or None, default=None
        Declared bounds of features known to lie in an interval (intensities, percentages,
        quantities that cannot be negative): one ``(low, high)`` pair per feature, or a dict
        from feature names (with a DataFrame) or indices to pairs; ``None`` or an infinite
        value leaves that side open. A bounded feature goes through ``log(x - low)``,
        ``-log(high - x)`` or ``logit`` before the map of ``standardize``, so the density is
        zero outside the bounds, samples stay inside, and mass piled at a bound becomes a
        tail instead of a box. Training values must lie strictly inside the bounds; for a
        discrete feature the bounds apply to its recorded values and its cells fill
        ``[low - step / 2, high + step / 2]``. Rows outside score ``-inf``.
    n_components : int or 'auto', default='auto'
        Components of the base distribution: a Gaussian mixture fitted by EM to the training
        rows through the map (1: the standard normal). ``'auto'``: the count among 1, 2, 3,
        5, 8, 12 and 20 with the best held-out log-likelihood (5-fold cross-validation below
        5,000 training rows, else one split of ``validation_fraction``; the search stops
        once the score falls). The mixture is fixed; the flow is trained on top of it.
    batch_size : int or 'auto', default='auto'
        Mini-batch size, ``min(512, n_samples)`` for 'auto'; clipped with a warning when
        larger than the training set. Also the chunk size when validating.
    learning_rate_init : float, default=1e-3
        Adam's (initial) step size.
    learning_rate : {'adaptive', 'constant'}, default='adaptive'
        Step-size schedule of the maximum-likelihood epochs (``training='likelihood'`` and
        the second phase of ``'hybrid'``; flow matching always uses
        ``learning_rate_init``). ``'constant'`` keeps ``learning_rate_init``.
        ``'adaptive'`` (as in scikit-learn's ``MLPRegressor``) multiplies the step size by
        0.3 whenever ``min(4, n_iter_no_change)`` epochs in a row make no progress (the
        validation score with ``early_stopping``, else the training loss), at most three
        times (with ``early_stopping``, training goes on from the best-validation
        weights), but never in the first half of the phase's budget (of its ``max_time``
        or of its epochs, whichever is further along); training then stops only when the
        lowest step size stalls for ``n_iter_no_change`` epochs. A phase that has not
        stalled by 80% of its budget gets one reduction then. ``history_`` reports each
        epoch's step size. How this was chosen: README, performance.
    alpha : float, default=0.0
        L2 penalty (Adam's weight decay).
    averaging_decay : float or None, default=0.999
        Decay of an exponential moving average of the weights over the flow-matching
        steps (Polyak averaging, as in flow-matching and diffusion training), with a
        warm-up (``min(decay, (1 + k) / (10 + k))`` after ``k`` steps). Validation and the
        flow-matching result use the averaged weights; Adam steps the raw ones. ``None``:
        the last step's weights. The average removes most of Adam's step noise, so the
        flow-matching validation loss keeps improving and, with early stopping, that phase
        usually runs its whole share. Maximum-likelihood steps are not averaged (an average
        lags behind their steady progress).
    max_iter : int or None, default=None
        Maximum number of epochs (passes over the training rows). ``None``: no cap when
        ``max_time`` is set, else 100 epochs; an epoch is then as many passes as make at
        least 20 mini-batches (small tables), so that early stopping compares validation
        scores 20 optimizer steps apart at least.
    max_time : float, default=None
        Wall-clock budget of a fit in seconds, checked after every optimizer step.
    tol : float, default=1e-4
        Improvement (in nats per row) below which an epoch counts as no progress.
    n_iter_no_change : int, default=10
        Epochs without progress (training loss, or validation score with
        ``early_stopping``) before training stops.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the data, stop when its log-likelihood stops
        improving, and restore the best-validation weights at the end. The starting model
        (the map's Gaussian or the base mixture; the fitted model in a ``warm_start``
        refit) is kept unless the trained one improves the validation rows' log-likelihood
        by more than one standard error of the paired per-row differences: a fit does not
        end below the classical model it started from, nor above it by validation noise.
        The validation log-likelihoods come from the evaluation solver (``eval_*``, exact
        trace), the one ``score_samples`` uses (always in float32 during training), so a
        coarse training solver that the fit learns to exploit cannot hide it (the
        validation score then falls). The starting weights compete too, with
        ``training='hybrid'`` (the end of flow matching: the likelihood phase is kept only
        where it improves the validation log-likelihood) and in a ``warm_start`` refit.
    validation_fraction : float, default=0.1
        Share of the data held out for early stopping.
    shuffle : bool, default=True
        Shuffle the rows every epoch.
    device : str, default='cpu'
        'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available).
    random_state : int, RandomState instance or None, default=None
        Controls weight initialisation, the validation split, mini-batch order and
        Hutchinson probes. An int makes fits reproducible on the CPU.
    verbose : int, default=0
        Show a progress bar with the loss and function evaluations when > 0.
    warm_start : bool, default=False
        Continue from the fitted weights, standardisation and optimizer state (a refit
        keeps the map that ``standardize='auto'`` chose; no new choice is made).

    Attributes
    ----------
    flow_ : torch.nn.Module
        The fitted flow (float64, on ``device_``).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has string column names.
    n_iter_ : int
        Number of epochs run.
    history_ : list of dict
        One record per epoch: ``epoch``, ``train_loss`` (mean negative log-likelihood in
        the user's units, with the Hutchinson estimate), ``valid_score`` (mean
        log-likelihood on the validation set, exact trace, evaluation solver, NaN without
        early stopping; ``-inf`` where that solver failed),
        ``nfe`` and ``nfe_backward`` (function evaluations per training solve, forward
        and in the adjoint's backward pass), ``n_steps`` (optimizer steps),
        ``learning_rate`` (Adam's step size in the epoch), ``solver_gap`` (mean
        log-likelihood of 256 fixed training rows through the training solver minus
        through the evaluation solver, both exact trace, after the epoch; NaN in
        flow-matching epochs: a large positive gap means the fit exploits a coarse training
        solver) and ``time`` (seconds since the fit started).
    loss_curve_ : list of float
        ``train_loss`` per epoch.
    validation_scores_ : list of float or None
        ``valid_score`` per epoch with ``early_stopping``, else None.
    best_validation_score_ : float or None
        Best validation mean log-likelihood (its weights are kept), or None. With
        ``training='hybrid'`` it may be that of the flow-matching weights, scored before
        the likelihood phase (not an entry of ``validation_scores_``).
    best_loss_ : float
        Lowest training loss of an epoch.
    stop_reason_ : str
        Why training stopped: 'converged', 'max_iter', 'max_time', 'interrupted',
        'diverged' or 'solver_failed'.
    standardize_ : {'affine', 'sinh_arcsinh', 'quantile', 'none'}
        The map in front of the flow (the one ``standardize='auto'`` chose).
    standardize_scores_ : dict or None
        With ``standardize='auto'``: each candidate map's cross-validated mean
        log-likelihood of its Gaussian, in the user's units; else None.
    discrete_features_ : ndarray of shape (`n_features_in_`,)
        Cell width of each dequantised feature, 0 for continuous ones.
    bounds_ : ndarray of shape (`n_features_in_`, 2)
        The declared bounds of each feature (``-inf``, ``inf``: none).
    n_components_ : int
        Components of the base distribution (1: the standard normal).
    n_components_scores_ : dict or None
        With ``n_components='auto'``: each tried count's held-out mean log-likelihood in
        the mapped space; else None.
    device_ : str
        The device the model lives on.
    train_dtype_ : {'float32', 'bfloat16'}
        The training precision used (what ``train_dtype='auto'`` chose).

    See Also
    --------
    sklearn.neighbors.KernelDensity : Kernel density estimation.
    sklearn.mixture.GaussianMixture : Gaussian mixture density.

    Notes
    -----
    :meth:`score` returns the *mean* log-likelihood per row, like GaussianMixture (and
    unlike KernelDensity, which sums). :meth:`sample` returns an array, like
    KernelDensity.

    References
    ----------
    .. [1] W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud,
       "FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
       Models", ICLR 2019.
    .. [2] R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural Ordinary
       Differential Equations", NeurIPS 2018.
    .. [3] C. Finlay, J.-H. Jacobsen, L. Nurbekyan, A. Oberman, "How to train your
       neural ODE: the world of Jacobian and kinetic regularization", ICML 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from skffjord import FFJORDDensity
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> model = FFJORDDensity(hidden_layer_sizes=(16,), max_iter=2, random_state=0)
    >>> model = model.fit(X)
    >>> model.score_samples(X[:3]).shape
    (3,)
    >>> model.sample(5, random_state=0).shape
    (5, 2)
    """

    _parameter_constraints: dict = {
        "hidden_layer_sizes": [
            StrOptions({"auto"}),
            "array-like",
            Interval(Integral, 1, None, closed="left"),
        ],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
        "integration_time": [Interval(Real, 0, None, closed="neither")],
        "training": [StrOptions({"likelihood", "flow_matching", "hybrid"})],
        "likelihood_fraction": [Interval(Real, 0, 1, closed="neither")],
        "trace_estimator": [StrOptions({"auto", "hutchinson", "exact"})],
        "hutchinson_noise": [StrOptions({"rademacher", "gaussian"})],
        "ode_solver": [StrOptions(set(ADAPTIVE_METHODS) | set(FIXED_GRID_METHODS))],
        "ode_solver_params": [dict, None],
        "atol": [Interval(Real, 0, None, closed="neither")],
        "rtol": [Interval(Real, 0, None, closed="neither")],
        "max_num_steps": [Interval(Integral, 1, None, closed="left")],
        "adjoint": ["boolean"],
        "kinetic_energy_reg": [Interval(Real, 0, None, closed="left")],
        "jacobian_reg": [Interval(Real, 0, None, closed="left")],
        "eval_ode_solver": [StrOptions(set(ROWWISE_TABLEAUS) | set(FIXED_GRID_METHODS))],
        "eval_atol": [Interval(Real, 0, None, closed="neither")],
        "eval_rtol": [Interval(Real, 0, None, closed="neither")],
        "eval_ode_solver_params": [dict, None],
        "eval_dtype": [StrOptions({"float32", "float64"})],
        "train_dtype": [StrOptions({"auto", "float32", "bfloat16"})],
        "standardize": [
            "boolean",
            StrOptions({"auto", "affine", "sinh_arcsinh", "quantile"}),
        ],
        "discrete_features": [StrOptions({"auto"}), "array-like", None],
        "bounds": [dict, "array-like", None],
        "n_components": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "learning_rate": [StrOptions({"adaptive", "constant"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "averaging_decay": [Interval(Real, 0, 1, closed="neither"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left"), None],
        "max_time": [Interval(Real, 0, None, closed="neither"), None],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "shuffle": ["boolean"],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        *,
        hidden_layer_sizes: tuple[int, ...] | str = "auto",
        activation: str = "softplus",
        n_blocks: int = 1,
        integration_time: float = 1.0,
        training: str = "hybrid",
        likelihood_fraction: float = 0.25,
        trace_estimator: str = "auto",
        hutchinson_noise: str = "rademacher",
        ode_solver: str = "rk4",
        ode_solver_params: dict | None = None,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        max_num_steps: int = 1000,
        adjoint: bool = False,
        kinetic_energy_reg: float = 0.01,
        jacobian_reg: float = 0.01,
        eval_ode_solver: str = "dopri5",
        eval_atol: float = 1e-6,
        eval_rtol: float = 1e-5,
        eval_ode_solver_params: dict | None = None,
        eval_dtype: str = "float32",
        train_dtype: str = "auto",
        standardize: bool | str = "auto",
        discrete_features: str | np.ndarray | None = "auto",
        bounds: dict | np.ndarray | None = None,
        n_components: int | str = "auto",
        batch_size: int | str = "auto",
        learning_rate_init: float = 1e-3,
        learning_rate: str = "adaptive",
        alpha: float = 0.0,
        averaging_decay: float | None = 0.999,
        max_iter: int | None = None,
        max_time: float | None = None,
        tol: float = 1e-4,
        n_iter_no_change: int = 10,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        shuffle: bool = True,
        device: str = "cpu",
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
        warm_start: bool = False,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.n_blocks = n_blocks
        self.integration_time = integration_time
        self.training = training
        self.likelihood_fraction = likelihood_fraction
        self.trace_estimator = trace_estimator
        self.hutchinson_noise = hutchinson_noise
        self.ode_solver = ode_solver
        self.ode_solver_params = ode_solver_params
        self.atol = atol
        self.rtol = rtol
        self.max_num_steps = max_num_steps
        self.adjoint = adjoint
        self.kinetic_energy_reg = kinetic_energy_reg
        self.jacobian_reg = jacobian_reg
        self.eval_ode_solver = eval_ode_solver
        self.eval_atol = eval_atol
        self.eval_rtol = eval_rtol
        self.eval_ode_solver_params = eval_ode_solver_params
        self.eval_dtype = eval_dtype
        self.train_dtype = train_dtype
        self.standardize = standardize
        self.discrete_features = discrete_features
        self.bounds = bounds
        self.n_components = n_components
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate
        self.alpha = alpha
        self.averaging_decay = averaging_decay
        self.max_iter = max_iter
        self.max_time = max_time
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.shuffle = shuffle
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------------ validation
    def _hidden_sizes(self, n_features: int) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, str) and sizes == "auto":
            return auto_hidden_layer_sizes(n_features)
        if isinstance(sizes, Integral):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError as err:
            raise ValueError(
                f"hidden_layer_sizes must be a tuple of positive ints, got {sizes!r}."
            ) from err
        if not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be a tuple of positive ints, got {sizes!r}.")
        return tuple(int(s) for s in sizes)

    def _train_config(self, hidden: tuple[int, ...]) -> TrainConfig:
        trace = self.trace_estimator
        if trace == "auto":
            trace = "exact" if len(hidden) <= 2 else "hutchinson"
        return TrainConfig(
            method=self.ode_solver,
            atol=float(self.atol),
            rtol=float(self.rtol),
            options=copy.deepcopy(self.ode_solver_params),
            adjoint=bool(self.adjoint),
            max_num_steps=int(self.max_num_steps),
            trace_estimator=trace,
            hutchinson_noise=self.hutchinson_noise,
            kinetic_energy_reg=float(self.kinetic_energy_reg),
            jacobian_reg=float(self.jacobian_reg),
        )

    def _eval_config(self, *, validate: bool = True) -> EvalConfig:
        if validate:  # parameters may have been set after fit
            self._validate_params()
        options = dict(self.eval_ode_solver_params or {})
        max_steps = int(options.pop("max_num_steps", 10000))
        if self.eval_ode_solver in ROWWISE_TABLEAUS and options:
            raise ValueError(
                f"eval_ode_solver_params for {self.eval_ode_solver!r} accept only "
                f"'max_num_steps', got {sorted(options)}."
            )
        return EvalConfig(
            method=self.eval_ode_solver,
            atol=float(self.eval_atol),
            rtol=float(self.eval_rtol),
            options=options or None,
            max_num_steps=max_steps,
            dtype=getattr(torch, self.eval_dtype),  # 'float32' or 'float64', validated
        )

    def __sklearn_tags__(self):  # noqa: ANN204
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> FFJORDDensity:
        """Fit the flow by maximum likelihood.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (numeric; a pandas DataFrame records ``feature_names_in_``).
        y : None
            Ignored; present for API consistency.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative row weights: each row's log-likelihood is weighted in the loss,
            the standardisation and the validation score.

        Returns
        -------
        self : FFJORDDensity
            The fitted estimator. If training is interrupted (Ctrl-C) or diverges, the
            best (or last good) weights are kept and a warning says why. If ``fit``
            raises, the previously fitted model is left untouched.
        """
        saved = {k: self.__dict__[k] for k in _FITTED if k in self.__dict__}
        try:
            return self._fit(X, sample_weight)
        except BaseException:
            for k in _FITTED:
                self.__dict__.pop(k, None)
            self.__dict__.update(saved)
            raise

    def _fit(self, X: Any, sample_weight: Any) -> FFJORDDensity:
        _reject_non_numeric_columns(X)
        refit = self.warm_start and hasattr(self, "flow_")
        old_features = getattr(self, "n_features_in_", None)
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=1)
        n_samples, n_features = X.shape
        if refit and old_features != n_features:
            raise ValueError(
                f"warm_start=True but X has {n_features} features while the fitted model "
                f"has {old_features}; refit with warm_start=False."
            )
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        if np.any(sample_weight < 0):
            raise ValueError("sample_weight must be non-negative.")
        if not sample_weight.sum() > 0:
            raise ValueError("sample_weight must have a positive sum.")
        hidden = self._hidden_sizes(n_features)
        train_cfg = self._train_config(hidden)
        self._eval_config(validate=False)  # checks the eval options; params validated above
        device = resolve_device(self.device)
        train_dtype = resolve_train_dtype(self.train_dtype, device, hidden)
        rs = check_random_state(self.random_state)
        init_seed, data_seed, probe_seed, noise_seed = spawn_seeds(rs, 4)
        rng = np.random.default_rng(data_seed)
        if refit:
            resolution = self.discrete_features_
        else:
            resolution = self._resolution(X, sample_weight)
        bounds = check_bounds(self.bounds, n_features, getattr(self, "feature_names_in_", None))
        interval = support(bounds, resolution)
        inside = ~outside_support(X[sample_weight > 0], interval)
        if not inside.all():
            row = X[sample_weight > 0][~inside][0]
            j = int(np.flatnonzero((row <= interval[:, 0]) | (row >= interval[:, 1]))[0])
            raise ValueError(
                f"X has values on or outside the bounds of feature {j} ({bounds[j, 0]}, "
                f"{bounds[j, 1]}), e.g. {row[j]!r}; a continuous feature must lie strictly "
                "inside its bounds (a discrete one within them)."
            )

        # Validation split.
        train_idx = np.arange(n_samples)
        val_idx = np.arange(0)
        if self.early_stopping:
            n_val = max(1, int(round(self.validation_fraction * n_samples)))
            if n_samples - n_val < 1:
                raise ValueError(
                    f"early_stopping needs at least 2 samples; got n_samples={n_samples}."
                )
            perm = rng.permutation(n_samples)
            val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            for part, idx in (("validation", val_idx), ("training", train_idx)):
                if not sample_weight[idx].sum() > 0:
                    raise ValueError(
                        f"early_stopping drew a {part} split whose sample weights are all "
                        "zero; raise validation_fraction, use fewer zero weights or set "
                        "early_stopping=False."
                    )

        # Model and standardisation.
        structure = {
            "hidden_layer_sizes": hidden,
            "activation": self.activation,
            "n_blocks": int(self.n_blocks),
            "integration_time": float(self.integration_time),
            "standardize": _standardization_name(self.standardize),
            "bounds": tuple(map(tuple, bounds.tolist())),
        }
        fitted_structure = dict(self.__dict__.get("_structure", structure))
        fitted_structure.setdefault("bounds", tuple(map(tuple, check_bounds(None, n_features))))
        # models saved before 'quantile' existed recorded standardize as a bool
        fitted_structure["standardize"] = _standardization_name(fitted_structure["standardize"])
        if refit and structure["standardize"] in ("auto", self.standardize_):
            # 'auto' keeps the map it chose; naming that map explicitly keeps it too
            structure["standardize"] = fitted_structure["standardize"]
        if refit and fitted_structure != structure:
            changed = sorted(k for k, v in structure.items() if fitted_structure[k] != v)
            raise ValueError(
                f"warm_start=True cannot change the model's structure ({', '.join(changed)} "
                "differ from the fitted model); refit with warm_start=False."
            )
        eval_cfg = replace(self._eval_config(validate=False), dtype=None)  # training precision
        batch_size = min(512, len(train_idx)) if self.batch_size == "auto" else self.batch_size
        if batch_size > len(train_idx):
            warnings.warn(
                f"Got batch_size={batch_size} larger than the {len(train_idx)} training rows; "
                "it is clipped.",
                UserWarning,
                stacklevel=3,
            )
            batch_size = len(train_idx)
        fit_cfg = FitConfig(
            batch_size=int(batch_size),
            learning_rate_init=float(self.learning_rate_init),
            learning_rate=self.learning_rate,
            alpha=float(self.alpha),
            averaging_decay=None if self.averaging_decay is None else float(self.averaging_decay),
            max_iter=self._max_iter(),
            min_steps_per_epoch=MIN_EPOCH_STEPS if self.max_iter is None else 1,
            max_time=None if self.max_time is None else float(self.max_time),
            tol=float(self.tol),
            n_iter_no_change=int(self.n_iter_no_change),
            shuffle=bool(self.shuffle),
            solver=train_cfg,
            validation_chunk=max(int(batch_size), 1024),
            verbose=int(self.verbose),
            training=self.training,
            # in the training precision (the flow being trained is float32)
            validation_solver=eval_cfg,
            refine_solver_gap=REFINE_SOLVER_GAP,
            autocast_dtype=torch.bfloat16 if train_dtype == "bfloat16" else None,
        )
        start = time.perf_counter()
        noise = np.random.default_rng(noise_seed)
        map_scores = mixture_scores = None
        if refit:
            kind, map_scores = self.standardize_, self.standardize_scores_
            mixture_scores = self.n_components_scores_
            flow = copy.deepcopy(self.flow_)
        else:
            kind = structure["standardize"]
            X_drawn = dequantize(X, resolution, np.random.default_rng(noise_seed + 1))
            opener = BoundsMap(interval) if np.isfinite(interval).any() else None
            X_open = X_drawn
            if opener is not None:  # the map of ``standardize`` is fitted past the bounds
                with torch.no_grad():
                    X_open = opener(torch.tensor(X_drawn))[0].numpy()
            if kind == "auto":
                kind, map_scores = choose_map(X_open[train_idx], sample_weight[train_idx], rng)
            flow = self._new_flow(
                kind, X_open[train_idx], sample_weight[train_idx], hidden, init_seed, opener
            )
            flow.base, mixture_scores = self._new_base(
                flow, X_drawn, sample_weight, train_idx, rng, init_seed
            )
        run = self._prepared(flow, X, sample_weight, device, probe_seed, resolution, noise)
        flow = run.flow
        data = run.data(train_idx, val_idx if self.early_stopping else None)
        common = dict(
            rng=rng,
            generator=run.generator,
            log_det_offset=run.mean_log_det(train_idx),
            val_log_det_offset=run.mean_log_det(val_idx) if self.early_stopping else None,
            redraw=run.redraw(train_idx),
        )
        optimizer_state = self.__dict__.get("_optimizer_state") if refit else None
        # with early stopping the starting model competes too (the classical model of the
        # fixed map and base, the field being zero; or the fitted model in a warm refit): the
        # fit keeps it unless the validation rows improve by more than their noise
        initial = None
        if self.early_stopping:
            initial = (
                validation_log_probs(flow, data[2], fit_cfg),
                copy.deepcopy(flow.state_dict()),
            )
        if self.training != "hybrid":
            fit_cfg = replace(fit_cfg, score_initial=bool(refit))
            result = train_flow(flow, *data, fit_cfg, optimizer_state=optimizer_state, **common)
        else:
            result = self._train_hybrid(flow, data, fit_cfg, optimizer_state, common, start)
        if initial is not None:
            end = validation_log_probs(flow, data[2], fit_cfg)
            w_val = sample_weight[val_idx]
            offset = common["val_log_det_offset"]
            if not significant_gain(end, initial[0], w_val):
                flow.load_state_dict(initial[1])
                result.final_solver_gap = math.nan
                if self.training == "flow_matching":  # validation scores are -losses there
                    score = -flow_matching_validation_loss(flow, data[2], data[3], fit_cfg)
                else:
                    score = float(np.average(initial[0], weights=w_val)) + offset
                result.best_validation_score = score
            elif result.best_validation_score is None and end is not None:
                result.best_validation_score = float(np.average(end, weights=w_val)) + offset
        marginal, loc, scale = run.marginal, run.loc, run.scale

        # Commit the fitted state only now (a failure above leaves the old model).
        flow.eval()
        flow = flow.to(dtype=torch.float64)
        with torch.no_grad():  # the float32 round trip must not blur the standardisation
            flow.loc.copy_(torch.as_tensor(loc))
            flow.scale.copy_(torch.as_tensor(scale))
        flow.marginal = None if marginal is None else marginal.to(device=device)
        flow.base = None if run.base is None else run.base.to(device=device)
        self.flow_ = flow
        self.device_ = str(device)
        self.train_dtype_ = train_dtype
        self.history_ = result.history
        self.n_iter_ = result.n_iter
        self.loss_curve_ = [h["train_loss"] for h in result.history]
        self.validation_scores_ = (
            [h["valid_score"] for h in result.history] if self.early_stopping else None
        )
        self.best_validation_score_ = result.best_validation_score
        self.best_loss_ = result.best_loss
        self.stop_reason_ = result.stop_reason
        self._structure = structure
        self.standardize_ = kind
        self.standardize_scores_ = map_scores
        self.discrete_features_ = resolution
        self.bounds_ = bounds
        self._support = interval
        self.n_components_ = 1 if flow.base is None else int(flow.base.means.shape[0])
        self.n_components_scores_ = mixture_scores
        if not refit:  # a value on each grid, to round samples to
            self._grid_origin = X[sample_weight > 0].min(axis=0)
        self._optimizer_state = _to_cpu(result.optimizer_state) if self.warm_start else None
        self._warn_stop(result.stop_reason, result.message)
        self._warn_solver_gap(result.final_solver_gap)
        if result.validation_failures:
            warnings.warn(
                f"The evaluation solver (eval_ode_solver={self.eval_ode_solver!r}) could not "
                f"score the validation rows {result.validation_failures} time(s); those "
                "epochs counted as no improvement for early stopping. Loosen eval_atol/"
                "eval_rtol or raise eval_ode_solver_params['max_num_steps'].",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _resolution(self, X: np.ndarray, sample_weight: np.ndarray) -> np.ndarray:
        """The cell width of each feature (0: continuous), from ``discrete_features``."""
        n_features = X.shape[1]
        option = self.discrete_features
        if isinstance(option, str):  # 'auto', validated
            return find_discrete_features(X, sample_weight)
        if option is None:
            return np.zeros(n_features)
        resolution = np.asarray(option, dtype=np.float64)
        if resolution.shape != (n_features,) or not np.all(np.isfinite(resolution)):
            raise ValueError(
                "discrete_features must be 'auto', None or an array of shape "
                f"(n_features,) = ({n_features},) of finite cell widths (0: continuous), "
                f"got {option!r}."
            )
        if np.any(resolution < 0):
            raise ValueError("discrete_features must hold non-negative cell widths.")
        return resolution

    def _max_iter(self) -> int:
        """Epoch cap: ``max_iter``; for ``max_iter=None`` none when ``max_time`` bounds the
        fit, else ``DEFAULT_EPOCHS``."""
        if self.max_iter is not None:
            return int(self.max_iter)
        return UNBOUNDED_EPOCHS if self.max_time is not None else DEFAULT_EPOCHS

    def _new_flow(
        self,
        kind: str,
        X: np.ndarray,
        sample_weight: np.ndarray,
        hidden: tuple[int, ...],
        init_seed: int,
        opener: BoundsMap | None = None,
    ) -> FFJORDFlow:
        """A fresh float64 flow whose fixed map (``kind``, a ``standardize_`` value) is fitted
        on the rows ``X`` (already through ``opener``, the map of the bounded features, which
        then precedes it); its field is zero, so the model starts as that map's Gaussian."""
        n_features = X.shape[1]
        marginal: nn.Module | None = None
        if kind in ("affine", "sinh_arcsinh"):
            marginal = fit_gaussianizing_map(X, sample_weight, marginal=kind == "sinh_arcsinh")
        elif kind == "quantile":
            grid, knots = quantile_knots(X, sample_weight)
            marginal = QuantileGaussianizer(torch.as_tensor(grid), torch.as_tensor(knots))
        if opener is not None:
            marginal = ChainedMap(opener, marginal)
        return FFJORDFlow(
            n_features,
            hidden,
            self.activation,
            int(self.n_blocks),
            float(self.integration_time),
            torch.zeros(n_features, dtype=torch.float64),
            torch.ones(n_features, dtype=torch.float64),
            generator=torch.Generator().manual_seed(init_seed),
            marginal=marginal,
        )

    @staticmethod
    def _prepared(
        flow: FFJORDFlow,
        X: np.ndarray,
        sample_weight: np.ndarray,
        device: torch.device,
        probe_seed: int,
        resolution: np.ndarray,
        noise: np.random.Generator,
    ) -> _Run:
        """``flow`` ready to train, with every row of ``X`` (one dequantised draw of its
        discrete columns) through its fixed map."""
        X_drawn = dequantize(X, resolution, noise)
        # the rows as the flow sees them and each row's log-Jacobian, in float64
        with torch.no_grad():
            u, log_det = flow.standardize_with_log_det(float64_tensor(X_drawn, flow.loc.device))
        loc, scale = flow.loc.cpu().numpy(), flow.scale.cpu().numpy()
        # the fixed map is not trained and stays float64: it leaves the flow while the flow
        # trains in float32, and comes back after
        marginal, flow.marginal = flow.marginal, None
        base = copy.deepcopy(flow.base)  # float64, restored after training
        return _Run(
            flow=flow.to(device=device, dtype=torch.float32),
            marginal=marginal,
            base=base,
            loc=loc,
            scale=scale,
            rows=u.cpu().numpy(),
            row_log_det=log_det.cpu().numpy(),
            sample_weight=sample_weight,
            generator=make_generator(probe_seed, device),
            X=X,
            resolution=resolution,
            noise=noise,
        )

    def _new_base(
        self,
        flow: FFJORDFlow,
        X: np.ndarray,
        sample_weight: np.ndarray,
        train_idx: np.ndarray,
        rng: np.random.Generator,
        seed: int,
    ) -> tuple[nn.Module | None, dict[int, float] | None]:
        """The base distribution (``n_components``) over the training rows through
        ``flow``'s map: ``None`` (standard normal) or a Gaussian mixture whose component
        count has the best cross-validated log-likelihood (``MIXTURE_CV_FOLDS`` folds over
        the training rows, or one split of ``validation_fraction`` from
        ``MIXTURE_SPLIT_ROWS`` rows on), refitted on all training rows; with each tried
        count's held-out score."""
        if self.n_components == 1:
            return None, None
        rows = train_idx[sample_weight[train_idx] > 0]
        if len(rows) < 2:
            return None, None
        with torch.no_grad():
            U = flow.standardize(torch.as_tensor(X[rows])).numpy()
        perm = rng.permutation(len(rows))
        if len(rows) >= MIXTURE_SPLIT_ROWS:
            n_held = max(1, int(round(self.validation_fraction * len(rows))))
            folds = [(perm[n_held:], perm[:n_held])]
        else:
            folds = kfold(perm, MIXTURE_CV_FOLDS)
        return fit_mixture_base(
            U,
            sample_weight[rows],
            folds,
            seed,
            components=None if self.n_components == "auto" else (int(self.n_components),),
        )

    def _train_hybrid(
        self,
        flow: FFJORDFlow,
        data: tuple,
        fit_cfg: FitConfig,
        optimizer_state: dict | None,
        common: dict,
        start: float,
    ) -> TrainingResult:
        """Flow matching, then maximum likelihood for ``likelihood_fraction`` of the budget
        (``start``: when the fit began)."""
        fraction = float(self.likelihood_fraction)
        n_likelihood = max(1, round(fraction * fit_cfg.max_iter))
        n_matching = max(1, fit_cfg.max_iter - n_likelihood)
        matching_time = None
        if fit_cfg.max_time is not None:
            matching_time = (1 - fraction) * fit_cfg.max_time - (time.perf_counter() - start)
        first = TrainingResult(optimizer_state=optimizer_state)
        if n_matching >= 1 and (matching_time is None or matching_time > 0):
            first = train_flow(
                flow,
                *data,
                replace(
                    fit_cfg, training="flow_matching", max_iter=n_matching, max_time=matching_time
                ),
                optimizer_state=optimizer_state,
                **common,
            )
        for record in first.history:
            record["phase"] = "flow_matching"
        if first.stop_reason in _FAILED:
            return first
        remaining = None
        if fit_cfg.max_time is not None:
            remaining = max(fit_cfg.max_time - (time.perf_counter() - start), 1e-3)
        second = train_flow(
            flow,
            *data,
            replace(
                fit_cfg,
                training="likelihood",
                max_iter=n_likelihood,
                max_time=remaining,
                score_initial=True,
            ),
            optimizer_state=first.optimizer_state,
            **common,
        )
        for record in second.history:
            record["phase"] = "likelihood"
            record["epoch"] += first.n_iter
            record["time"] += first.history[-1]["time"] if first.history else 0.0
        second.history = first.history + second.history
        second.n_iter += first.n_iter
        return second

    def _warn_solver_gap(self, gap: float) -> None:
        # 1 nat per row: far above a sound training solver's error (at most 0.52 throughout
        # the 10-minute benchmark fits with 5 or 8 rk4 steps, d = 6 to 63), below what an
        # exploited one reaches (0.4, 1.3, 5, 16 in four consecutive epochs of a collapsing
        # 2-step fit; README, performance).
        if gap > SOLVER_GAP_WARNING:
            advice = (
                "more training steps (a smaller ode_solver_params['step_size'])"
                if self.ode_solver in FIXED_GRID_METHODS
                else "tighter training tolerances (atol, rtol)"
            )
            if not self.early_stopping:
                advice += " or early_stopping=True (validated through the evaluation solver)"
            warnings.warn(
                f"The training solver credits the fitted model with {gap:.2f} nats per row "
                "more log-likelihood than the evaluation solver finds (solver_gap): the fit "
                "has probably learned to exploit a too coarse training solver, and "
                f"score_samples reports the lower, correct values. Use {advice}.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _warn_stop(self, reason: str, message: str | None) -> None:
        if reason in ("diverged", "solver_failed"):
            warnings.warn(
                f"Training stopped after {self.n_iter_} complete epoch(s): {message}. The "
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
                f"Maximum iterations ({self.max_iter}) reached and the optimization hasn't "
                "converged yet.",
                ConvergenceWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ inference
    def _chunk_rows(self) -> int:
        """Rows per scoring chunk: about 256 MiB of float64 work space per chunk."""
        d = self.n_features_in_
        hidden = self._hidden_sizes(d)
        if len(hidden) <= 2:  # closed-form trace: solver stages plus a few activations
            row_bytes = 8 * (16 * (d + 1) + 8 * sum(hidden))
        else:  # d batched vector-Jacobian products through every layer
            row_bytes = 8 * (d + 1) * (d + sum(hidden)) * 16
        budget = 256 * 2**20
        return int(max(64, min(8192, budget // max(row_bytes, 1))))

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of each row, in natural-log units of the user's data.

        Computed with the exact trace and a per-row adaptive solver (each row has its own
        step size), in ``eval_dtype`` and in chunks. Scores are deterministic; with
        ``eval_dtype='float64'`` a row's score does not depend on the other rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            ``log p(x)`` per row.
        """
        check_is_fitted(self)
        _reject_non_numeric_columns(X)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        outside = self._outside(X)
        if not outside.any():
            return self._apply_in_chunks(self.flow_.log_prob, X)
        X = np.where(outside[:, None], self._grid_origin, X)  # a row inside, scored apart
        scores = self._apply_in_chunks(self.flow_.log_prob, X)
        scores[outside] = -np.inf
        return scores

    def _outside(self, X: np.ndarray) -> np.ndarray:
        """Rows outside the support that ``bounds`` declared (all False without bounds)."""
        interval = self.__dict__.get("_support")
        if interval is None:
            return np.zeros(len(X), dtype=bool)
        return outside_support(X, interval)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per row (like GaussianMixture; KernelDensity sums).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state: Any = None) -> np.ndarray:
        """Draw samples by integrating base noise backwards through the flow.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            Seed of the base noise (None: numpy's global random state).

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            Samples in the user's units; the discrete features (``discrete_features_``) are
            rounded to their grid, so each grid point is drawn with the model's probability
            of its cell, and every feature lies within its ``bounds``.
        """
        check_is_fitted(self)
        if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        rng = check_random_state(random_state)
        base = self.flow_.base
        if base is None:
            z = rng.standard_normal((int(n_samples), self.n_features_in_))
        else:
            z = base.sample_numpy(int(n_samples), rng)
        X = snap_to_grid(self._to_data(z), self.discrete_features_, self._grid_origin)
        bounds = self.__dict__.get("bounds_")
        return X if bounds is None else np.clip(X, bounds[:, 0], bounds[:, 1])

    def trajectory(self, X: Any, n_times: int = 11) -> np.ndarray:
        """The path of each row through the flow, from the data (t=0) to the latent space.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Starting rows, in the user's units (for the path of generated points, pass
            ``sample(...)``'s output: read backwards, the path runs from base noise to data).
        n_times : int, default=11
            Evenly spaced times per block, both ends included.

        Returns
        -------
        ndarray of shape (1 + n_blocks * (n_times - 1), n_samples, n_features)
            ``path[0]`` is ``X``; ``path[-1]`` is the latent point ``z(T)``. Every state is
            mapped back through the standardisation (the inverse of the per-feature map of
            ``standardize``; ``x = mean + scale * z`` for ``'affine'``), so all lie in the
            user's units and the latent end is distributed as the standard normal pushed
            through that inverse: roughly the training data's marginals, independent.

        Examples
        --------
        >>> import numpy as np
        >>> from skffjord import FFJORDDensity
        >>> X = np.random.default_rng(0).normal(size=(100, 2))
        >>> model = FFJORDDensity(max_iter=2, random_state=0).fit(X)
        >>> model.trajectory(X[:5], n_times=4).shape
        (4, 5, 2)
        """
        check_is_fitted(self)
        if not isinstance(n_times, Integral) or isinstance(n_times, bool) or n_times < 2:
            raise ValueError(f"n_times must be an integer of at least 2, got {n_times!r}.")
        _reject_non_numeric_columns(X)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if self._outside(X).any():
            raise ValueError("X has rows outside the bounds the model was fitted with.")
        config = self._eval_config()
        device = next(iter(self.flow_.buffers())).device
        x = float64_tensor(X, device)
        with torch.no_grad():
            path = self.flow_.path(x, int(n_times), config)
        return path.cpu().numpy()

    def _to_data(self, z: np.ndarray) -> np.ndarray:
        return self._apply_in_chunks(self.flow_.to_data, z)

    def _to_latent(self, X: np.ndarray) -> np.ndarray:
        return self._apply_in_chunks(self.flow_.to_latent, X)

    def _apply_in_chunks(
        self, method: Callable[[torch.Tensor, EvalConfig], torch.Tensor], A: np.ndarray
    ) -> np.ndarray:
        """Run a flow method on float64 rows of ``A`` chunk by chunk (bounded memory)."""
        config = self._eval_config()
        A = np.asarray(A, dtype=np.float64)
        device = next(iter(self.flow_.buffers())).device
        parts = []
        chunk = self._chunk_rows()
        for start in range(0, A.shape[0], chunk):
            rows = torch.tensor(A[start : start + chunk], dtype=torch.float64, device=device)
            parts.append(method(rows, config).cpu().numpy())
        return np.concatenate(parts) if parts else np.empty((0, *A.shape[1:-1]))

    # ------------------------------------------------------------------ persistence
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        if "flow_" in state:
            state = dict(state)
            state["flow_"] = copy.deepcopy(state["flow_"]).cpu()
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "flow_" in self.__dict__ and "standardize_" not in self.__dict__:
            # saved before 'auto' existed: the map is the one the structure names
            self.standardize_ = _standardization_name(self._structure["standardize"])
            self.standardize_scores_ = None
        if "train_dtype" not in self.__dict__:  # saved before train_dtype existed
            self.train_dtype = "auto"
            if "flow_" in self.__dict__:
                self.train_dtype_ = "float32"  # what it was trained in
        for name, value in (("discrete_features", None), ("n_components", 1)):
            self.__dict__.setdefault(name, value)  # what models saved before them did
        if "flow_" in self.__dict__ and "discrete_features_" not in self.__dict__:
            self.discrete_features_ = np.zeros(self.n_features_in_)
            self._grid_origin = np.zeros(self.n_features_in_)
            self.n_components_, self.n_components_scores_ = 1, None
        if "learning_rate" not in self.__dict__:  # saved before learning_rate existed
            self.learning_rate = "constant"  # the schedule it was fitted with
        if "flow_" in self.__dict__:
            device = resolve_device(self.__dict__.get("device_", "cpu"), fallback=True)
            self.flow_ = self.flow_.to(device)
            self.device_ = str(device)

    def __sklearn_is_fitted__(self) -> bool:
        return "flow_" in self.__dict__
