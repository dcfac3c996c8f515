"""One CNF block: the ODE dynamics of its solves and the solves themselves."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._defaults import EVAL_SOLVER_DEFAULTS, HUTCHINSON_NOISE, TRAIN_SOLVER_DEFAULTS
from ._divergence import (
    bottleneck_hutchinson_trace,
    field_and_exact_trace,
    hutchinson_trace,
    requires_grad_input,
    sample_probe,
)
from ._dynamics import VectorField
from ._ode import (
    FIXED_GRID_METHODS,
    TRAINING_FIXED_STEPS,
    integrate,
    sets_grid,
)
from ._rowwise_ode import integrate_rowwise

__all__ = [
    "JACOBIAN_PENALTY_SHARE",
    "CNFBlock",
    "EvalConfig",
    "TrainConfig",
]


#: Share of a batch's rows at which the Jacobian penalty's product ``J eps`` is taken when
#: the closed-form exact trace is used (the probe then serves the penalty only). The penalty
#: is weighted up by the inverse share, so it stays an unbiased estimate of RNODE's
#: Frobenius term at a share of the product's cost.
JACOBIAN_PENALTY_SHARE = 0.25


@dataclass(frozen=True)
class TrainConfig:
    """How a training solve is done (torchdiffeq, Hutchinson or exact trace); the defaults
    are the estimator's (:data:`~skffjord._defaults.TRAIN_SOLVER_DEFAULTS`)."""

    method: str = TRAIN_SOLVER_DEFAULTS["method"]
    atol: float = TRAIN_SOLVER_DEFAULTS["atol"]
    rtol: float = TRAIN_SOLVER_DEFAULTS["rtol"]
    options: dict | None = None
    adjoint: bool = TRAIN_SOLVER_DEFAULTS["adjoint"]
    max_num_steps: int = TRAIN_SOLVER_DEFAULTS["max_num_steps"]
    trace_estimator: str = "exact"
    hutchinson_noise: str = HUTCHINSON_NOISE
    kinetic_energy_reg: float = TRAIN_SOLVER_DEFAULTS["kinetic_energy_reg"]
    jacobian_reg: float = TRAIN_SOLVER_DEFAULTS["jacobian_reg"]
    #: Steps over ``[0, T]`` of a fixed-grid ``method`` given no ``step_size`` in ``options``.
    fixed_steps: int = TRAINING_FIXED_STEPS

    @property
    def refinable(self) -> bool:
        """Whether the step count is ours to change (fixed grid, no user step size)."""
        return self.method in FIXED_GRID_METHODS and not sets_grid(self.options)


@dataclass(frozen=True)
class EvalConfig:
    """How a scoring or sampling solve is done (exact trace, rows independent).

    ``dtype`` is the precision of the solve (``None``: the flow's own). The standardisation
    and the final sum of the log-density stay in the precision of the input rows.
    """

    method: str = EVAL_SOLVER_DEFAULTS["method"]
    atol: float = EVAL_SOLVER_DEFAULTS["atol"]
    rtol: float = EVAL_SOLVER_DEFAULTS["rtol"]
    options: dict | None = None
    max_num_steps: int = EVAL_SOLVER_DEFAULTS["max_num_steps"]
    dtype: torch.dtype | None = None


