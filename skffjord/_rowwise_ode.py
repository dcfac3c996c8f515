"""The per-row adaptive solver: an embedded Runge-Kutta pair whose step size is controlled
for each row on its own, so that a row's solution does not depend on its batch-mates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._ode import SolverError

__all__ = ["ROWWISE_TABLEAUS", "integrate_rowwise"]


@dataclass(frozen=True)
class _Tableau:
    """An explicit embedded Runge-Kutta pair whose last stage is evaluated at the new state
    (first same as last), so a step costs ``len(c) - 1`` new evaluations."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...]  # b minus the embedded weights: the local error estimate
    error_order: int  # the estimate is O(h ** error_order)


_DOPRI5 = _Tableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    e=(
        35 / 384 - 5179 / 57600,
        0.0,
        500 / 1113 - 7571 / 16695,
        125 / 192 - 393 / 640,
        -2187 / 6784 + 92097 / 339200,
        11 / 84 - 187 / 2100,
        -1 / 40,
    ),
    error_order=5,
)

#: The per-row solver's methods (``integrate_rowwise(method=...)``): Dormand-Prince 5(4)
#: with the classical step-size controller, which needs fewer function evaluations per row
#: on trained fields at the default tolerances than Tsitouras 5(4), Dormand-Prince 8(7) or
#: a proportional-integral controller.
ROWWISE_TABLEAUS = {"dopri5": _DOPRI5}


def _rms(x: Tensor) -> Tensor:
    """Row-wise root mean square, safe from overflow in the squares."""
    peak = x.abs().amax(dim=-1)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return peak * (x / safe.unsqueeze(-1)).pow(2).mean(dim=-1).sqrt()


def _indices(mask: Tensor, rows: Tensor | None = None) -> list[int]:
    """The batch indices of the rows where ``mask`` holds (``rows``: the batch index of each
    entry of ``mask``; default, the entries themselves)."""
    where = torch.nonzero(mask).flatten()
    return (where if rows is None else rows[where]).tolist()


