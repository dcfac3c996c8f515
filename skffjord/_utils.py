"""Small helpers: devices, seeds and warnings."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = [
    "DeviceWarning",
    "float64_tensor",
    "has_native_bfloat16",
    "make_generator",
    "numeric_columns",
    "resolve_device",
    "resolve_train_dtype",
    "spawn_seeds",
]


class DeviceWarning(UserWarning):
    """The requested device is not available; the model runs on the CPU instead.

    Issued when a model fitted on a GPU is unpickled on a machine without that GPU. (``fit``
    itself raises ``ValueError`` for a missing device rather than falling back.) Turn it into
    an error with ``warnings.simplefilter("error", DeviceWarning)`` to refuse the fallback.

    Examples
    --------
    Pretend a fitted model lives on a GPU this machine does not have, then unpickle it:

    >>> import pickle, warnings
    >>> import numpy as np
    >>> from skffjord import DeviceWarning, FFJORDDensity
    >>> X = np.random.default_rng(0).normal(size=(100, 2))
    >>> model = FFJORDDensity(hidden_layer_sizes=(8,), max_iter=2, random_state=0)
    >>> model = model.fit(X)
    >>> model.device_ = "cuda:99"
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always", DeviceWarning)
    ...     restored = pickle.loads(pickle.dumps(model))
    >>> caught[0].category.__name__, restored.device_
    ('DeviceWarning', 'cpu')
    """


def resolve_device(device: str, *, fallback: bool = False) -> torch.device:
    """Turn ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` into a ``torch.device``.

    Parameters
    ----------
    device : str
    fallback : bool, default=False
        When the device is missing: warn with :class:`DeviceWarning` and return the CPU
        (used when unpickling) instead of raising ``ValueError`` (used in ``fit``).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"Unknown device {device!r}: {err}") from err
    if dev.type == "cuda":
        index = dev.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            msg = f"device={device!r} was requested but CUDA device {index} is not available"
            if fallback:
                warnings.warn(msg + "; using the CPU instead.", DeviceWarning, stacklevel=3)
                return torch.device("cpu")
            raise ValueError(msg + "; use device='cpu' or device='auto'.")
    elif dev.type != "cpu":
        raise ValueError(f"Unsupported device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'.")
    return dev


def has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX).

    Without such instructions PyTorch emulates bfloat16 products, which are expected to be
    no faster than float32 (not measured).
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        check = getattr(cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - a private probe; absent means "no"
            continue
    return False


#: Narrowest widest-hidden-layer at which ``solver['dtype']='auto'`` trains in bfloat16. Below
#: it a likelihood step is bound by per-operation overhead, not by its matrix products, and
#: bfloat16 gains nothing; from it on, the products dominate and bfloat16 steps are faster
#: (``python benchmarks/step_cost.py`` times both at the default width of each d).
BFLOAT16_MIN_WIDTH = 192


def resolve_train_dtype(
    train_dtype: str, device: torch.device, hidden_layer_sizes: tuple[int, ...]
) -> str:
    """Turn ``train_dtype`` ('auto', 'float32' or 'bfloat16') into 'float32' or 'bfloat16'.

    'auto' is 'bfloat16' on a CPU with native bfloat16 products (:func:`has_native_bfloat16`)
    for a network whose widest hidden layer has at least :data:`BFLOAT16_MIN_WIDTH` units,
    and 'float32' otherwise, GPUs included (not measured there).
    """
    if train_dtype != "auto":
        return train_dtype
    wide = max(hidden_layer_sizes, default=0) >= BFLOAT16_MIN_WIDTH
    if device.type == "cpu" and wide and has_native_bfloat16():
        return "bfloat16"
    return "float32"


def float64_tensor(X: np.ndarray, device: torch.device) -> torch.Tensor:
    """``X`` as a float64 tensor on ``device``, sharing a writable array's memory.

    A read-only array (a read-only memory map, or the values of a pandas frame under
    copy-on-write, the default since pandas 3) is copied: PyTorch warns when a tensor would
    share read-only memory, and the warning would reach users who did nothing wrong.
    """
    if not X.flags.writeable:
        return torch.tensor(X, dtype=torch.float64, device=device)
    return torch.as_tensor(X, dtype=torch.float64, device=device)


def spawn_seeds(random_state: np.random.RandomState, n: int) -> list[int]:
    """Draw ``n`` independent integer seeds from a numpy ``RandomState``."""
    return [int(s) for s in random_state.randint(0, 2**31 - 1, size=n)]


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A local ``torch.Generator`` on ``device`` seeded with ``seed`` (no global seeding)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def numeric_columns(X: Any, estimator: str = "FFJORDDensity") -> Any:
    """``X`` with each DataFrame column of numbers held as objects or text converted to
    float64, as scikit-learn converts them; other inputs are returned as they are.

    A column of Python numbers (``df.astype(object)``) or of numeric strings (``"1.5"``)
    takes the values of its float conversion, with missing entries (``None``, ``pd.NA``) as
    NaN, which validation then rejects with scikit-learn's message. Numeric columns, the
    pandas nullable ones included, and boolean columns pass unchanged.

    Raises
    ------
    ValueError
        Naming the columns of categories, dates or text that does not read as numbers.
    """
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None or not hasattr(dtypes, "items"):
        return X
    import pandas as pd
    from pandas.api.types import (
        is_bool_dtype,
        is_numeric_dtype,
        is_object_dtype,
        is_string_dtype,
    )

    bad, example, converted = [], None, {}
    for j, (name, dtype) in enumerate(dtypes.items()):
        if isinstance(dtype, pd.CategoricalDtype):
            bad.append(str(name))
        elif is_numeric_dtype(dtype) or is_bool_dtype(dtype):
            continue
        elif is_object_dtype(dtype) or is_string_dtype(dtype):
            column = X.iloc[:, j]
            try:
                converted[j] = column.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                bad.append(str(name))
                example = example or (name, _first_non_number(column))
        else:
            bad.append(str(name))
    if bad:
        detail = "" if example is None else f" (column {example[0]!r} holds {example[1]!r})"
        raise ValueError(
            f"{estimator} needs numeric features, but column(s) {bad} are not numeric"
            f"{detail}. Encode categorical columns first (e.g. OneHotEncoder in a "
            "ColumnTransformer)."
        )
    if not converted:
        return X
    X = X.copy()
    for j, values in converted.items():
        X.isetitem(j, values)
    return X


def _first_non_number(column: Any) -> Any:
    """The first value of ``column`` that does not convert to a float."""
    for value in column:
        try:
            np.float64(value)
        except (TypeError, ValueError):
            return value
    return None


def to_cpu(obj: Any) -> Any:
    """Move every tensor of a nested dict/list structure to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
