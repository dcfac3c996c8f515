"""Command-line options of the ``skffjord`` command: estimator parameters turned into options,
and option values parsed and checked.

The options of ``skffjord fit`` are generated from the estimators' parameters: their names,
help texts (from the numpydoc docstrings) and defaults, and a converter per parameter that
turns text into the values its constraints accept. The estimators' own validation then
checks the values.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import re
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from ._bounds import check_bounds
from ._cli_messages import CommandError, one_line
from ._estimator import FFJORDDensity
from ._settings import resolve
from ._utils import resolve_device

__all__ = [
    "add_parameter_options",
    "check_parameters",
    "column_list",
    "model_parameters",
    "parameter_docs",
    "parameter_error",
    "positive_int",
]


#: Estimator parameters that are not options: the progress bar is ``--progress``, and a
#: command-line fit always starts from scratch.
_NOT_OPTIONS = ("verbose", "warm_start")


_NONE_WORDS = ("none", "null")


_BOOLEAN_WORDS = {"true": True, "yes": True, "false": False, "no": False}


def _rst_to_text(text: str) -> str:
    """A numpydoc description as plain text: roles and literal markup removed."""
    text = re.sub(r":[a-z:]+:`~([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = re.sub(r":[a-z:]+:`([^`]+)`", r"\1", text)
    return text.replace("``", "")


def parameter_docs(cls: type) -> dict[str, str]:
    """The description of each parameter in the numpydoc docstring of ``cls``, as one line.

    Parameters
    ----------
    cls : type
        A class with a numpydoc ``Parameters`` section.

    Returns
    -------
    dict of str to str
        Parameter name to its description in plain text.
    """
    lines = (inspect.getdoc(cls) or "").splitlines()

    def is_header(i: int) -> bool:
        return (
            i + 1 < len(lines)
            and bool(lines[i].strip())
            and not lines[i].startswith(" ")
            and set(lines[i + 1].strip()) == {"-"}
        )

    starts = [i for i in range(len(lines)) if is_header(i) and lines[i].strip() == "Parameters"]
    if not starts:
        return {}
    docs: dict[str, list[str]] = {}
    name = None
    for i in range(starts[0] + 2, len(lines)):
        line = lines[i]
        if is_header(i):
            break
        if line and not line.startswith(" "):
            name = line.split(" : ")[0].strip()
            docs[name] = []
        elif name is not None:
            docs[name].append(line.strip())
    return {key: _rst_to_text(one_line(" ".join(words))) for key, words in docs.items()}


def _cli_value(value: Any) -> str:
    """How a parameter value is written on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _metavar(constraints: list) -> str:
    words: list[str] = []
    for constraint in constraints:
        if isinstance(constraint, StrOptions):
            words += sorted(constraint.options)
        elif constraint == "boolean":
            words += ["true", "false"]
        elif isinstance(constraint, Interval):
            words.append("INT" if constraint.type is Integral else "FLOAT")
        elif constraint == "random_state":
            words += ["INT", "none"]
        elif constraint is dict or constraint == "array-like":
            words.append("JSON" if dict in constraints else "LIST")
        elif constraint is None:
            words.append("none")
        else:
            words.append("TEXT")
    return "|".join(dict.fromkeys(words))


def _number_list(text: str) -> tuple | None:
    """``'64,64'`` as ``(64, 64)`` and ``'0,0.5'`` as ``(0.0, 0.5)``; None if not numbers."""
    parts = [part.strip() for part in text.split(",")]
    for kind in (int, float):
        try:
            return tuple(kind(part) for part in parts)
        except ValueError:
            continue
    return None


def _converter(name: str, constraints: list) -> Callable[[str], Any]:
    """The ``type`` of the option of parameter ``name``: text to a Python value.

    Text that is none of the accepted forms is passed on unchanged, so that the estimator's
    validation names the accepted values; only malformed JSON is refused here.
    """
    options = {o for c in constraints if isinstance(c, StrOptions) for o in c.options}
    integral = "random_state" in constraints or any(
        isinstance(c, Interval) and c.type is Integral for c in constraints
    )
    real = any(isinstance(c, Interval) and c.type is Real for c in constraints)
    mapping = dict in constraints
    listing = "array-like" in constraints

    def convert(text: str) -> Any:
        word = text.strip()
        if word in options:
            return word
        takes_none = None in constraints or "random_state" in constraints
        if takes_none and word.lower() in _NONE_WORDS:
            return None
        if "boolean" in constraints and word.lower() in _BOOLEAN_WORDS:
            return _BOOLEAN_WORDS[word.lower()]
        for wanted, kind in ((integral, int), (real, float)):
            if wanted:
                with contextlib.suppress(ValueError):
                    return kind(word)
        if (mapping or listing) and word[:1] in "[{":
            try:
                return json.loads(word)
            except json.JSONDecodeError as err:
                raise argparse.ArgumentTypeError(
                    f"not valid JSON ({err.msg} at character {err.pos + 1}): {word!r}"
                ) from None
        if listing:
            numbers = _number_list(word)
            if numbers is not None:
                return numbers
        return word

    convert.__name__ = name
    return convert


def add_parameter_options(group: argparse._ArgumentGroup, cls: type, names: Sequence[str]) -> None:
    """One option per parameter of ``cls`` in ``names``, from its constraints and docs."""
    docs = parameter_docs(cls)
    defaults = cls().get_params(deep=False)
    for name in names:
        constraints = cls._parameter_constraints[name]
        flag = "--" + name.replace("_", "-")
        default = defaults[name]
        if constraints == ["boolean"]:
            shown = flag if default else "--no-" + flag[2:]
        else:
            shown = _cli_value(default)
        text = f"{docs.get(name, '')} Default: {shown}.".strip().replace("%", "%%")
        if constraints == ["boolean"]:
            group.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            group.add_argument(
                flag,
                dest=name,
                type=_converter(name, constraints),
                metavar=_metavar(constraints),
                default=argparse.SUPPRESS,
                help=text,
            )


def model_parameters() -> list[str]:
    """The parameters of FFJORDDensity that are ``skffjord fit`` options, in order."""
    return [
        name
        for name in inspect.signature(FFJORDDensity.__init__).parameters
        if name in FFJORDDensity._parameter_constraints and name not in _NOT_OPTIONS
    ]


def positive_int(text: str) -> int:
    """``text`` as an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def column_list(text: str) -> list[str]:
    """``text`` as distinct, comma-separated column names."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise argparse.ArgumentTypeError(f"column(s) named twice: {', '.join(duplicated)}")
    return names


column_list.__name__ = "column list"


def check_parameters(estimator: FFJORDDensity, n_features: int, names: Sequence[str]) -> None:
    """Run the estimator's checks of its parameters, as a usage error when one fails."""
    try:
        estimator._validate_params()
        params = estimator.get_params(deep=False)
        resolve(params, n_features, resolve_device(params["device"]))
        check_bounds(params["bounds"], n_features, np.asarray(names, dtype=object))
    except ValueError as err:
        raise parameter_error(err) from err


def parameter_error(err: ValueError) -> CommandError:
    """The estimator's refusal of a parameter value, naming the option."""
    message = one_line(err)
    found = re.match(r"The '(\w+)' parameter", message)
    if found:
        message += f" (option --{found.group(1).replace('_', '-')})"
    return CommandError(message, status=2)
