"""The continuous normalizing flow: stacked CNF blocks over a standard normal base."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._divergence import (
    bottleneck_hutchinson_trace,
    exact_trace,
    hutchinson_trace,
    sample_probe,
)
from ._dynamics import VectorField
from ._ode import (
    FIXED_GRID_METHODS,
    TRAINING_FIXED_STEPS,
    integrate,
    integrate_rowwise,
    sets_grid,
)

__all__ = [
    "CNFBlock",
    "EvalConfig",
    "FFJORDFlow",
    "TrainConfig",
    "standard_normal_log_prob",
]


#: Share of a batch's rows at which the Jacobian penalty's product ``J eps`` is taken when
#: the closed-form exact trace is used (then the probe serves the penalty only). The penalty
#: is weighted up by the inverse share, so it stays an unbiased estimate of RNODE's
#: Frobenius term; the product cost a quarter of a likelihood step at d=43 on every row
#: (README, performance).
JACOBIAN_PENALTY_SHARE = 0.25


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """Log-density of ``N(0, I)`` at each row of ``z``, shape ``(batch,)``."""
    d = z.shape[-1]
    return -0.5 * z.pow(2).sum(-1) - 0.5 * d * math.log(2 * math.pi)


@dataclass(frozen=True)
class TrainConfig:
    """How a training solve is done (torchdiffeq, Hutchinson or exact trace)."""

    method: str = "dopri5"
    atol: float = 1e-5
    rtol: float = 1e-5
    options: dict | None = None
    adjoint: bool = False
    max_num_steps: int = 1000
    trace_estimator: str = "hutchinson"
    hutchinson_noise: str = "rademacher"
    kinetic_energy_reg: float = 0.0
    jacobian_reg: float = 0.0
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

    method: str = "dopri5"
    atol: float = 1e-6
    rtol: float = 1e-5
    options: dict | None = None
    max_num_steps: int = 10000
    dtype: torch.dtype | None = None


def _requires_grad(z: Tensor, keep_graph: bool) -> Tensor:
    """``z`` itself when its graph is kept and tracked, else a fresh leaf requiring grad."""
    if keep_graph and z.requires_grad:
        return z
    return z.detach().requires_grad_(True)


def field_and_exact_trace(
    field: VectorField, t: Tensor, z: Tensor, *, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """``f(z, t)`` and its exact Jacobian trace: closed form when the field allows it.

    ``z`` must require grad when the field has more than two hidden layers (the trace then
    comes from ``d`` batched vector-Jacobian products).
    """
    if getattr(field, "has_closed_form_trace", False):
        return field.forward_with_trace(t, z)
    f = field(t, z)
    return f, exact_trace(f, z, create_graph=create_graph)


def _scoring_field_and_trace(
    field: VectorField, t: Tensor, z: Tensor, workspace: dict[str, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """``f`` and its exact trace without any graph kept (scoring).

    With a ``workspace`` (one dict per solve) and a field that allows it, the hidden
    activations go into reused buffers (:meth:`VectorField.forward_with_trace_into`).
    """
    if workspace is not None and getattr(field, "has_fast_scoring_path", False):
        return field.forward_with_trace_into(t, z, workspace)
    if getattr(field, "has_closed_form_trace", False):
        with torch.no_grad():
            return field.forward_with_trace(t, z.detach())
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        f, div = field_and_exact_trace(field, t, z, create_graph=False)
    return f.detach(), div.detach()


class _TrainingDynamics(nn.Module):
    """Augmented dynamics of one training solve: ``(z, int tr, [int |f|^2, int |e^T J|^2])``.

    A fresh instance is made for every solve, so the Hutchinson probe held here is fixed
    across that solve's function evaluations and no state outlives the solve.
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
        self.nfe += 1
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = _requires_grad(state[0], create_graph)
            product = None  # J eps or eps^T J, for the Jacobian penalty
            if self.exact and self.probe is not None and self.field.has_closed_form_trace:
                # the Jacobian penalty's product, pushed forward with the closed-form trace
                f, div, product = self.field.forward_with_trace_and_jvp(
                    t, z, self.probe, self.probe_rows
                )
            elif self.exact:
                f, div = field_and_exact_trace(self.field, t, z, create_graph=create_graph)
                if self.probe is not None:  # for the Jacobian penalty only
                    _, product = hutchinson_trace(f, z, self.probe, create_graph=create_graph)
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


class _ExactDynamics(nn.Module):
    """Dynamics ``(z, int tr)`` with the exact trace, for scoring without gradients."""

    def __init__(self, field: VectorField) -> None:
        super().__init__()
        self.field = field
        self.nfe = 0
        self.workspace: dict[str, Tensor] = {}  # this solve's buffers

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        return _scoring_field_and_trace(self.field, t, state[0], self.workspace)


