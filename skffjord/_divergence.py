"""Divergence (Jacobian trace) estimators for the instantaneous change of variables."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "bottleneck_hutchinson_trace",
    "exact_trace",
    "hutchinson_trace",
    "sample_probe",
]


def sample_probe(
    shape: tuple[int, ...],
    *,
    kind: str,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """Draw a Hutchinson probe ``eps`` with ``E[eps eps^T] = I``.

    Parameters
    ----------
    shape : tuple of int
        ``(batch, k)``: one probe per row.
    kind : {'rademacher', 'gaussian'}
        Rademacher (+-1 with equal odds) or standard normal entries.
    generator : torch.Generator or None
        Random source (on ``device``).
    dtype, device
        Of the probe.
    """
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if kind == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=device)
        return bits.to(dtype) * 2 - 1
    raise ValueError(f"Unknown probe kind {kind!r}; expected 'rademacher' or 'gaussian'.")


def exact_trace(f: Tensor, z: Tensor, *, create_graph: bool) -> Tensor:
    """Exact ``tr(df/dz)`` per row, from ``d`` batched vector-Jacobian products.

    Parameters
    ----------
    f : Tensor of shape (batch, d)
        Output of the field, computed from ``z`` with autograd enabled.
    z : Tensor of shape (batch, d)
        Input that requires grad.
    create_graph : bool
        Keep the graph so the trace can be differentiated (training).

    Returns
    -------
    Tensor of shape (batch,)
    """
    d = z.shape[1]
    eye = torch.eye(d, dtype=f.dtype, device=f.device)
    grad_outputs = eye.unsqueeze(1).expand(d, *f.shape)  # (d, batch, d)
    try:
        (jac,) = torch.autograd.grad(
            f, z, grad_outputs, create_graph=create_graph, retain_graph=True, is_grads_batched=True
        )
        # jac[i, b, j] = d f_i / d z_j at row b
        return torch.diagonal(jac, dim1=0, dim2=2).sum(-1)
    except RuntimeError:  # pragma: no cover - vmap fallback for exotic ops
        total = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
        for i in range(d):
            (g,) = torch.autograd.grad(
                f[:, i].sum(), z, create_graph=create_graph, retain_graph=True
            )
            total = total + g[:, i]
        return total


def hutchinson_trace(
    f: Tensor, z: Tensor, probe: Tensor, *, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """Hutchinson's estimate ``eps^T (df/dz) eps`` with one vector-Jacobian product.

    Returns the estimate, shape (batch,), and the product ``eps^T (df/dz)``, shape
    (batch, d), whose squared norm estimates ``||df/dz||_F^2`` (RNODE's penalty).
    """
    (vjp,) = torch.autograd.grad(f, z, probe, create_graph=create_graph, retain_graph=True)
    return (vjp * probe).sum(-1), vjp


def bottleneck_hutchinson_trace(
    f: Tensor, a: Tensor, z: Tensor, probe: Tensor, *, create_graph: bool
) -> Tensor:
    """Hutchinson's estimate drawn in a bottleneck of width ``k < d``.

    With ``f = g(a)`` and ``a = h(z)``, ``tr(J_g J_h) = tr(J_h J_g)`` and
    ``eps^T J_h J_g eps = (eps^T J_h) J_g eps`` for ``eps`` in ``R^k``: one
    vector-Jacobian product through ``h`` and one through ``g``, together the cost of one
    product through ``f``.

    Parameters
    ----------
    f : Tensor of shape (batch, d)
    a : Tensor of shape (batch, k)
        Bottleneck activations, an intermediate of ``f``'s graph.
    z : Tensor of shape (batch, d)
    probe : Tensor of shape (batch, k)
    create_graph : bool
    """
    (w,) = torch.autograd.grad(  # eps^T J_h: (batch, d)
        a, z, probe, create_graph=create_graph, retain_graph=True
    )
    (u,) = torch.autograd.grad(f, a, w, create_graph=create_graph)  # eps^T J_h J_g: (batch, k)
    return (u * probe).sum(-1)
