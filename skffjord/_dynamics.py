"""The vector field ``f(z, t)``: a time-conditioned concat-squash MLP, its closed-form
Jacobian trace and its fused scoring kernel."""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "ConcatSquashLinear",
    "VectorField",
    "activation_derivative",
    "auto_hidden_layer_sizes",
]

#: Activation names mapped to module *classes* (never shared instances).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "swish": nn.SiLU,
}


def auto_hidden_layer_sizes(n_features: int) -> tuple[int, int]:
    """Two hidden layers of width ``8 d`` rounded up to a multiple of 64, within [128, 256].

    Wider networks fit better at moderate d but take fewer steps in a time budget and score
    more slowly. The cap of 256 keeps scoring fast at large d (wider networks also fitted
    natural-image patches worse); the floor of 128 avoids the loss of too narrow a network
    at small d. Two layers keep the closed-form exact trace. Widths are compared at equal
    time by ``python benchmarks/defaults.py --dataset miniboone --budget 600 --configs ...``
    with one ``hidden_layer_sizes`` per configuration.
    """
    width = 64 * math.ceil(8 * n_features / 64)
    width = min(256, max(128, width))
    return (width, width)


def activation_derivative(name: str, pre: Tensor, out: Tensor) -> Tensor:
    """Elementwise derivative of activation ``name`` at ``pre``, given ``out = act(pre)``."""
    if name == "softplus":
        return torch.sigmoid(pre)
    if name == "tanh":
        return 1 - out * out
    if name == "elu":
        return torch.where(pre > 0, torch.ones_like(pre), out + 1)
    if name == "swish":
        s = torch.sigmoid(pre)
        return s * (1 + pre * (1 - s))
    raise ValueError(f"Unknown activation {name!r}.")


#: Pre-activations below this are raised to it before the scoring path's softplus: there
#: ``sigmoid`` is still a normal float32 (about 1.8e-35), so its log is finite, and softplus
#: and its slope are zero to within 1e-34 either way.
SOFTPLUS_FLOOR = -80.0


def _softplus_and_slope_(pre: Tensor, slope: Tensor, scratch: Tensor) -> tuple[Tensor, Tensor]:
    """Softplus of ``pre`` and its slope ``sigmoid(pre)`` from one sigmoid and one log,
    ``softplus(x) = x - log(sigmoid(x))``, in place: ``pre`` becomes the softplus, ``slope``
    receives the slope and ``scratch`` is clobbered (all three shaped alike).

    Cheaper than ``F.softplus`` plus ``sigmoid`` on CPUs without AVX-512, at the same
    accuracy. For the scoring kernel only: in training, autograd's backward pass through
    the log costs more than the route saves.
    """
    pre.clamp_min_(SOFTPLUS_FLOOR)
    torch.sigmoid(pre, out=slope)
    return pre.sub_(torch.log(slope, out=scratch)), slope


def _uniform_(tensor: Tensor, bound: float, generator: torch.Generator | None) -> None:
    """Fill ``tensor`` in place with U(-bound, bound) drawn from ``generator``."""
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator)