def _error_norm(state: tuple[Tensor, ...]) -> Tensor:
    """RMS error norm over ``z`` and the log-density only: regularisers are not controlled."""
    return torch.stack([s.pow(2).mean().sqrt() for s in state[:2]]).max()


class CNFBlock(nn.Module):
    """One CNF block: ``dz/dt = f(z, t)`` integrated over ``[0, T]``.

    Parameters
    ----------
    n_features : int
    hidden_layer_sizes : tuple of int
    activation : str
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

    def _rowwise_field(self, with_trace: bool) -> Callable[[Tensor, Tensor], Tensor]:
        """``func(t, y)`` for :func:`integrate_rowwise`; ``y = [z, log-det]`` with the trace."""

        def field_only(t: Tensor, z: Tensor) -> Tensor:
            return self.field(t, z)

        workspace: dict[str, Tensor] = {}  # this solve's buffers

        def field_and_trace(t: Tensor, y: Tensor) -> Tensor:
            f, div = _scoring_field_and_trace(self.field, t, y[:, :-1], workspace)
            return torch.cat([f, div.unsqueeze(1)], dim=1)

        return field_and_trace if with_trace else field_only

    def forward_exact(self, z: Tensor, config: EvalConfig) -> tuple[Tensor, Tensor, int]:
        """Data to latent with the exact trace: ``(z_T, int tr dt, nfe)``; rows independent."""
        T = self.integration_time
        if config.method in FIXED_GRID_METHODS:
            dynamics = _ExactDynamics(self.field)
            zeros = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
            with torch.no_grad():
                zT, div = integrate(
                    dynamics,
                    (z, zeros),
                    0.0,
                    T,
                    method=config.method,
                    atol=config.atol,
                    rtol=config.rtol,
                    options=config.options,
                )
            return zT, div, dynamics.nfe
        y0 = torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)
        with torch.no_grad():
            y1, nfe = integrate_rowwise(
                self._rowwise_field(True),
                y0,
                0.0,
                T,
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
        with torch.no_grad():
            if config.method in FIXED_GRID_METHODS:
                return integrate(
                    _FieldOnly(self.field),
                    (z,),
                    t0,
                    t1,
                    method=config.method,
                    atol=config.atol,
                    rtol=config.rtol,
                    options=config.options,
                )[0]
            return integrate_rowwise(
                self._rowwise_field(False),
                z,
                t0,
                t1,
                atol=config.atol,
                rtol=config.rtol,
                max_num_steps=config.max_num_steps,
                method=config.method,
            )[0]


class _FieldOnly(nn.Module):
    def __init__(self, field: VectorField) -> None:
        super().__init__()
        self.field = field

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor]:
        return (self.field(t, state[0]),)


class FFJORDFlow(nn.Module):
    """Stacked CNF blocks over a base distribution, behind a fixed map.

    The density of ``x`` (in the user's units) is that of ``u = (m(x) - loc) / scale``
    under the flow, times ``prod(1 / scale)`` and the Jacobian of ``m``, an optional
    :class:`~skffjord._marginal.QuantileGaussianizer` (the identity when ``None``).

    Parameters
    ----------
    n_features : int
    hidden_layer_sizes : tuple of int
    activation : str
    n_blocks : int
    integration_time : float
    loc, scale : Tensor of shape (n_features,)
        Standardisation (zeros and ones to switch it off).
    generator : torch.Generator or None
        Source of the initial weights.
    marginal : nn.Module or None
        Fixed map applied before ``loc`` and ``scale``
        (:class:`~skffjord._preprocessing.GaussianizingMap` or
        :class:`~skffjord._marginal.QuantileGaussianizer`).
    base : nn.Module or None
        Base distribution (:class:`~skffjord._base_distribution.GaussianMixtureBase`);
        ``None``: the standard normal.
    """

    def __init__(
        self,
        n_features: int,
        hidden_layer_sizes: tuple[int, ...],
        activation: str,
        n_blocks: int,
        integration_time: float,
        loc: Tensor,
        scale: Tensor,
        *,
        generator: torch.Generator | None = None,
        marginal: nn.Module | None = None,
        base: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.blocks = nn.ModuleList(
            CNFBlock(
                n_features, hidden_layer_sizes, activation, integration_time, generator=generator
            )
            for _ in range(n_blocks)
        )
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())
        self.marginal = marginal
        self.base = base

    def base_log_prob(self, z: Tensor) -> Tensor:
        """Log-density of the base distribution at each row of ``z``."""
        if self.base is None:
            return standard_normal_log_prob(z)
        return self.base.log_prob(z)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "marginal" not in self._modules and "marginal" not in self.__dict__:
            self.marginal = None  # pickled before the per-feature map existed
        if "base" not in self._modules and "base" not in self.__dict__:
            self.base = None

    def standardize_with_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``u = (m(x) - loc) / scale`` and ``log |det du/dx|`` per row, ``(batch,)``."""
        log_det = -torch.log(self.scale).sum().expand(x.shape[0])
        if self.marginal is not None:
            x, log_det_marginal = self.marginal(x)
            log_det = log_det + log_det_marginal
        return (x - self.loc) / self.scale, log_det

    def standardize(self, x: Tensor) -> Tensor:
        """``(m(x) - loc) / scale``."""
        return self.standardize_with_log_det(x)[0]

    def unstandardize(self, u: Tensor) -> Tensor:
        """``m^{-1}(u * scale + loc)``."""
        x = u * self.scale + self.loc
        return x if self.marginal is None else self.marginal.inverse(x)

    def log_abs_det_standardize(self, x: Tensor) -> Tensor:
        """``log |det du/dx|`` per row of ``x``, ``(batch,)``."""
        return self.standardize_with_log_det(x)[1]

    def train_log_prob(
        self, u: Tensor, config: TrainConfig, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, list[_TrainingDynamics]]:
        """Log-density of *standardised* rows ``u`` as used in training.

        Returns ``(log p(u), regulariser, dynamics)``: the first two of shape
        ``(batch,)``, and one dynamics object per block whose ``nfe`` counts its function
        evaluations.
        """
        z = u
        total_div = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
        reg = total_div
        dynamics = []
        for block in self.blocks:
            z, div, r, dyn = block.forward_train(z, config, generator)
            total_div = total_div + div
            reg = reg + r
            dynamics.append(dyn)
        return self.base_log_prob(z) + total_div, reg, dynamics

    def log_prob(self, x: Tensor, config: EvalConfig) -> Tensor:
        """Exact log-density of rows ``x`` in the user's units, shape ``(batch,)``."""
        u, log_det = self.standardize_with_log_det(x)
        return self.standardized_log_prob(u, config) + log_det

    def _blocks_for(self, config: EvalConfig) -> nn.ModuleList:
        """The blocks in the solve precision ``config.dtype`` (a cast copy when it differs)."""
        if config.dtype is None or config.dtype == next(self.blocks.parameters()).dtype:
            return self.blocks
        return copy.deepcopy(self.blocks).to(config.dtype)

    def standardized_log_prob(self, u: Tensor, config: EvalConfig) -> Tensor:
        """Exact log-density of *standardised* rows ``u`` (evaluation solver), ``(batch,)``."""
        blocks = self._blocks_for(config)
        z = u.to(config.dtype or u.dtype)
        total_div = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
        for block in blocks:
            z, div, _ = block.forward_exact(z, config)
            total_div = total_div + div.to(u.dtype)
        return self.base_log_prob(z.to(u.dtype)) + total_div

    def to_latent(self, x: Tensor, config: EvalConfig) -> Tensor:
        """Map data rows (user's units) to the base space."""
        u = self.standardize(x)
        z = u.to(config.dtype or u.dtype)
        for block in self._blocks_for(config):
            z = block.transport(z, config, inverse=False)
        return z.to(u.dtype)

    def path(self, x: Tensor, n_times: int, config: EvalConfig) -> Tensor:
        """States at ``n_times`` evenly spaced times of every block, data to latent.

        Returns a tensor of shape ``(1 + n_blocks * (n_times - 1), batch, d)`` in the user's
        units: every state is mapped back through the standardisation.
        """
        u = self.standardize(x)
        z = u.to(config.dtype or u.dtype)
        states = [u]
        for block in self._blocks_for(config):
            times = torch.linspace(0.0, block.integration_time, n_times).tolist()
            for t0, t1 in zip(times[:-1], times[1:], strict=True):
                z = block.transport_between(z, t0, t1, config)
                states.append(z)
        return torch.stack([self.unstandardize(s.to(u.dtype)) for s in states])

    def to_data(self, z: Tensor, config: EvalConfig) -> Tensor:
        """Map base-space rows to data rows (user's units) by integrating backwards."""
        out_dtype = z.dtype
        z = z.to(config.dtype or z.dtype)
        for block in reversed(self._blocks_for(config)):
            z = block.transport(z, config, inverse=True)
        return self.unstandardize(z.to(out_dtype))
