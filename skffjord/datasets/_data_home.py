"""The data folder: where it is, clearing it, and whether it can be written to."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

DATA_HOME_ENV = "SKFFJORD_DATA"
"""Environment variable that sets the default data folder."""

FILE_MODE = 0o644
"""Permissions of the files written (temporary files are created private)."""


def get_data_home(data_home: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder where skffjord keeps its datasets.

    By default it is the folder named by the ``SKFFJORD_DATA`` environment variable or, when
    that is unset, ``~/skffjord_data``. ``~`` is expanded. The folder is not created here:
    the fetchers create it when they have something to write.

    Parameters
    ----------
    data_home : str or path-like, default=None
        The folder to use. ``None`` takes the default described above.

    Returns
    -------
    data_home : pathlib.Path
        The folder, as an absolute path.

    Examples
    --------
    >>> from skffjord.datasets import get_data_home
    >>> get_data_home("my_data").name
    'my_data'
    """
    if data_home is None:
        data_home = os.environ.get(DATA_HOME_ENV) or os.path.join("~", "skffjord_data")
    if not isinstance(data_home, str | os.PathLike):
        raise TypeError(
            f"data_home must be a str, a path-like object or None, got {type(data_home).__name__}."
        )
    return Path(os.path.expanduser(os.fspath(data_home))).absolute()


def clear_data_home(data_home: str | os.PathLike[str] | None = None) -> None:
    """Delete everything in the data folder: downloaded archives and cached splits.

    Parameters
    ----------
    data_home : str or path-like, default=None
        The folder to clear; see :func:`get_data_home`.

    Examples
    --------
    The folder itself is removed; the fetchers create it again when they need it:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from skffjord.datasets import clear_data_home
    >>> home = Path(tempfile.mkdtemp())
    >>> _ = (home / "processed").mkdir(), (home / "processed" / "power_maf.npz").write_bytes(b"")
    >>> clear_data_home(home)
    >>> home.exists()
    False
    """
    shutil.rmtree(get_data_home(data_home), ignore_errors=True)


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written in it.

    Parameters
    ----------
    folder : pathlib.Path
        The folder to create and probe.

    Raises
    ------
    PermissionError
        With a message naming the folder, when it cannot be created or written to.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(
            f"data_home is not writable: cannot write in {folder} ({exc.strerror or exc}). "
            f"Pass a writable data_home or set the {DATA_HOME_ENV} environment variable."
        ) from exc


def is_writable(folder: Path) -> bool:
    """Whether :func:`ensure_writable` succeeds on ``folder`` (which it may create).

    Parameters
    ----------
    folder : pathlib.Path
        The folder to create and probe.

    Returns
    -------
    writable : bool
        ``False`` where ``folder`` cannot be created or written to.
    """
    try:
        ensure_writable(folder)
    except PermissionError:
        return False
    return True


def missing_error(name: str, home: Path) -> OSError:
    """The error for dataset ``name`` absent from ``home`` with ``download_if_missing=False``.

    Parameters
    ----------
    name : str
        The dataset's name, as in :data:`~skffjord.datasets.DATASETS`.
    home : pathlib.Path
        The data folder that was searched.

    Returns
    -------
    error : OSError
        The error to raise, with a message that says how to get the data.
    """
    return OSError(
        f"{name.upper()} is not in {home} and download_if_missing=False. Call again with "
        "download_if_missing=True, or point data_home (or SKFFJORD_DATA) at a folder that has it."
    )
