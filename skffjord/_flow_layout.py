"""The layout of a fitted flow's modules: described as JSON data when a model file is
written, and rebuilt from that description and the stored tensors when it is read."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ._base_distribution import GaussianMixtureBase
from ._bounds import BoundsMap, ChainedMap
from ._dynamics import ACTIVATIONS
from ._flow import FFJORDFlow
from ._marginal import QuantileGaussianizer
from ._model_file_error import ModelFileError
from ._preprocessing import GaussianizingMap

__all__ = ["flow_layout", "named_tensor", "rebuilt_flow"]

_MAPS: dict[str, type[nn.Module]] = {
    "GaussianizingMap": GaussianizingMap,
    "QuantileGaussianizer": QuantileGaussianizer,
    "BoundsMap": BoundsMap,
    "ChainedMap": ChainedMap,
}


def _map_layout(module: nn.Module | None, where: str) -> dict | None:
    """The classes of a fixed map and of its parts (:data:`_MAPS`)."""
    if module is None:
        return None
    name = type(module).__name__
    if _MAPS.get(name) is not type(module):
        raise ModelFileError(f"The flow's {where} is a {name}, which a model file cannot store.")
    layout: dict[str, Any] = {"type": name}
    if isinstance(module, ChainedMap):
        layout["first"] = _map_layout(module.first, f"{where}.first")
        layout["second"] = _map_layout(module.second, f"{where}.second")
    return layout


def flow_layout(flow: FFJORDFlow) -> dict:
    """What :func:`rebuilt_flow` needs to build an empty flow of ``flow``'s shape."""
    field = flow.blocks[0].field
    if type(flow.base) not in (type(None), GaussianMixtureBase):
        raise ModelFileError(
            f"The flow's base is a {type(flow.base).__name__}, which a model file cannot store."
        )
    return {
        "n_features": int(flow.n_features),
        "hidden_layer_sizes": [int(layer.linear.out_features) for layer in field.layers[:-1]],
        "activation": field.activation,
        "integration_times": [float(block.integration_time) for block in flow.blocks],
        "marginal": _map_layout(flow.marginal, "marginal"),
        "base": None if flow.base is None else {"type": "GaussianMixtureBase"},
    }


def named_tensor(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The tensor ``name`` of ``tensors``, refused when the model file lacks it."""
    try:
        return tensors[name]
    except KeyError:
        raise ModelFileError(f"The model file has no tensor {name!r}.") from None


def _rebuilt_map(layout: dict | None, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """An empty map of ``layout`` whose buffers take the tensors under ``prefix``."""
    if layout is None:
        return None
    kind = layout["type"]
    if kind == "GaussianizingMap":
        names = ("a", "b", "eps", "delta", "mean", "chol")
        return GaussianizingMap(*(named_tensor(tensors, f"{prefix}.{n}") for n in names))
    if kind == "QuantileGaussianizer":
        return QuantileGaussianizer(
            named_tensor(tensors, f"{prefix}.grid"), named_tensor(tensors, f"{prefix}.knots")
        )
    if kind == "BoundsMap":
        n_features = named_tensor(tensors, f"{prefix}.low").shape[0]
        return BoundsMap(np.tile([-np.inf, np.inf], (n_features, 1)))
    if kind == "ChainedMap":
        return ChainedMap(
            _rebuilt_map(layout["first"], tensors, f"{prefix}.first"),
            _rebuilt_map(layout["second"], tensors, f"{prefix}.second"),
        )
    raise ModelFileError(f"The model file names an unknown map {kind!r}.")


def rebuilt_flow(layout: dict, tensors: dict[str, torch.Tensor]) -> FFJORDFlow:
    """The flow of ``layout`` with the ``state_dict`` in ``tensors`` loaded strictly: every
    tensor present, of the same shape and dtype."""
    activation = layout["activation"]
    if activation not in ACTIVATIONS:
        raise ModelFileError(f"The model file names an unknown activation {activation!r}.")
    base = None
    if layout["base"] is not None:
        log_weights = named_tensor(tensors, "base.log_weights")
        base = GaussianMixtureBase(
            log_weights.exp(),
            named_tensor(tensors, "base.means"),
            named_tensor(tensors, "base.chol"),
        )
    times = layout["integration_times"]
    # the layers draw initial weights (overwritten below) from the global generator too:
    # restore its state after them
    with torch.random.fork_rng(devices=[]):
        flow = FFJORDFlow(
            int(layout["n_features"]),
            tuple(int(h) for h in layout["hidden_layer_sizes"]),
            activation,
            len(times),
            times[0],
            named_tensor(tensors, "loc"),
            named_tensor(tensors, "scale"),
            generator=torch.Generator().manual_seed(0),
            marginal=_rebuilt_map(layout["marginal"], tensors, "marginal"),
            base=base,
        )
    for block, time in zip(flow.blocks, times, strict=True):
        block.integration_time = float(time)
    flow.blocks.to(named_tensor(tensors, "blocks.0.field.layers.0.linear.weight").dtype)
    flow.load_state_dict(tensors, strict=True)
    for name, value in flow.state_dict().items():
        if value.dtype != tensors[name].dtype:
            raise ModelFileError(
                f"The model file's tensor {name!r} is {tensors[name].dtype}; the flow holds "
                f"{value.dtype} there."
            )
    return flow.eval()
