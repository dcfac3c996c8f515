"""Pickling of fitted estimators: the flow on the CPU, stamped with the package version.

A pickle carries the version of skffjord that wrote it, and one written by an incompatible
version (another minor version, or a build without the stamp) is refused on load with an
error that says so, instead of loading and failing later inside ``score_samples``.
"""

from __future__ import annotations

import copy

from ._utils import resolve_device

__all__ = ["VERSION_KEY", "compatible", "restored", "stamped"]

#: Key of the version stamp in a pickled estimator's state.
VERSION_KEY = "_skffjord_version"


def _current() -> str:
    from . import __version__

    return __version__


def compatible(written: str | None, current: str) -> bool:
    """Whether a pickle written by ``written`` loads under ``current``: the same major and
    minor version (the fitted attributes and the flow's layout change only between
    minor versions)."""
    if not written:
        return False
    return written.split(".")[:2] == current.split(".")[:2]


def stamped(state: dict) -> dict:
    """The state to pickle: the fitted flow moved to the CPU, and the version stamp."""
    state = dict(state)
    if "flow_" in state:
        state["flow_"] = copy.deepcopy(state["flow_"]).cpu()
    state[VERSION_KEY] = _current()
    return state


def restored(state: dict, name: str) -> dict:
    """The unpickled state of a ``name`` estimator, checked and with its flow on its device
    (the CPU when that device is missing here, with a :class:`DeviceWarning`)."""
    state = dict(state)
    written = state.pop(VERSION_KEY, None)
    current = _current()
    if not compatible(written, current):
        raise ValueError(
            f"This {name} was pickled by skffjord {written or 'an unversioned build'}, which "
            f"skffjord {current} cannot load; load it with that version or fit it again."
        )
    if "flow_" in state:
        device = resolve_device(state.get("device_", "cpu"), fallback=True)
        state["flow_"] = state["flow_"].to(device)
        state["device_"] = str(device)
    return state
