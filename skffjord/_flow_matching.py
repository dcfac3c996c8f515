"""Simulation-free training of the flow's vector fields by conditional flow matching.

The flow maps data ``x = z(0)`` to noise ``z(T)``. Flow matching regresses the vector field
onto the velocity of a straight (conditional optimal-transport) path between a data row ``u``
and a Gaussian draw ``e``: ``z_s = (1 - s) u + s e`` for ``s`` in [0, 1], whose velocity is
``e - u`` (Lipman et al., 2023; Tong et al., 2024). With ``K`` blocks of length ``T`` each, block
``k`` covers ``s`` in ``[k/K, (k+1)/K]`` at its local time ``t = (K s - k) T``, so its target is
``(e - u) / (K T)``. No ODE is solved during training; likelihoods are then computed exactly
from the same field by the instantaneous change of variables.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._flow import FFJORDFlow

__all__ = ["flow_matching_loss", "flow_matching_residuals"]


def flow_matching_loss(
    flow: FFJORDFlow,
    u: Tensor,
    weights: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """Weighted mean of :func:`flow_matching_residuals` (``weights`` must not sum to 0)."""
    per_row = flow_matching_residuals(flow, u, generator)
    return (per_row * weights).sum() / weights.sum()


def flow_matching_residuals(
    flow: FFJORDFlow,
    u: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """Squared error per row between the fields and the path velocities.

    Parameters
    ----------
    flow : FFJORDFlow
        Its blocks' fields are trained; ``u`` is already standardised.
    u : Tensor of shape (n, d)
    generator : torch.Generator or None
        Source of the Gaussian end points and of the times (rows and draws are paired
        independently: a minibatch optimal-transport pairing is slower per epoch and no
        better at equal time).

    Returns
    -------
    residuals : Tensor of shape (n,)
    """
    n = u.shape[0]
    if getattr(flow, "base", None) is None:
        noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
    else:
        noise = flow.base.rsample(u.shape, generator, u)
    s = torch.rand((n, 1), generator=generator, dtype=u.dtype, device=u.device)
    z = (1 - s) * u + s * noise
    n_blocks = len(flow.blocks)
    if n_blocks == 1:  # the default: no masks (their indexing is a noticeable share of a step)
        length = flow.blocks[0].integration_time
        prediction = flow.blocks[0].field(s * length, z)
        return (prediction - (noise - u) / length).pow(2).sum(dim=1)
    position = s * n_blocks
    index = position.floor().clamp(max=n_blocks - 1).squeeze(1).long()
    prediction = torch.zeros_like(u)
    target = torch.empty_like(u)
    for k, block in enumerate(flow.blocks):
        rows = index == k
        if not bool(rows.any()):
            continue
        length = block.integration_time
        t = (position[rows] - k) * length
        prediction = prediction.index_put((rows,), block.field(t, z[rows]))
        target[rows] = (noise[rows] - u[rows]) / (n_blocks * length)
    return (prediction - target).pow(2).sum(dim=1)