class _TrainingDynamics(nn.Module):
    """Augmented dynamics of one training solve: ``(z, int tr, [int |f|^2, int |e^T J|^2])``.

    A fresh instance is made for every solve, so the Hutchinson probe held here is fixed
    across that solve's function evaluations and no state outlives the solve.

    Parameters
    ----------
    field : VectorField
        The block's network.
    probe : Tensor or None
        The solve's Hutchinson probe (also the Jacobian penalty's vectors), or ``None``.
    probe_rows : Tensor of int or None
        The rows the probe's rows belong to; ``None``: all rows, in order.
    exact : bool
        Exact trace (:func:`~skffjord._divergence.field_and_exact_trace`) instead of
        Hutchinson's estimate.
    bottleneck : bool
        Hutchinson's estimate drawn in the field's bottleneck.
    regularize : bool
        Integrate the kinetic energy and the Jacobian penalty too.

    Attributes
    ----------
    nfe : int
        Function evaluations so far.
    """

    def __init__(
        self,
        field: VectorField,
        probe: Tensor | None,
        *,
        probe_rows: Tensor | None = None,
        exact: bool,
        bottleneck: bool,
        regularize: bool,
    ) -> None:
        super().__init__()
        self.field = field
        self.probe = probe
        self.probe_rows = probe_rows
        self.exact = exact
        self.bottleneck = bottleneck
        self.regularize = regularize
        self.nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The derivatives of the augmented state at time ``t``."""
        self.nfe += 1
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = requires_grad_input(state[0], create_graph)
            product = None  # J eps or eps^T J, for the Jacobian penalty
            if self.exact:
                f, div, product = field_and_exact_trace(
                    self.field, t, z, self.probe, self.probe_rows, create_graph=create_graph
                )
            elif self.bottleneck:
                f, a = self.field.forward_with_bottleneck(t, z)
                div = bottleneck_hutchinson_trace(f, a, z, self.probe, create_graph=create_graph)
            else:
                f = self.field(t, z)
                div, product = hutchinson_trace(f, z, self.probe, create_graph=create_graph)
        if not create_graph:
            f, div = f.detach(), div.detach()
        out = (f, div)
        if self.regularize:
            kinetic = f.pow(2).sum(-1)
            frobenius = torch.zeros_like(kinetic)
            if product is not None:
                squares = product.pow(2).sum(-1)
                if self.probe_rows is None:
                    frobenius = squares
                else:  # a random share of the rows, weighted up by its inverse: unbiased
                    weight = kinetic.shape[0] / self.probe_rows.numel()
                    frobenius = frobenius.index_add(0, self.probe_rows, squares * weight)
            out = (*out, kinetic, frobenius)
        return out


class _ScoringDynamics(nn.Module):
    """Dynamics of a solve without gradients: ``(z, int tr)`` with the exact trace, or the
    state ``z`` alone.

    :meth:`forward` takes torchdiffeq's tuple of states; :meth:`rowwise` takes
    :func:`~skffjord._rowwise_ode.integrate_rowwise`'s ``y = [z, log-det]`` (or ``y = z``).

    Parameters
    ----------
    field : VectorField
        The block's network.
    with_trace : bool
        Integrate the exact trace alongside the state.

    Attributes
    ----------
    nfe : int
        Function evaluations through :meth:`forward` so far.
    workspace : dict of str to Tensor
        This solve's buffers for the fused scoring kernel.
    """

    def __init__(self, field: VectorField, *, with_trace: bool) -> None:
        super().__init__()
        self.field = field
        self.with_trace = with_trace
        self.nfe = 0
        self.workspace: dict[str, Tensor] = {}

    def _field_and_trace(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        f, div, _ = field_and_exact_trace(
            self.field, t, z, create_graph=False, workspace=self.workspace
        )
        return f, div

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """``(f, tr)`` at ``state = (z, log-det)``, or ``(f,)`` at ``state = (z,)``."""
        self.nfe += 1
        if not self.with_trace:
            return (self.field(t, state[0]),)
        return self._field_and_trace(t, state[0])

    def rowwise(self, t: Tensor, y: Tensor) -> Tensor:
        """``[f, tr]`` at ``y = [z, log-det]``, or ``f`` at ``y = z``."""
        if not self.with_trace:
            return self.field(t, y)
        f, div = self._field_and_trace(t, y[:, :-1])
        return torch.cat([f, div.unsqueeze(1)], dim=1)


def _error_norm(state: tuple[Tensor, ...]) -> Tensor:
    """RMS error norm over ``z`` and the log-density only: regularisers are not controlled."""
    return torch.stack([s.pow(2).mean().sqrt() for s in state[:2]]).max()


class CNFBlock(nn.Module):
    """One CNF block: ``dz/dt = f(z, t)`` integrated over ``[0, T]``.

    Parameters
    ----------
    n_features : int
        Dimension ``d`` of the state.
    hidden_layer_sizes : tuple of int
        Widths of the field's hidden layers.
    activation : str
        The field's non-linearity (a key of :data:`~skffjord._dynamics.ACTIVATIONS`).
    integration_time : float
        End time ``T``.
    generator : torch.Generator or None
        Source of the initial weights.
    """

    def __init__(
        self,
        n_features: int,
        hidden_layer_sizes: tuple[int, ...],
        activation: str,
        integration_time: float,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.field = VectorField(n_features, hidden_layer_sizes, activation, generator=generator)
        self.integration_time = float(integration_time)

    def forward_train(
        self, z: Tensor, config: TrainConfig, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, _TrainingDynamics]:
        """Integrate data to latent for training.

        Returns ``(z_T, int tr dt, regulariser, dynamics)``; the log-density of the input
        is ``log p(z_T) + int tr dt`` (instantaneous change of variables), and
        ``dynamics.nfe`` counts the function evaluations of this solve (the adjoint's
        backward evaluations are added when ``backward`` runs).
        """
        regularize = config.kinetic_energy_reg > 0 or config.jacobian_reg > 0
        probe = probe_rows = None
        bottleneck = False
        exact = config.trace_estimator == "exact"
        if not exact or config.jacobian_reg > 0:
            n, k = z.shape
            if not exact and self.field.bottleneck_index is not None and config.jacobian_reg == 0:
                bottleneck = True
                k = self.field.layers[self.field.bottleneck_index].linear.out_features
            if exact and self.field.has_closed_form_trace and JACOBIAN_PENALTY_SHARE < 1:
                # the probe is for the Jacobian penalty only: take it at a random share of
                # the rows (the penalty is weighted up to stay unbiased)
                n_probed = max(1, math.ceil(JACOBIAN_PENALTY_SHARE * n))
                probe_rows = torch.randperm(n, generator=generator, device=z.device)[:n_probed]
                n = n_probed
            probe = sample_probe(
                (n, k),
                kind=config.hutchinson_noise,
                generator=generator,
                dtype=z.dtype,
                device=z.device,
            )
        dynamics = _TrainingDynamics(
            self.field,
            probe,
            probe_rows=probe_rows,
            exact=exact,
            bottleneck=bottleneck,
            regularize=regularize,
        )
        zeros = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        state: tuple[Tensor, ...] = (z, zeros)
        if regularize:
            state = (z, zeros, zeros.clone(), zeros.clone())
        options = dict(config.options or {})
        if regularize and config.method not in FIXED_GRID_METHODS:
            options.setdefault("norm", _error_norm)
        out = integrate(
            dynamics,
            state,
            0.0,
            self.integration_time,
            method=config.method,
            atol=config.atol,
            rtol=config.rtol,
            options=options,
            adjoint=config.adjoint,
            max_num_steps=config.max_num_steps,
            fixed_steps=config.fixed_steps,
        )
        reg = zeros
        if regularize:
            reg = config.kinetic_energy_reg * out[2] + config.jacobian_reg * out[3]
        return out[0], out[1], reg, dynamics

    def forward_exact(self, z: Tensor, config: EvalConfig) -> tuple[Tensor, Tensor, int]:
        """Data to latent with the exact trace: ``(z_T, int tr dt, nfe)``; rows independent."""
        dynamics = _ScoringDynamics(self.field, with_trace=True)
        if config.method in FIXED_GRID_METHODS:
            zeros = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
            zT, div = self._solve(dynamics, (z, zeros), 0.0, self.integration_time, config)
            return zT, div, dynamics.nfe
        y0 = torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)
        with torch.no_grad():
            y1, nfe = integrate_rowwise(
                dynamics.rowwise,
                y0,
                0.0,
                self.integration_time,
                atol=config.atol,
                rtol=config.rtol,
                max_num_steps=config.max_num_steps,
                method=config.method,
            )
        return y1[:, :-1], y1[:, -1], nfe

    def transport(self, z: Tensor, config: EvalConfig, *, inverse: bool) -> Tensor:
        """Map data to latent (``inverse=False``) or latent to data, without the trace."""
        t0, t1 = (self.integration_time, 0.0) if inverse else (0.0, self.integration_time)
        return self.transport_between(z, t0, t1, config)

    def transport_between(self, z: Tensor, t0: float, t1: float, config: EvalConfig) -> Tensor:
        """Integrate the state from time ``t0`` to ``t1`` (either order), without the trace."""
        dynamics = _ScoringDynamics(self.field, with_trace=False)
        if config.method in FIXED_GRID_METHODS:
            return self._solve(dynamics, (z,), t0, t1, config)[0]
        with torch.no_grad():
            return integrate_rowwise(
                dynamics.rowwise,
                z,
                t0,
                t1,
                atol=config.atol,
                rtol=config.rtol,
                max_num_steps=config.max_num_steps,
                method=config.method,
            )[0]

    @staticmethod
    def _solve(
        dynamics: _ScoringDynamics,
        state: tuple[Tensor, ...],
        t0: float,
        t1: float,
        config: EvalConfig,
    ) -> tuple[Tensor, ...]:
        """A fixed-grid torchdiffeq solve of ``dynamics`` without gradients."""
        with torch.no_grad():
            return integrate(
                dynamics,
                state,
                t0,
                t1,
                method=config.method,
                atol=config.atol,
                rtol=config.rtol,
                options=config.options,
            )
