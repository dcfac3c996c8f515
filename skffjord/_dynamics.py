"""The vector field f(z, t): a time-conditioned concat-squash MLP."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "ConcatSquashLinear", "VectorField"]

#: Activation names mapped to module *classes* (never shared instances).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "swish": nn.SiLU,
}


def _uniform_(tensor: Tensor, bound: float, generator: torch.Generator | None) -> None:
    """Fill ``tensor`` in place with U(-bound, bound) drawn from ``generator``."""
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator)


class ConcatSquashLinear(nn.Module):
    """Linear layer whose output is gated and shifted by the time ``t``.

    ``y = (W x + b) * sigmoid(W_g t + b_g) + W_h t`` (FFJORD's concat-squash layer).

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output.
    generator : torch.Generator or None
        Source of the initial weights (PyTorch's default ``nn.Linear`` scheme).
    zero_init : bool, default=False
        Start with ``W = 0``, ``b = 0`` and ``W_h = 0`` so the layer outputs zero.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        generator: torch.Generator | None = None,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
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
        _uniform_(self.gate.weight, 1.0, generator)
        _uniform_(self.gate.bias, 1.0, generator)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """Apply the layer; ``t`` is a scalar or has shape ``(batch, 1)``."""
        t = t.to(x.dtype).reshape(-1, 1)
        return self.linear(x) * torch.sigmoid(self.gate(t)) + self.hyper_bias(t)


class VectorField(nn.Module):
    """Time-conditioned MLP ``f(z, t)`` mapping ``R^d`` to ``R^d``.

    The last layer is zero-initialised, so an untrained field is zero and the flow it
    generates is the identity.

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
                sizes[i], sizes[i + 1], generator=generator, zero_init=(i == n_layers - 1)
            )
            for i in range(n_layers)
        )
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
        return h, bottleneck
