"""Values as JSON data: tagged objects for what JSON lacks, and the values read back.

A tagged object is a dict with one key starting with ``__`` (:data:`_TAGS`) that holds a
tuple, a dict whose keys are not all strings, a non-finite float, a NumPy scalar or array,
or the state of a :class:`numpy.random.RandomState`. Decoding builds only those values: it
never unpickles or evaluates anything.

Examples
--------
>>> import json
>>> from skffjord._json_codec import decode, encode
>>> data = encode({"sizes": (64, 64), 0: float("nan")}, "example")
>>> decode(json.loads(json.dumps(data, allow_nan=False)))
{'sizes': (64, 64), 0: nan}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._model_file_error import ModelFileError

__all__ = ["decode", "encode"]

_TAGS = (
    "__tuple__",
    "__float__",
    "__dict__",
    "__numpy__",
    "__ndarray__",
    "__random_state__",
)


def encode(value: Any, where: str) -> Any:
    """``value`` as plain JSON data, with tags for what JSON lacks; ``where`` names it in
    the error raised for a value that a model file cannot hold."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        if not isinstance(value, np.bool_ | np.number):
            raise ModelFileError(f"{where} holds {value!r}, which a model file cannot store.")
        return {"__numpy__": value.dtype.name, "value": encode(value.item(), where)}
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {"__float__": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, where) for v in value]}
    if isinstance(value, list):
        return [encode(v, where) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: encode(v, where) for k, v in value.items()}
        return {"__dict__": [[encode(k, where), encode(v, where)] for k, v in value.items()]}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufO":
        return {
            "__ndarray__": [encode(v, where) for v in value.ravel().tolist()],
            "dtype": value.dtype.name,
            "shape": list(value.shape),
        }
    if isinstance(value, np.random.RandomState):
        name, keys, pos, has_gauss, cached = value.get_state(legacy=True)
        state = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
        return {"__random_state__": state}
    raise ModelFileError(
        f"{where} holds a {type(value).__name__}, which a model file cannot store; set it "
        "to a number, string, list, tuple, dict, NumPy array or None before saving."
    )


def decode(data: Any) -> Any:
    """The value that :func:`encode` turned into ``data``."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tuple__" in data:
        return tuple(decode(v) for v in data["__tuple__"])
    if "__float__" in data:
        return float(data["__float__"])
    if "__dict__" in data:
        return {decode(k): decode(v) for k, v in data["__dict__"]}
    if "__numpy__" in data:
        return np.dtype(data["__numpy__"]).type(decode(data["value"]))
    if "__ndarray__" in data:
        flat = np.empty(len(data["__ndarray__"]), dtype=np.dtype(data["dtype"]))
        flat[:] = [decode(v) for v in data["__ndarray__"]]
        return flat.reshape(data["shape"])
    if "__random_state__" in data:
        name, keys, pos, has_gauss, cached = data["__random_state__"]
        random_state = np.random.RandomState()
        random_state.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        return random_state
    return {k: decode(v) for k, v in data.items()}
