"""Every public object has a numpydoc docstring with a runnable example.

The examples themselves run as doctests (``--doctest-modules`` in ``pyproject.toml``); this
test makes sure none of the public objects goes without one.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import skffjord
import skffjord.datasets

PUBLIC = [
    getattr(module, name)
    for module in (skffjord, skffjord.datasets)
    for name in module.__all__
    if inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name))
]


def test_the_public_api_is_covered():
    names = {obj.__name__ for obj in PUBLIC}
    assert {"FFJORDDensity", "FFJORDOutlierDetector", "SolverError", "load_model"} <= names
    reference = (Path(__file__).parents[1] / "docs" / "api.rst").read_text()
    listed = {line.strip() for line in reference.splitlines()}
    assert names <= listed, f"missing from docs/api.rst: {sorted(names - listed)}"


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda obj: obj.__name__)
def test_public_object_has_a_doctested_example(obj):
    doc = inspect.getdoc(obj) or ""
    assert doc.splitlines()[0].strip(), "the docstring needs a one-line summary"
    assert "\nExamples\n--------\n" in doc, f"{obj.__name__} has no Examples section"
    examples = doc.split("\nExamples\n--------\n", 1)[1]
    runnable = [
        line
        for line in examples.splitlines()
        if line.lstrip().startswith(">>> ") and "doctest: +SKIP" not in line
    ]
    assert runnable, f"{obj.__name__}'s examples are all skipped"