class ConcatSquashLinear(nn.Module):
    """Linear layer whose output is gated and shifted by the time ``t``.

    ``y = (W x + b) * sigmoid(W_g t + b_g) + W_h t`` (FFJORD's concat-squash layer), or
    ``y = W x + b + W_h t`` when ``gated=False``.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output.
    generator : torch.Generator or None
        Source of the initial weights (PyTorch's default ``nn.Linear`` scheme).
    zero_init : bool, default=False
        Start with ``W = 0``, ``b = 0`` and ``W_h = 0`` so the layer outputs zero.
    gated : bool, default=True
        Multiply by the time gate ``sigmoid(W_g t + b_g)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        generator: torch.Generator | None = None,
        zero_init: bool = False,
        gated: bool = True,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features) if gated else None
        self.hyper_bias = nn.Linear(1, out_features, bias=False)
        bound = 1.0 / math.sqrt(in_features)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
            nn.init.zeros_(self.hyper_bias.weight)
        else:
            _uniform_(self.linear.weight, bound, generator)
            _uniform_(self.linear.bias, bound, generator)
            _uniform_(self.hyper_bias.weight, 1.0, generator)
        if self.gate is not None:
            _uniform_(self.gate.weight, 1.0, generator)
            _uniform_(self.gate.bias, 1.0, generator)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """Apply the layer; ``t`` is a scalar or has shape ``(batch, 1)``."""
        return self.forward_with_gate(t, x)[0]

    def forward_with_gate(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return the output and the gate ``sigmoid(W_g t + b_g)`` (``None`` if ungated)."""
        t = t.to(x.dtype).reshape(-1, 1)
        # The time terms are outer products of t (one per row, or one for all) with a
        # column: fused multiply-adds, not matrix products with an inner size of 1.
        if self.gate is None:
            shift = torch.addcmul(self.linear.bias, t, self.hyper_bias.weight.T)
            return torch.addmm(shift, x, self.linear.weight.T), None
        gate = torch.sigmoid(torch.addcmul(self.gate.bias, t, self.gate.weight.T))
        return torch.addcmul(t * self.hyper_bias.weight.T, self.linear(x), gate), gate


