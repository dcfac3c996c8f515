"""The error raised when a model file cannot be read or a model cannot be written to one."""

from __future__ import annotations

__all__ = ["ModelFileError"]


class ModelFileError(ValueError):
    """A model file cannot be read: it is not one, it is damaged or altered, it was written
    in a newer format, or it holds another estimator; or a model cannot be written to one.

    Examples
    --------
    >>> import os, tempfile
    >>> from skffjord import FFJORDDensity, ModelFileError
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "notes.txt")
    ...     with open(path, "w") as f:
    ...         _ = f.write("not a model")
    ...     try:
    ...         FFJORDDensity.load(path)
    ...     except ModelFileError as err:
    ...         print("refused")
    refused
    """
