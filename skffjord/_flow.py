"""The continuous normalizing flow: stacked CNF blocks behind a fixed map, over a base."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from ._cnf_block import CNFBlock, EvalConfig, TrainConfig, _TrainingDynamics

__all__ = [
    "CNFBlock",
    "EvalConfig",
    "FFJORDFlow",
    "TrainConfig",
    "standard_normal_log_prob",
]


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """Log-density of ``N(0, I)`` at each row of ``z``, shape ``(batch,)``."""
    d = z.shape[-1]
    return -0.5 * z.pow(2).sum(-1) - 0.5 * d * math.log(2 * math.pi)


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

    def _solve_dtype(self, config: EvalConfig) -> torch.dtype:
        """The precision of a solve: ``config.dtype``, else the blocks' own."""
        return config.dtype or next(self.blocks.parameters()).dtype

    def _blocks_for(self, config: EvalConfig) -> nn.ModuleList:
        """The blocks in the solve precision (a cast copy when it differs from theirs)."""
        dtype = self._solve_dtype(config)
        if dtype == next(self.blocks.parameters()).dtype:
            return self.blocks
        return copy.deepcopy(self.blocks).to(dtype)

    def standardized_log_prob(self, u: Tensor, config: EvalConfig) -> Tensor:
        """Exact log-density of *standardised* rows ``u`` (evaluation solver), ``(batch,)``."""
        blocks = self._blocks_for(config)
        z = u.to(self._solve_dtype(config))
        total_div = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
        for block in blocks:
            z, div, _ = block.forward_exact(z, config)
            total_div = total_div + div.to(u.dtype)
        return self.base_log_prob(z.to(u.dtype)) + total_div

    def to_latent(self, x: Tensor, config: EvalConfig) -> Tensor:
        """Map data rows (user's units) to the base space."""
        u = self.standardize(x)
        z = u.to(self._solve_dtype(config))
        for block in self._blocks_for(config):
            z = block.transport(z, config, inverse=False)
        return z.to(u.dtype)

    def path(self, x: Tensor, n_times: int, config: EvalConfig) -> Tensor:
        """States at ``n_times`` evenly spaced times of every block, data to latent.

        Returns a tensor of shape ``(1 + n_blocks * (n_times - 1), batch, d)`` in the user's
        units: every state is mapped back through the standardisation.
        """
        u = self.standardize(x)
        z = u.to(self._solve_dtype(config))
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
        z = z.to(self._solve_dtype(config))
        for block in reversed(self._blocks_for(config)):
            z = block.transport(z, config, inverse=True)
        return self.unstandardize(z.to(out_dtype))
