"""FFJORDDensity: the scikit-learn estimator over the flow (parameters, validation, fitted
attributes); the fit itself is :func:`~skffjord._fitting.fit_flow`."""

from __future__ import annotations

from dataclasses import replace
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ._bounds import check_bounds, support
from ._fitted import fitted_attributes, restored_on_failure
from ._fitting import fit_flow, warn_solver_gap, warn_stop
from ._inference import FittedFlow
from ._model_file import ModelFileMixin
from ._persistence import restored, stamped
from ._settings import PARAMETER_CONSTRAINTS, eval_config, kept_structure, resolve
from ._start_model import StartModel
from ._streamed_rows import streams, training_rows
from ._utils import numeric_columns, resolve_device, spawn_seeds

__all__ = ["FFJORDDensity"]


class FFJORDDensity(ModelFileMixin, DensityMixin, BaseEstimator):
    """Density estimation with an FFJORD continuous normalizing flow.

    Data ``x`` pass through a fixed map (declared bounds opened, a per-feature map and
    whitening: ``standardize``) to ``u``, then ``dz/dt = f(z, t)``, a time-conditioned
    network, is integrated from ``z(0) = u``. By the instantaneous change of variables,
    ``log p(x) = log p_base(z(T)) + int_0^T tr(df/dz) dt + log |det du/dx|``, with a
    Gaussian or Gaussian-mixture base. The field starts at zero, so a fit starts from that
    classical model. :meth:`score_samples` uses the exact trace and a per-row adaptive
    solver: scores are deterministic and, up to the solver tolerance (exactly with
    ``eval_solver={'dtype': 'float64'}``), independent of which rows are scored together.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int or 'auto', default='auto'
        Hidden widths of ``f``; 'auto': two layers of ``8 d`` rounded up to a multiple of
        64 within [128, 256]. With at most two layers the exact trace costs a forward pass.
        A layer narrower than the data is a bottleneck, where Hutchinson probes are drawn.
    activation : {'softplus', 'tanh', 'elu', 'swish'}, default='softplus'
        Smooth non-linearity of ``f``.
    n_blocks : int, default=1
        Number of stacked CNF blocks, each with its own network.
    training : {'likelihood', 'flow_matching', 'hybrid'}, default='hybrid'
        'likelihood': maximum likelihood through the ODE solver (FFJORD). 'flow_matching':
        regress ``f`` onto the velocities of straight paths from base draws to data rows (no
        solve in training; validation scores are the negative regression loss). 'hybrid':
        flow matching, then likelihood for the last quarter of ``max_iter`` and
        ``max_time`` (``history_`` marks each epoch's ``phase``).
    trace_estimator : {'auto', 'hutchinson', 'exact'}, default='auto'
        Trace of ``df/dz`` in likelihood training: Hutchinson's estimator (one probe per
        solve) or exact; 'auto': exact with at most two hidden layers. Scores are exact.
    solver : dict or None, default=None
        The likelihood-training solve; given keys replace the defaults ``method='rk4'``
        (four steps, one more whenever an epoch's ``solver_gap`` exceeds a nat per row),
        ``options=None`` (torchdiffeq options), ``atol=1e-5``, ``rtol=1e-5``,
        ``max_num_steps=1000``, ``adjoint=False`` (adjoint gradients: memory independent of
        the steps), ``dtype='auto'`` ('float32', or 'bfloat16' products where the CPU has
        them natively and layers are 192 wide or more), ``kinetic_energy_reg=0.01`` and
        ``jacobian_reg=0.01`` (RNODE's penalties, which keep ``f`` smooth enough for the
        short solve). Unknown keys raise an error.
    eval_solver : dict or None, default=None
        The solve of scores, samples, trajectories and validation; given keys replace
        ``method='dopri5'`` (step size per row; or a fixed-step method with ``options``),
        ``atol=1e-6``, ``rtol=1e-5``, ``max_num_steps=10000`` and ``dtype='float32'``
        ('float64': scores independent of their batch-mates to rounding).
    standardize : bool or {'auto', 'affine', 'sinh_arcsinh', 'quantile'}, default='auto'
        The fixed map in front of the flow (its log-Jacobian is in every score). 'affine'
        (True): centre and whiten. 'sinh_arcsinh': per feature ``sinh(delta asinh((x - a) /
        b) - eps)`` fitted by maximum likelihood, then whitening. 'quantile': piecewise-linear
        onto normal quantiles. 'auto': 'affine' or 'sinh_arcsinh', by 5-fold cross-validated
        Gaussian log-likelihood. False: the identity.
    discrete_features : 'auto', None or array-like of shape (n_features,), default='auto'
        Cell width of each feature recorded to a resolution (0: continuous). These features
        are dequantised (spread over their cell, fresh each epoch), so the density does not
        spike on ties; a score then approximates the log-probability of the row's cell minus
        the log of its volume, and :meth:`sample` rounds to the grid. 'auto':
        :func:`~skffjord.find_discrete_features`. None: no dequantisation.
    bounds : dict, array-like of shape (n_features, 2) or None, default=None
        Declared ``(low, high)`` bounds per feature (a dict may name features or indices;
        None or an infinite value leaves a side open). A bounded feature goes through
        ``log``, ``-log`` or ``logit`` before ``standardize``: rows outside score ``-inf``,
        samples stay inside, a pile at a bound becomes a tail. Training values must lie
        strictly inside; a discrete feature's cells fill ``[low - step/2, high + step/2]``.
    n_components : int or 'auto', default='auto'
        Components of the base, a Gaussian mixture fitted by EM to the mapped rows and then
        fixed (1: standard normal). 'auto': the best held-out count of 1, 2, 3, 5, 8, 12, 20.
    batch_size : int or 'auto', default='auto'
        Mini-batch size; 'auto': ``min(512, n_samples)``.
    learning_rate_init : float, default=1e-3
        Adam's initial step size; likelihood epochs lower it when they stall.
    alpha : float, default=0.0
        L2 penalty (Adam's weight decay).
    max_iter : int or None, default=None
        Maximum number of epochs. None: no cap with ``max_time``, else 100; an epoch is then
        as many passes over the rows as make at least 20 mini-batches.
    max_time : float, default=None
        Wall-clock budget of a fit in seconds, checked after every optimizer step.
    tol : float, default=1e-4
        Improvement (nats per row) below which an epoch counts as no progress.
    n_iter_no_change : int, default=10
        Epochs without progress (training loss, or validation score with
        ``early_stopping``) before training stops.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the rows, stop when their log-likelihood stops
        improving and keep the best weights. The starting (or, with ``warm_start``, the
        fitted) model is kept unless the trained one beats it on those rows by more than one
        standard error of the paired per-row differences.
    validation_fraction : float, default=0.1
        Share of the rows held out for early stopping.
    device : str, default='cpu'
        'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available).
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, validation split, batches, dequantisation and probes.
    verbose : int, default=0
        0: silent; 1: one progress bar on stderr naming the phase and its loss; 2: also a
        line per epoch.
    warm_start : bool, default=False
        Continue from the fitted weights, map, base and optimizer state.

    Attributes
    ----------
    flow_ : torch.nn.Module
        The fitted flow on ``device_``: its network in float32 (the precision it is
        trained and by default scored in), the map and base around it in float64.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has string column names.
    n_iter_ : int
        Number of epochs run.
    history_ : list of dict
        Per epoch: ``epoch``, ``phase``, ``train_loss``, ``valid_score`` (NaN without early
        stopping, ``-inf`` where the solver failed), ``nfe``, ``nfe_backward``, ``n_steps``,
        ``learning_rate``, ``solver_gap`` (log-likelihood of 256 training rows through the
        training minus the evaluation solver: large when a coarse solver is exploited),
        ``time``.
    loss_curve_ : list of float
        ``train_loss`` per epoch.
    validation_scores_ : list of float or None
        ``valid_score`` per epoch with ``early_stopping``, else None.
    best_validation_score_ : float or None
        Validation mean log-likelihood of the weights kept, or None.
    best_loss_ : float
        Lowest training loss of an epoch.
    stop_reason_ : str
        Why training stopped: 'converged', 'max_iter', 'max_time', 'interrupted',
        'diverged' or 'solver_failed'.
    standardize_ : {'affine', 'sinh_arcsinh', 'quantile', 'none'}
        The map in front of the flow (the one ``standardize='auto'`` chose).
    standardize_scores_ : dict or None
        With ``standardize='auto'``: each candidate's cross-validated log-likelihood.
    discrete_features_ : ndarray of shape (`n_features_in_`,)
        Cell width of each dequantised feature, 0 for continuous ones.
    bounds_ : ndarray of shape (`n_features_in_`, 2)
        The declared bounds of each feature (``-inf``, ``inf``: none).
    n_components_ : int
        Components of the base distribution (1: the standard normal).
    n_components_scores_ : dict or None
        With ``n_components='auto'``: each tried count's held-out log-likelihood in the
        mapped space.
    device_ : str
        The device the model lives on.
    train_dtype_ : {'float32', 'bfloat16'}
        The training precision used.
    world_size_ : int
        Processes that fitted the model together: ``fit`` is data-parallel inside an
        initialised ``torch.distributed`` process group (``torchrun``); 1 otherwise.

    See Also
    --------
    sklearn.neighbors.KernelDensity : Kernel density estimation.
    sklearn.mixture.GaussianMixture : Gaussian mixture density.

    References
    ----------
    .. [1] W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud,
       "FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
       Models", ICLR 2019.
    .. [2] C. Finlay, J.-H. Jacobsen, L. Nurbekyan, A. Oberman, "How to train your
       neural ODE: the world of Jacobian and kinetic regularization", ICML 2020.
    .. [3] Y. Lipman, R. T. Q. Chen, H. Ben-Hamu, M. Nickel, M. Le, "Flow Matching for
       Generative Modeling", ICLR 2023.

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

    _parameter_constraints: dict = PARAMETER_CONSTRAINTS

    def __init__(
        self,
        *,
        hidden_layer_sizes: tuple[int, ...] | str = "auto",
        activation: str = "softplus",
        n_blocks: int = 1,
        training: str = "hybrid",
        trace_estimator: str = "auto",
        solver: dict | None = None,
        eval_solver: dict | None = None,
        standardize: bool | str = "auto",
        discrete_features: str | np.ndarray | None = "auto",
        bounds: dict | np.ndarray | None = None,
        n_components: int | str = "auto",
        batch_size: int | str = "auto",
        learning_rate_init: float = 1e-3,
        alpha: float = 0.0,
        max_iter: int | None = None,
        max_time: float | None = None,
        tol: float = 1e-4,
        n_iter_no_change: int = 10,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        device: str = "cpu",
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
        warm_start: bool = False,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.n_blocks = n_blocks
        self.training = training
        self.trace_estimator = trace_estimator
        self.solver = solver
        self.eval_solver = eval_solver
        self.standardize = standardize
        self.discrete_features = discrete_features
        self.bounds = bounds
        self.n_components = n_components
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.alpha = alpha
        self.max_iter = max_iter
        self.max_time = max_time
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> FFJORDDensity:
        """Fit the model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (numeric; a pandas DataFrame records ``feature_names_in_``).
            More than 65,536 rows (a ``numpy.memmap``, say) are read a batch at a time,
            not copied (user guide: "Data larger than memory").
        y : None
            Ignored; present for API consistency.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative row weights of the loss, the map, the base and the validation
            score; scaling them all by one factor changes nothing.

        Returns
        -------
        self : FFJORDDensity
            The fitted estimator. If training is interrupted (Ctrl-C) or diverges, the
            best (or last good) weights are kept and a warning says why. If ``fit``
            raises, the previously fitted model is left untouched.
        """
        with restored_on_failure(self):
            return self._fit(X, sample_weight)

    def _fit(self, X: Any, sample_weight: Any) -> FFJORDDensity:
        name = type(self).__name__
        X = numeric_columns(X, name)
        refit = self.warm_start and hasattr(self, "flow_")
        old_features = getattr(self, "n_features_in_", None)
        # many rows are read a batch at a time, not copied (see _streamed_rows)
        streamed = streams(X)
        X = validate_data(
            self, X, skip_check_array=streamed, dtype=np.float64, ensure_min_samples=1
        )
        if refit and old_features != X.shape[1]:
            raise ValueError(
                f"warm_start=True but X has {X.shape[1]} features while the fitted model "
                f"has {old_features}; refit with warm_start=False."
            )
        rows = training_rows(X, sample_weight, name, streamed)
        device = resolve_device(self.device)
        settings = resolve(self.get_params(deep=False), X.shape[1], device)
        if refit:
            resolution = self.discrete_features_
        else:
            resolution = rows.resolution(self.discrete_features)
        names = getattr(self, "feature_names_in_", None)
        rows.check(resolution, names, name)
        bounds = check_bounds(self.bounds, X.shape[1], names)
        interval = support(bounds, resolution)
        rows.inside(bounds, interval)
        structure = {**settings.structure, "bounds": tuple(map(tuple, bounds.tolist()))}
        previous = None
        if refit:
            structure = kept_structure(self._structure, self.standardize_, structure)
            previous = StartModel(
                self.flow_, self.standardize_, self.standardize_scores_, self.n_components_scores_
            )
        settings = replace(settings, structure=structure)
        outcome = fit_flow(
            rows,
            settings,
            resolution=resolution,
            interval=interval,
            device=device,
            seeds=tuple(spawn_seeds(check_random_state(self.random_state), 4)),
            previous=previous,
            optimizer_state=self.__dict__.get("_optimizer_state") if refit else None,
        )
        # Commit the fitted state only now (a failure above leaves the old model).
        self.__dict__.update(
            fitted_attributes(
                outcome,
                settings,
                device=device,
                resolution=resolution,
                bounds=bounds,
                interval=interval,
                grid_origin=self._grid_origin if refit else rows.lowest(),
                early_stopping=self.early_stopping,
                keep_optimizer_state=self.warm_start,
            )
        )
        warn_stop(outcome.result, self.max_iter, settings.eval_solver.method)
        warn_solver_gap(outcome.result.final_solver_gap, settings.solver, self.early_stopping)
        return self

    # ------------------------------------------------------------------ inference
    def _fitted_flow(self) -> FittedFlow:
        check_is_fitted(self)
        self._validate_params()  # parameters may have been set after fit
        return FittedFlow(
            flow=self.flow_,
            config=eval_config(self.eval_solver),
            hidden=self._structure["hidden_layer_sizes"],
            support=self._support,
            bounds=self.bounds_,
            resolution=self.discrete_features_,
            origin=self._grid_origin,
        )

    def _validated(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = numeric_columns(X, type(self).__name__)
        return validate_data(self, X, reset=False, dtype=np.float64)

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of each row, in natural-log units of the user's data.

        Computed with the exact trace and the evaluation solver (``eval_solver``), in
        chunks; deterministic. Rows outside the declared ``bounds`` score ``-inf``. A large
        array or DataFrame (a ``numpy.memmap`` of a file larger than memory, say) is read
        and converted block by block, so memory does not grow with its rows beyond the
        returned scores.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            ``log p(x)`` per row.
        """
        return self._fitted_flow().log_density_in_blocks(X, self._validated)

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
            Samples in the user's units; discrete features (``discrete_features_``) are
            rounded to their grid, so each grid point is drawn with the model's probability
            of its cell, and every feature lies within its ``bounds``.
        """
        check_is_fitted(self)
        if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        return self._fitted_flow().sample(int(n_samples), check_random_state(random_state))

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
            ``path[0]`` is ``X``; ``path[-1]`` is the latent point ``z(T)``; every state is
            mapped back through the inverse of the fixed map, into the user's units.
        """
        check_is_fitted(self)
        if not isinstance(n_times, Integral) or isinstance(n_times, bool) or n_times < 2:
            raise ValueError(f"n_times must be an integer of at least 2, got {n_times!r}.")
        return self._fitted_flow().path(self._validated(X), int(n_times))

    # ------------------------------------------------------------------ persistence
    def __getstate__(self) -> dict:
        return stamped(super().__getstate__())

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(restored(state, type(self).__name__))

    def __sklearn_is_fitted__(self) -> bool:
        return "flow_" in self.__dict__
