"""Divergence (Jacobian trace) of the field for the instantaneous change of variables.

The exact trace comes from :func:`field_and_exact_trace`, which picks one of three
implementations: the field's fused scoring kernel (no autograd, reused buffers), its
differentiable closed form (at most two hidden layers), or :func:`exact_trace`, ``d``
vector-Jacobian products through any network. Training may instead estimate the trace with
Hutchinson's estimator (:func:`hutchinson_trace`, :func:`bottleneck_hutchinson_trace`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "bottleneck_hutchinson_trace",
    "exact_trace",
    "field_and_exact_trace",
    "hutchinson_trace",
    "requires_grad_input",
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


def requires_grad_input(z: Tensor, keep_graph: bool) -> Tensor:
    """``z`` itself when its graph is kept and tracked, else a fresh leaf requiring grad.

    Autograd's trace estimators differentiate the field with respect to its input, which
    must therefore require grad; a fresh leaf cuts the graph when it is not kept.
    """
    if keep_graph and z.requires_grad:
        return z
    return z.detach().requires_grad_(True)


def field_and_exact_trace(
    field: nn.Module,
    t: Tensor,
    z: Tensor,
    v: Tensor | None = None,
    rows: Tensor | None = None,
    *,
    create_graph: bool,
    workspace: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``f(z, t)``, its exact Jacobian trace per row and, given ``v``, a Jacobian product.

    The one place that chooses how the exact trace is computed:

    1. the fused kernel :meth:`~skffjord._dynamics.VectorField.forward_with_trace_into`
       when no graph is kept, no ``v`` is given, a ``workspace`` is and the field has the
       kernel (``has_fast_scoring_path``): scoring;
    2. the closed form :meth:`~skffjord._dynamics.VectorField.forward_with_trace` when the
       field has it (``has_closed_form_trace``, at most two hidden layers);
    3. otherwise :func:`exact_trace` through autograd (deeper networks, other fields).

    Parameters
    ----------
    field : nn.Module
        ``field(t, z) -> f``, optionally with the closed form and the fused kernel.
    t : Tensor
        The time: a scalar, or one per row of shape ``(batch, 1)``.
    z : Tensor of shape (batch, d)
        The state.
    v : Tensor of shape (batch, d) or (len(rows), d), optional
        Vectors for the Jacobian penalty.
    rows : Tensor of int, optional
        The rows of ``z`` that ``v``'s rows belong to; ``None``: all of them, in order.
    create_graph : bool
        Keep the graph so that the outputs can be differentiated (training). Otherwise no
        graph is kept and the outputs are detached.
    workspace : dict of str to Tensor, optional
        The fused kernel's buffers, one dict per solve (an empty dict at its start).

    Returns
    -------
    f : Tensor of shape (batch, d)
    trace : Tensor of shape (batch,)
    product : Tensor of shape (len(v), d) or None
        ``None`` without ``v``. Otherwise ``J v`` in closed form and ``v^T J`` from
        autograd, at the rows of ``v``: the squared norm of either is an unbiased estimate
        of ``|J|_F^2`` for Rademacher or Gaussian ``v`` (RNODE's Frobenius penalty).
    """
    closed_form = getattr(field, "has_closed_form_trace", False)
    if not create_graph:
        if v is None and workspace is not None and getattr(field, "has_fast_scoring_path", False):
            f, trace = field.forward_with_trace_into(t, z, workspace)
            return f, trace, None
        if closed_form:
            with torch.no_grad():
                return _closed_form(field, t, z.detach(), v, rows)
    elif closed_form:
        return _closed_form(field, t, z, v, rows)
    with torch.enable_grad():
        z = requires_grad_input(z, create_graph)
        f = field(t, z)
        trace = exact_trace(f, z, create_graph=create_graph)
        product = None
        if v is not None:
            probe = v if rows is None else v.new_zeros(z.shape).index_copy(0, rows, v)
            _, product = hutchinson_trace(f, z, probe, create_graph=create_graph)
            product = product if rows is None else product[rows]
    if not create_graph:
        f, trace = f.detach(), trace.detach()
        product = None if product is None else product.detach()
    return f, trace, product


def _closed_form(
    field: nn.Module, t: Tensor, z: Tensor, v: Tensor | None, rows: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The field's closed form, with ``None`` for the product when ``v`` is not given."""
    if v is None:
        return (*field.forward_with_trace(t, z), None)
    return field.forward_with_trace(t, z, v, rows)