def integrate_rowwise(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    atol: float,
    rtol: float,
    max_num_steps: int = 10000,
    safety: float = 0.9,
    method: str = "dopri5",
    stats: dict | None = None,
) -> tuple[Tensor, int]:
    """Dormand-Prince 5(4) with a step size of its own for every row.

    Adaptive solvers for batched states usually share one step size across the whole
    batch, so a row's result depends on its batch-mates. Here each row is an independent
    initial value problem: it keeps its own time, step size and error control, so its
    result does not depend on which other rows are solved with it.

    Parameters
    ----------
    func : callable
        ``func(t, y) -> dy/dt`` with ``t`` of shape ``(batch, 1)`` and ``y`` of shape
        ``(batch, m)``; rows must not interact.
    y0 : Tensor of shape (batch, m)
    t0, t1 : float
        Interval; ``t1 < t0`` integrates backwards.
    atol, rtol : float
        Per-row error control in the max norm: every component of every row keeps its
        local error estimate below ``atol + rtol * |y|`` (stricter than an RMS norm).
    max_num_steps : int
        Cap on the attempted steps of any row.
    safety : float
        Step-size safety factor.
    method : {'dopri5'}
        The embedded pair, a key of :data:`ROWWISE_TABLEAUS`.
    stats : dict or None
        When given, receives ``row_evaluations`` (the sum over function evaluations of the
        rows evaluated: the solve's work), ``attempted`` and ``rejected`` (steps summed
        over rows).

    Returns
    -------
    y1 : Tensor of shape (batch, m)
    nfe : int
        Number of batched function evaluations.

    Raises
    ------
    SolverError
        When a row needs more than ``max_num_steps`` steps, its step size underflows or its
        state turns non-finite; its ``rows`` lists the rows of ``y0`` that failed.
    """
    if method not in ROWWISE_TABLEAUS:
        raise ValueError(f"Unknown per-row method {method!r}; use one of {list(ROWWISE_TABLEAUS)}.")
    tab = ROWWISE_TABLEAUS[method]
    n_stages = len(tab.c)
    n = y0.shape[0]
    dtype, device = y0.dtype, y0.device
    span = t1 - t0
    direction = 1.0 if span >= 0 else -1.0
    length = abs(span)
    y1 = y0.clone()
    if n == 0 or length == 0:
        return y1, 0

    # Times are measured as elapsed |t - t0| in float64.
    tau = torch.zeros(n, dtype=torch.float64, device=device)
    y = y0.clone()

    def f(elapsed: Tensor, state: Tensor) -> Tensor:
        t = (t0 + direction * elapsed).to(dtype).unsqueeze(1)
        return func(t, state) * direction

    k1 = f(tau, y)
    nfe = 1
    if not (torch.isfinite(y).all() and torch.isfinite(k1).all()):
        bad = ~(torch.isfinite(y).all(dim=1) & torch.isfinite(k1).all(dim=1))
        raise SolverError(
            "the ODE state or its derivative is non-finite at the start", _indices(bad)
        )
    # Initial step (Hairer, Norsett & Wanner, II.4), per row.
    scale = atol + rtol * y.abs()
    d0 = _rms(y / scale)
    d1 = _rms(k1 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h = torch.clamp(h0.to(torch.float64), max=length)
    y_e = y + h.to(dtype).unsqueeze(1) * k1
    k_e = f(tau + h, y_e)
    nfe += 1
    d2 = _rms((k_e - k1) / scale) / h.to(dtype)
    big = torch.maximum(d1, d2)
    h1 = torch.where(
        big <= 1e-15,
        torch.maximum(h * 1e-3, torch.full_like(h, 1e-6)),
        (0.01 / big.clamp_min(1e-300)).to(torch.float64) ** (1 / 5),
    )
    h = torch.minimum(torch.minimum(100 * h, h1.to(torch.float64)), torch.full_like(h, length))
    fallback = torch.full_like(h, 1e-6 * length)
    h = torch.where(torch.isfinite(h) & (h > 0), h, fallback)

    active = torch.arange(n, device=device)
    steps = torch.zeros(n, dtype=torch.int64, device=device)
    work, attempted, rejected = 2 * n, 0, 0
    while active.numel() > 0:
        if int(steps.max()) >= max_num_steps:
            raise SolverError(
                f"the per-row solver reached its step cap ({max_num_steps} steps)",
                _indices(steps >= max_num_steps, active),
            )
        h = torch.minimum(h, length - tau)
        hd = h.to(dtype).unsqueeze(1)
        ks = [k1]
        for i in range(1, n_stages):
            yi = y + hd * sum(a * k for a, k in zip(tab.a[i], ks, strict=True) if a != 0.0)
            ks.append(f(tau + tab.c[i] * h, yi))
        nfe += n_stages - 1
        work += (n_stages - 1) * active.numel()
        y_new = y + hd * sum(b * k for b, k in zip(tab.b, ks, strict=True) if b != 0.0)
        err = hd * sum(e * k for e, k in zip(tab.e, ks, strict=True) if e != 0.0)
        tol = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        ratio = (err / tol).abs().amax(dim=-1).to(torch.float64)
        if not (torch.isfinite(y_new).all() and torch.isfinite(ratio).all()):
            bad = ~(torch.isfinite(y_new).all(dim=1) & torch.isfinite(ratio))
            failed = bad & ((ratio <= 1) | (h < 1e-12 * length))
            if bool(failed.any()):
                raise SolverError(
                    "the ODE state became non-finite (NaN or inf)", _indices(failed, active)
                )
            ratio = torch.where(bad, torch.full_like(ratio, 1e10), ratio)
        accept = ratio <= 1.0
        steps += 1
        if stats is not None:  # a count costs a reduction and a sync per step
            attempted += active.numel()
            rejected += int((~accept).sum())
        factor = torch.where(
            ratio == 0,
            torch.full_like(ratio, 10.0),
            safety * ratio.clamp_min(1e-300) ** (-1 / tab.error_order),
        ).clamp(0.2, 10.0)
        stuck = ~accept & (h * 0.2 <= 1e-14 * length)
        if bool(stuck.any()):
            raise SolverError(
                "the adaptive step size underflowed (the dynamics became stiff)",
                _indices(stuck, active),
            )
        tau = torch.where(accept, tau + h, tau)
        acc = accept.unsqueeze(1)
        y = torch.where(acc, y_new, y)
        k1 = torch.where(acc, ks[-1], k1)  # first same as last
        h = h * factor
        done = accept & (tau >= length * (1 - 1e-12))
        if done.any():
            y1[active[done]] = y[done]
            keep = ~done
            active, tau, y, k1, h, steps = (
                active[keep],
                tau[keep],
                y[keep],
                k1[keep],
                h[keep],
                steps[keep],
            )
    if stats is not None:
        stats.update(row_evaluations=work, attempted=attempted, rejected=rejected)
    return y1, nfe
