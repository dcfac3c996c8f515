"""The estimator's settings: the translation of the public parameters into the solver and
optimisation configurations the layers below take.

The public parameters of :class:`~skffjord.FFJORDDensity` are validated by scikit-learn
against :data:`PARAMETER_CONSTRAINTS` at ``fit``; the two solver dictionaries (``solver``,
``eval_solver``) are merged over the defaults of :mod:`~skffjord._defaults` and checked key
by key here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ._defaults import (
    AVERAGING_DECAY,
    DEFAULT_EPOCHS,
    EVAL_SOLVER_DEFAULTS,
    HUTCHINSON_NOISE,
    LEARNING_RATE_SCHEDULE,
    MIN_EPOCH_STEPS,
    REFINE_SOLVER_GAP,
    TRAIN_SOLVER_DEFAULTS,
    UNBOUNDED_EPOCHS,
)
from ._dynamics import ACTIVATIONS, auto_hidden_layer_sizes
from ._flow import EvalConfig, TrainConfig
from ._ode import ADAPTIVE_METHODS, FIXED_GRID_METHODS
from ._rowwise_ode import ROWWISE_TABLEAUS
from ._training import FitConfig
from ._utils import resolve_train_dtype

__all__ = [
    "PARAMETER_CONSTRAINTS",
    "Settings",
    "eval_config",
    "fit_config",
    "hidden_sizes",
    "kept_structure",
    "resolve",
    "train_config",
]

#: The estimator's parameters and the values each may take (scikit-learn validates them
#: at ``fit``, and when scoring after ``set_params``).
PARAMETER_CONSTRAINTS: dict = {
    "hidden_layer_sizes": [
        StrOptions({"auto"}),
        "array-like",
        Interval(Integral, 1, None, closed="left"),
    ],
    "activation": [StrOptions(set(ACTIVATIONS))],
    "n_blocks": [Interval(Integral, 1, None, closed="left")],
    "training": [StrOptions({"likelihood", "flow_matching", "hybrid"})],
    "trace_estimator": [StrOptions({"auto", "hutchinson", "exact"})],
    "solver": [dict, None],
    "eval_solver": [dict, None],
    "standardize": ["boolean", StrOptions({"auto", "affine", "sinh_arcsinh", "quantile"})],
    "discrete_features": [StrOptions({"auto"}), "array-like", None],
    "bounds": [dict, "array-like", None],
    "n_components": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
    "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
    "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
    "alpha": [Interval(Real, 0, None, closed="left")],
    "max_iter": [Interval(Integral, 1, None, closed="left"), None],
    "max_time": [Interval(Real, 0, None, closed="neither"), None],
    "tol": [Interval(Real, 0, None, closed="left")],
    "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
    "device": [str],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "warm_start": ["boolean"],
}

_TRAIN_DTYPES = ("auto", "float32", "bfloat16")
_EVAL_DTYPES = ("float32", "float64")


def hidden_sizes(option: Any, n_features: int) -> tuple[int, ...]:
    """The hidden widths that ``hidden_layer_sizes`` stands for at ``n_features``."""
    if isinstance(option, str) and option == "auto":
        return auto_hidden_layer_sizes(n_features)
    sizes = (option,) if isinstance(option, Integral) else option
    try:
        sizes = tuple(sizes)
    except TypeError as err:
        raise ValueError(
            f"hidden_layer_sizes must be a tuple of positive ints, got {option!r}."
        ) from err
    if not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"hidden_layer_sizes must be a tuple of positive ints, got {option!r}.")
    return tuple(int(s) for s in sizes)


def _merged(name: str, option: Mapping | None, defaults: dict[str, Any]) -> dict[str, Any]:
    if option is None:
        return copy.deepcopy(defaults)
    if not isinstance(option, Mapping):
        raise ValueError(f"{name} must be a dict or None, got {option!r}.")
    unknown = sorted(set(option) - set(defaults))
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; the keys are {sorted(defaults)}.")
    return {**copy.deepcopy(defaults), **copy.deepcopy(dict(option))}


def _positive(name: str, key: str, value: Any, kind: type = Real) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool) and value > 0
    if not ok or (kind is Real and not math.isfinite(value)):
        what = "a positive integer" if kind is Integral else "a positive finite number"
        raise ValueError(f"{name}[{key!r}] must be {what}, got {value!r}.")


def _check_options(name: str, options: Any) -> None:
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise ValueError(f"{name}['options'] must be a dict or None, got {options!r}.")
    step = options.get("step_size", 1.0)
    if isinstance(step, bool) or not isinstance(step, Real) or not 0 < step < math.inf:
        raise ValueError(
            f"{name}['options']['step_size'] must be a positive finite number, got {step!r}."
        )


def train_config(
    option: Mapping | None, hidden: tuple[int, ...], trace_estimator: str
) -> tuple[TrainConfig, str]:
    """The training solve of ``solver`` (merged over :data:`TRAIN_SOLVER_DEFAULTS`) and its
    ``dtype`` option, for a field of hidden widths ``hidden``."""
    s = _merged("solver", option, TRAIN_SOLVER_DEFAULTS)
    methods = (*ADAPTIVE_METHODS, *FIXED_GRID_METHODS)
    if s["method"] not in methods:
        raise ValueError(f"solver['method'] must be one of {methods}, got {s['method']!r}.")
    _check_options("solver", s["options"])
    for key in ("atol", "rtol"):
        _positive("solver", key, s[key])
    _positive("solver", "max_num_steps", s["max_num_steps"], Integral)
    if not isinstance(s["adjoint"], bool):
        raise ValueError(f"solver['adjoint'] must be True or False, got {s['adjoint']!r}.")
    if s["dtype"] not in _TRAIN_DTYPES:
        raise ValueError(f"solver['dtype'] must be one of {_TRAIN_DTYPES}, got {s['dtype']!r}.")
    for key in ("kinetic_energy_reg", "jacobian_reg"):
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < math.inf:
            raise ValueError(f"solver[{key!r}] must be a non-negative number, got {value!r}.")
    if trace_estimator == "auto":
        trace_estimator = "exact" if len(hidden) <= 2 else "hutchinson"
    config = TrainConfig(
        method=s["method"],
        atol=float(s["atol"]),
        rtol=float(s["rtol"]),
        options=s["options"],
        adjoint=s["adjoint"],
        max_num_steps=int(s["max_num_steps"]),
        trace_estimator=trace_estimator,
        hutchinson_noise=HUTCHINSON_NOISE,
        kinetic_energy_reg=float(s["kinetic_energy_reg"]),
        jacobian_reg=float(s["jacobian_reg"]),
    )
    return config, s["dtype"]


def eval_config(option: Mapping | None) -> EvalConfig:
    """The scoring solve of ``eval_solver`` (merged over :data:`EVAL_SOLVER_DEFAULTS`)."""
    s = _merged("eval_solver", option, EVAL_SOLVER_DEFAULTS)
    methods = (*ROWWISE_TABLEAUS, *FIXED_GRID_METHODS)
    if s["method"] not in methods:
        raise ValueError(f"eval_solver['method'] must be one of {methods}, got {s['method']!r}.")
    _check_options("eval_solver", s["options"])
    if s["method"] in ROWWISE_TABLEAUS and s["options"]:
        raise ValueError(
            f"eval_solver['options'] do not apply to the per-row {s['method']!r} solver "
            f"(its step cap is eval_solver['max_num_steps']), got {s['options']!r}."
        )
    for key in ("atol", "rtol"):
        _positive("eval_solver", key, s[key])
    _positive("eval_solver", "max_num_steps", s["max_num_steps"], Integral)
    if s["dtype"] not in _EVAL_DTYPES:
        raise ValueError(f"eval_solver['dtype'] must be one of {_EVAL_DTYPES}, got {s['dtype']!r}.")
    return EvalConfig(
        method=s["method"],
        atol=float(s["atol"]),
        rtol=float(s["rtol"]),
        options=s["options"] or None,
        max_num_steps=int(s["max_num_steps"]),
        dtype=getattr(torch, s["dtype"]),
    )


def standardization_name(standardize: bool | str) -> str:
    """'auto', 'affine', 'sinh_arcsinh', 'quantile' or 'none' for a ``standardize`` value."""
    if isinstance(standardize, str):
        return standardize
    return "affine" if standardize else "none"


@dataclass(frozen=True)
class Settings:
    """The public parameters resolved for one fit on ``n_features`` columns."""

    hidden: tuple[int, ...]
    solver: TrainConfig
    eval_solver: EvalConfig
    train_dtype: str
    structure: dict
    params: dict


def resolve(params: dict, n_features: int, device: torch.device) -> Settings:
    """Resolve the estimator's ``get_params()`` for a fit on ``n_features`` columns on
    ``device``."""
    hidden = hidden_sizes(params["hidden_layer_sizes"], n_features)
    solver, train_dtype = train_config(params["solver"], hidden, params["trace_estimator"])
    train_dtype = resolve_train_dtype(train_dtype, device, hidden)
    structure = {
        "hidden_layer_sizes": hidden,
        "activation": params["activation"],
        "n_blocks": int(params["n_blocks"]),
        "standardize": standardization_name(params["standardize"]),
    }
    return Settings(
        hidden=hidden,
        solver=solver,
        eval_solver=eval_config(params["eval_solver"]),
        train_dtype=train_dtype,
        structure=structure,
        params=params,
    )


def kept_structure(fitted: dict, fitted_standardize: str, structure: dict) -> dict:
    """The structure of a warm refit: the fitted model's (``fitted``), which ``structure``
    (from the current parameters) may not change; ``standardize='auto'`` keeps the map the
    fit chose (``fitted_standardize``)."""
    if structure["standardize"] in ("auto", fitted_standardize):
        structure = {**structure, "standardize": fitted["standardize"]}
    changed = sorted(k for k, v in structure.items() if fitted.get(k) != v)
    if changed:
        raise ValueError(
            f"warm_start=True cannot change the model's structure ({', '.join(changed)} "
            "differ from the fitted model); refit with warm_start=False."
        )
    return structure


def fit_config(
    params: dict,
    n_train: int,
    solver: TrainConfig,
    validation_solver: EvalConfig,
    autocast: torch.dtype | None,
) -> FitConfig:
    """The optimisation settings of a fit on ``n_train`` training rows."""
    batch_size = params["batch_size"]
    batch_size = min(512, n_train) if batch_size == "auto" else min(int(batch_size), n_train)
    max_iter, max_time = params["max_iter"], params["max_time"]
    if max_iter is None:
        epochs = UNBOUNDED_EPOCHS if max_time is not None else DEFAULT_EPOCHS
    else:
        epochs = int(max_iter)
    return FitConfig(
        batch_size=int(batch_size),
        learning_rate_init=float(params["learning_rate_init"]),
        learning_rate=LEARNING_RATE_SCHEDULE,
        alpha=float(params["alpha"]),
        averaging_decay=AVERAGING_DECAY,
        max_iter=epochs,
        min_steps_per_epoch=MIN_EPOCH_STEPS if max_iter is None else 1,
        max_time=None if max_time is None else float(max_time),
        tol=float(params["tol"]),
        n_iter_no_change=int(params["n_iter_no_change"]),
        shuffle=True,
        solver=solver,
        validation_chunk=max(int(batch_size), 1024),
        verbose=int(params["verbose"]),
        training=params["training"],
        validation_solver=validation_solver,
        refine_solver_gap=REFINE_SOLVER_GAP,
        autocast_dtype=autocast,
    )