class VectorField(nn.Module):
    """Time-conditioned MLP ``f(z, t)`` mapping ``R^d`` to ``R^d``.

    The last layer is zero-initialised, so an untrained field is zero and the flow it
    generates is the identity. The last layer is shifted by ``t`` but not gated: with at
    most two hidden layers the exact trace of the Jacobian then has a closed form that costs
    about one more hidden-layer product (:meth:`forward_with_trace`).

    Parameters
    ----------
    n_features : int
        Dimension ``d`` of the state.
    hidden_layer_sizes : tuple of int
        Widths of the hidden layers.
    activation : {'softplus', 'tanh', 'elu', 'swish'}
        Smooth non-linearity between layers.
    generator : torch.Generator or None
        Source of the initial weights.

    Attributes
    ----------
    bottleneck_index : int or None
        Index of the narrowest hidden layer when it is narrower than ``d`` (where the
        Hutchinson probe may be drawn), else ``None``.
    """

    def __init__(
        self,
        n_features: int,
        hidden_layer_sizes: tuple[int, ...],
        activation: str = "softplus",
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        sizes = [n_features, *hidden_layer_sizes, n_features]
        n_layers = len(sizes) - 1
        self.layers = nn.ModuleList(
            ConcatSquashLinear(
                sizes[i],
                sizes[i + 1],
                generator=generator,
                zero_init=(i == n_layers - 1),
                gated=(i < n_layers - 1),
            )
            for i in range(n_layers)
        )
        self.activation = activation
        self.activations = nn.ModuleList(ACTIVATIONS[activation]() for _ in range(n_layers - 1))
        self.bottleneck_index: int | None = None
        if hidden_layer_sizes:
            narrowest = min(range(len(hidden_layer_sizes)), key=hidden_layer_sizes.__getitem__)
            if hidden_layer_sizes[narrowest] < n_features:
                self.bottleneck_index = narrowest

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """Evaluate ``f(z, t)``; ``z`` has shape ``(batch, d)``."""
        return self.forward_with_bottleneck(t, z)[0]

    def forward_with_bottleneck(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """Evaluate ``f(z, t)`` and the activations ``a = h(z, t)`` at the bottleneck.

        With ``f = g(h(z))`` the trace of the Jacobian is ``tr(J_g J_h) = tr(J_h J_g)``,
        a ``k x k`` trace when the bottleneck has ``k < d`` units. Returns ``(f, a)``;
        ``a`` is ``None`` when the network has no bottleneck.
        """
        bottleneck = None
        h = z
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < last:
                h = self.activations[i](h)
                if i == self.bottleneck_index:
                    bottleneck = h
        # under mixed precision (torch.autocast) the last product comes out in the lower
        # precision; the solver's states stay in z's
        return h.to(z.dtype), bottleneck

    @property
    def has_closed_form_trace(self) -> bool:
        """Whether :meth:`forward_with_trace` applies (at most two hidden layers)."""
        return len(self.layers) <= 3

    @overload
    def forward_with_trace(
        self, t: Tensor, z: Tensor, v: None = None, rows: None = None
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward_with_trace(
        self, t: Tensor, z: Tensor, v: Tensor, rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def forward_with_trace(
        self, t: Tensor, z: Tensor, v: Tensor | None = None, rows: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """Evaluate ``f(z, t)``, the exact ``tr(df/dz)`` per row in closed form and, given
        ``v``, the Jacobian-vector product ``(df/dz) v``. Differentiable.

        With gates ``g_k`` and activation slopes ``s_k``, write ``u_k = g_k * s_k``. The
        Jacobian is ``W_3 diag(u_2) W_2 diag(u_1) W_1`` (two hidden layers), so by the
        cyclic property ``tr = u_2^T (W_2 * (W_1 W_3)^T) u_1``: the ``h_2 x h_1`` matrix
        is shared by all rows (the last layer is ungated), and the per-row cost is one
        hidden-layer product instead of ``d`` vector-Jacobian products. One hidden layer
        gives ``u_1 . diag(W_1 W_2)``; none gives ``tr(W_1)``.

        The product ``W_3 (u_2 * (W_2 (u_1 * (W_1 v))))`` reuses the trace's slopes: about
        one more evaluation of the field, and no second-order graph when it is
        differentiated (RNODE's Frobenius penalty ``|J v|^2``, an unbiased estimate of
        ``|J|_F^2`` for Rademacher or Gaussian ``v``).

        Parameters
        ----------
        t : Tensor
            The time: a scalar, or one per row of shape ``(batch, 1)``.
        z : Tensor of shape (batch, d)
            The state.
        v : Tensor of shape (batch, d) or (len(rows), d), optional
            Vectors to multiply by the Jacobian, one per row (of ``rows`` when given).
        rows : Tensor of int, optional
            Indices into ``z``'s rows, one per row of ``v``: the product is taken at those
            rows only, at a share of the cost. ``None``: ``v`` has a row for every row.

        Returns
        -------
        f : Tensor of shape (batch, d)
            The field, in ``z``'s precision (also under mixed precision).
        trace : Tensor of shape (batch,)
            ``tr(df/dz)`` per row.
        jvp : Tensor of shape (len(v), d)
            ``(df/dz) v`` per row of ``v``; returned only when ``v`` is given.

        Raises
        ------
        ValueError
            With more than two hidden layers (the autograd trace,
            :func:`~skffjord._divergence.exact_trace`, covers those).
        """
        if not self.has_closed_form_trace:
            raise ValueError("The closed-form trace needs at most two hidden layers.")
        h = z
        slopes = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            pre, gate = layer.forward_with_gate(t, h)
            if v is not None:
                v = v @ layer.linear.weight.T
            if i < last:
                h = self.activations[i](pre)
                slope = activation_derivative(self.activation, pre, h)
                slopes.append(slope * gate)
                if v is not None:
                    v = v * (slopes[-1] if rows is None else slopes[-1][rows])
            else:
                h = pre
        weights = [layer.linear.weight for layer in self.layers]
        if len(weights) == 1:
            trace = torch.diagonal(weights[0]).sum().expand(z.shape[0])
        elif len(weights) == 2:
            diag = (weights[0] * weights[1].T).sum(-1)  # diag(W_1 W_2)
            trace = slopes[0] @ diag
        else:
            trace = ((slopes[1] @ self._trace_kernel()) * slopes[0]).sum(-1)
        # in z's precision also under mixed precision (torch.autocast), as the solver's states
        if v is None:
            return h.to(z.dtype), trace.to(z.dtype)
        return h.to(z.dtype), trace.to(z.dtype), v.to(z.dtype)

    def forward_with_trace_into(
        self, t: Tensor, z: Tensor, workspace: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The fused scoring kernel: :meth:`forward_with_trace` without autograd, its
        intermediates written into ``workspace`` instead of fresh tensors.

        One scoring solve calls the field hundreds of times on up to thousands of rows. Fresh
        ``(batch, width)`` temporaries on every call are large blocks that the C allocator
        hands back to the system and takes again, a page fault per page touched; reused
        buffers avoid that. They are allocated at the first call, at its number of rows;
        later calls may have fewer rows (a per-row solver drops finished rows), never more.
        The trace's weight kernel is computed at the first call too, so use one
        ``workspace`` per solve, with the weights fixed.

        Parameters
        ----------
        t : Tensor
            The time: a scalar, or one per row of shape ``(batch, 1)``.
        z : Tensor of shape (batch, d)
            The state.
        workspace : dict of str to Tensor
            This solve's buffers: an empty dict at the first call.

        Returns
        -------
        f : Tensor of shape (batch, d)
        trace : Tensor of shape (batch,)
            Equal to :meth:`forward_with_trace`'s up to rounding.

        Raises
        ------
        ValueError
            Unless the network has two hidden layers and the softplus or tanh activation
            (:attr:`has_fast_scoring_path`).
        """
        if not self.has_fast_scoring_path:
            raise ValueError("The workspace path needs two hidden layers, softplus or tanh.")
        n = z.shape[0]
        if not workspace or workspace["act0"].shape[0] < n or workspace["act0"].dtype != z.dtype:
            workspace.clear()
            for i, layer in enumerate(self.layers[:2]):
                for name in ("pre", "gate", "act", "log"):
                    workspace[f"{name}{i}"] = z.new_empty(n, layer.linear.out_features)
            workspace["product"] = z.new_empty(n, self.layers[0].linear.out_features)
            with torch.no_grad():
                workspace["kernel"] = self._trace_kernel()  # the weights are fixed in a solve
        t = t.to(z.dtype).reshape(-1, 1)
        h, slopes = z, []
        with torch.no_grad():
            for i, layer in enumerate(self.layers[:2]):
                pre = torch.addmm(
                    layer.linear.bias, h, layer.linear.weight.T, out=workspace[f"pre{i}"][:n]
                )
                # one time for all rows (fixed-grid solvers) gives a (1, width) gate to
                # broadcast; a time per row (the per-row solver) fills the buffer
                gate = torch.addcmul(
                    layer.gate.bias,
                    t,
                    layer.gate.weight.T,
                    out=workspace[f"gate{i}"][:n] if t.shape[0] == n else None,
                ).sigmoid_()
                pre.mul_(gate).addcmul_(t, layer.hyper_bias.weight.T)
                if self.activation == "softplus":  # act{i} holds the slope, pre{i} the output
                    act, slope = _softplus_and_slope_(
                        pre, workspace[f"act{i}"][:n], workspace[f"log{i}"][:n]
                    )
                else:  # tanh
                    act = torch.tanh(pre, out=workspace[f"act{i}"][:n])
                    slope = torch.mul(act, act, out=pre).neg_().add_(1)
                slopes.append(slope.mul_(gate))
                h = act
            last = self.layers[2]
            shift = torch.addcmul(last.linear.bias, t, last.hyper_bias.weight.T)
            f = torch.addmm(shift, h, last.linear.weight.T)
            product = torch.mm(slopes[1], workspace["kernel"], out=workspace["product"][:n])
            trace = product.mul_(slopes[0]).sum(-1)
        return f, trace

    def _trace_kernel(self) -> Tensor:
        """``W_2 * (W_1 W_3)^T``, the rows' shared part of the two-layer trace."""
        w1, w2, w3 = (layer.linear.weight for layer in self.layers)
        return w2 * (w1 @ w3).T

    @property
    def has_fast_scoring_path(self) -> bool:
        """Whether the fused kernel :meth:`forward_with_trace_into` applies."""
        return len(self.layers) == 3 and self.activation in ("softplus", "tanh")
