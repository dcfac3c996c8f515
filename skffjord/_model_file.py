"""Model files: a fitted estimator in one safetensors file, loaded without running code.

A model file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its
tensors are the fitted flow's ``state_dict`` (under ``flow.``) and the fitted numeric arrays
(under ``attr.``), written from CPU copies with their dtypes unchanged. The header's
``__metadata__`` (string values) holds:

``format``
    :data:`FORMAT_MARKER`, which tells a model file from other safetensors files.
``format_version``
    The layout's version, :data:`FORMAT_VERSION`; a reader refuses newer ones.
``skffjord_version``
    The version of the package that wrote the file.
``estimator``
    The estimator's class name.
``model``
    JSON of the constructor parameters, the other fitted attributes and the layout of the
    flow's modules (which map and base it has), from which :func:`read_model_file` rebuilds
    the module tree before loading the ``state_dict`` into it strictly.
``sha256``
    SHA-256 over the other metadata entries and every tensor's name, dtype, shape and bytes.

Values JSON cannot hold are tagged objects (a key starting with ``__``): tuples, dicts whose
keys are not all strings, non-finite floats, NumPy scalars and arrays, and the state of a
:class:`numpy.random.RandomState`. Reading parses JSON and copies tensor bytes; it never
unpickles or evaluates anything from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from sklearn.utils.validation import check_is_fitted

from ._fitted import FITTED
from ._flow_layout import flow_layout, named_tensor, rebuilt_flow
from ._json_codec import decode, encode
from ._model_file_error import ModelFileError
from ._utils import resolve_device

if TYPE_CHECKING:
    from ._estimator import FFJORDDensity

__all__ = [
    "FORMAT_MARKER",
    "FORMAT_VERSION",
    "ModelFileError",
    "ModelFileMixin",
    "load_model",
    "read_model_file",
    "write_model_file",
]

#: Value of the ``format`` metadata entry of every model file.
FORMAT_MARKER = "skffjord-model"
#: Version of the file layout written here; files of this version or older are read.
FORMAT_VERSION = 1
#: Fitted attributes that are not written: a loaded model refits like a fresh one.
NOT_SAVED = ("_optimizer_state",)

_FLOW_PREFIX = "flow."
_ARRAY_PREFIX = "attr."

PathLike = str | os.PathLike


# ---------------------------------------------------------------------- checksum
def _checksum(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the metadata entries (but ``sha256``) and every tensor's name, dtype,
    shape and bytes, each field prefixed by its length."""
    digest = hashlib.sha256()

    def add(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for key in sorted(k for k in metadata if k != "sha256"):
        add(key.encode())
        add(metadata[key].encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        add(name.encode())
        add(str(tensor.dtype).encode())
        add(json.dumps(list(tensor.shape)).encode())
        add(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------- writing and reading
def _package_version() -> str:
    from . import __version__

    return __version__


def _saved_attributes(estimator: Any) -> list[str]:
    """The fitted attributes written: those of :data:`FITTED` the estimator has, and every
    other public one (a name ending in ``_``, such as a detector's ``offset_``)."""
    state = estimator.__dict__
    names = [k for k in FITTED if k in state]
    names += [k for k in state if k.endswith("_") and not k.startswith("_") and k not in names]
    return [k for k in names if k not in NOT_SAVED]


def write_model_file(estimator: Any, path: PathLike) -> None:
    """Write the fitted ``estimator`` to ``path`` (see the module's description)."""
    check_is_fitted(estimator)
    name = type(estimator).__name__
    params = {
        key: encode(value, f"Parameter {key!r} of the {name}")
        for key, value in estimator.get_params(deep=False).items()
    }
    tensors: dict[str, torch.Tensor] = {}
    flow = estimator.flow_
    for key, value in flow.state_dict().items():
        tensors[_FLOW_PREFIX + key] = value.detach().cpu().contiguous().clone()
    attributes, arrays = {}, []
    for key in _saved_attributes(estimator):
        value = estimator.__dict__[key]
        if key == "flow_":
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            tensors[_ARRAY_PREFIX + key] = torch.from_numpy(np.array(value, order="C", copy=True))
            arrays.append(key)
        else:
            attributes[key] = encode(value, f"Fitted attribute {key!r} of the {name}")
    model = {
        "params": params,
        "attributes": attributes,
        "arrays": arrays,
        "flow": flow_layout(flow),
    }
    metadata = {
        "format": FORMAT_MARKER,
        "format_version": str(FORMAT_VERSION),
        "skffjord_version": _package_version(),
        "estimator": name,
        "model": json.dumps(model, allow_nan=False),
    }
    metadata["sha256"] = _checksum(metadata, tensors)
    data = save_tensors(tensors, metadata=metadata)
    with open(path, "wb") as file:
        file.write(data)


def _read(path: PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of the safetensors file at ``path``, checked as a model
    file of a format this version reads, unaltered since it was written."""
    with open(path, "rb") as file:
        data = file.read()
    where = os.fspath(path)
    try:
        tensors = load_tensors(data)
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
    except (SafetensorError, ValueError, TypeError) as err:
        raise ModelFileError(
            f"{where!r} is not a model file: it cannot be read as a safetensors file, or it "
            f"is truncated or damaged ({err})."
        ) from None
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT_MARKER:
        raise ModelFileError(
            f"{where!r} is a safetensors file but not a skffjord model file (its metadata has "
            f"no format {FORMAT_MARKER!r}); write model files with the estimator's save."
        )
    written_by = metadata.get("skffjord_version", "an unknown version")
    version = metadata.get("format_version", "")
    if not version.isdigit():
        raise ModelFileError(f"{where!r} has no valid model-file format version ({version!r}).")
    if int(version) > FORMAT_VERSION:
        raise ModelFileError(
            f"{where!r} was written by skffjord {written_by} with model-file format {version}; "
            f"this version (skffjord {_package_version()}) reads format <= {FORMAT_VERSION}. "
            "Upgrade skffjord to load it."
        )
    if metadata.get("sha256") != _checksum(metadata, tensors):
        raise ModelFileError(
            f"{where!r} fails its checksum: the file was altered or damaged after it was written."
        )
    return metadata, tensors


def read_model_file(path: PathLike, expected: type | None = None) -> Any:
    """The fitted estimator in the model file at ``path``; ``expected``: the class it must
    be (``None``: either estimator of the package)."""
    from ._estimator import FFJORDDensity
    from ._outlier import FFJORDOutlierDetector

    metadata, tensors = _read(path)
    where = os.fspath(path)
    name = metadata.get("estimator")
    classes = {c.__name__: c for c in (FFJORDDensity, FFJORDOutlierDetector)}
    if expected is not None:
        classes[expected.__name__] = expected
    if expected is not None and name != expected.__name__:
        raise ModelFileError(
            f"{where!r} holds a {name}, not a {expected.__name__}; load it with {name}.load "
            "or skffjord.load_model."
        )
    if name not in classes:
        raise ModelFileError(f"{where!r} holds a {name}, which skffjord cannot load.")
    cls = classes[name]
    try:
        model = json.loads(metadata["model"])
        params = decode(model["params"])
        attributes = decode(model["attributes"])
        arrays, layout = model["arrays"], model["flow"]
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{where!r} has incomplete model metadata ({err!r}).") from None
    unknown = sorted(set(params) - set(cls._get_param_names()))
    if unknown:
        raise ModelFileError(
            f"{where!r} sets parameter(s) {unknown} that {name} of skffjord "
            f"{_package_version()} does not have; it was written by skffjord "
            f"{metadata.get('skffjord_version')}."
        )
    flow_tensors = {
        k[len(_FLOW_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_FLOW_PREFIX)
    }
    try:
        flow = rebuilt_flow(layout, flow_tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, ModelFileError):
            raise
        raise ModelFileError(f"{where!r}: the flow cannot be rebuilt ({err}).") from None
    estimator = cls(**params)
    state = dict(attributes)
    for key in arrays:
        state[key] = named_tensor(tensors, _ARRAY_PREFIX + key).numpy().copy()
    device = resolve_device(str(state.get("device_", "cpu")), fallback=True)
    state.update(flow_=flow.to(device), device_=str(device), _optimizer_state=None)
    estimator.__dict__.update(state)
    return estimator


class ModelFileMixin:
    """Saving to and loading from model files: one safetensors file holding the tensors
    and, in its header, JSON of everything else (see :meth:`save`)."""

    def save(self, path: PathLike) -> None:
        """Write the fitted estimator to a model file, which loads without running code.

        The file is a safetensors file: the flow's weights and buffers and the fitted
        arrays as tensors (CPU copies, dtypes unchanged), and in its header's metadata a
        format marker and version, the package version, the class name, the constructor
        parameters, the other fitted attributes as JSON, and a SHA-256 checksum of it all.
        A ``random_state`` that is a ``RandomState`` is stored as its state, so a loaded
        model holds a copy in that state. The optimizer state kept for ``warm_start`` is
        not stored: a warm refit of a loaded model starts a new optimizer. Pickle and
        joblib work too, but loading a pickle can run code.

        Parameters
        ----------
        path : str or os.PathLike
            File to write (replaced if it exists); the suffix ``.safetensors`` is usual.

        Returns
        -------
        None

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator is not fitted.
        ModelFileError
            If a parameter or fitted attribute holds a value a model file cannot store
            (such as a ``numpy.random.Generator`` set after the fit).

        See Also
        --------
        load : Read a model file of this class.
        skffjord.load_model : Read a model file of either estimator.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from skffjord import FFJORDDensity
        >>> X = np.random.default_rng(0).normal(size=(100, 2))
        >>> model = FFJORDDensity(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "model.safetensors")
        ...     model.save(path)
        ...     loaded = FFJORDDensity.load(path)
        >>> bool(np.array_equal(loaded.score_samples(X[:5]), model.score_samples(X[:5])))
        True
        """
        write_model_file(self, path)

    @classmethod
    def load(cls, path: PathLike) -> FFJORDDensity:
        """Read a fitted estimator of this class from a model file written by :meth:`save`.

        Only JSON is parsed and tensor bytes copied: nothing in the file is unpickled or
        run. The file's checksum is verified, the flow's modules are rebuilt from the
        stored layout and its weights loaded strictly (every tensor present, of the same
        shape and dtype), so the loaded model scores, samples and detects exactly as the
        saved one did on the same machine. A file written in this version's
        model-file format or an older one loads; a parameter the file lacks takes its
        default. The model goes to the device it was saved from, or to the CPU with a
        :class:`~skffjord.DeviceWarning` when that device is missing. It refits like a
        fresh estimator (with ``warm_start=True``, from the loaded weights).

        Parameters
        ----------
        path : str or os.PathLike
            A model file.

        Returns
        -------
        estimator : FFJORDDensity or FFJORDOutlierDetector
            The fitted estimator, of the class ``load`` is called on.

        Raises
        ------
        FileNotFoundError
            If there is no file at ``path``.
        ModelFileError
            If the file is not a model file (not safetensors, truncated, or without the
            format marker), fails its checksum, was written in a newer format, holds
            another estimator class, or sets a parameter this version does not have.

        See Also
        --------
        save : Write a model file.
        skffjord.load_model : Read a model file of either estimator.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from skffjord import FFJORDOutlierDetector
        >>> X = np.random.default_rng(0).normal(size=(100, 2))
        >>> detector = FFJORDOutlierDetector(hidden_layer_sizes=(8,), max_iter=2, random_state=0)
        >>> detector = detector.fit(X)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "detector.safetensors")
        ...     detector.save(path)
        ...     loaded = FFJORDOutlierDetector.load(path)
        >>> loaded.offset_ == detector.offset_
        True
        >>> loaded.predict([[0.0, 0.0], [8.0, 8.0]])
        array([ 1, -1])
        """
        return read_model_file(path, expected=cls)


def load_model(path: PathLike) -> FFJORDDensity:
    """Read a model file of either estimator: the :class:`~skffjord.FFJORDDensity` or
    :class:`~skffjord.FFJORDOutlierDetector` that its ``save`` wrote.

    Like ``FFJORDDensity.load``, nothing in the file is unpickled or run, and the file's
    checksum and format version are checked.

    Parameters
    ----------
    path : str or os.PathLike
        A model file.

    Returns
    -------
    estimator : FFJORDDensity or FFJORDOutlierDetector
        The fitted estimator the file holds.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ModelFileError
        If the file is not a model file, fails its checksum, or was written in a newer
        format.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skffjord import FFJORDOutlierDetector, load_model
    >>> X = np.random.default_rng(0).normal(size=(100, 2))
    >>> detector = FFJORDOutlierDetector(hidden_layer_sizes=(8,), max_iter=2, random_state=0)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "model.safetensors")
    ...     detector.fit(X).save(path)
    ...     model = load_model(path)
    >>> type(model).__name__
    'FFJORDOutlierDetector'
    """
    return read_model_file(path)
