"""The error raised for data that is not what it should be, and how its message is extended."""

from __future__ import annotations


class DataIntegrityError(OSError):
    """A downloaded, extracted or cached file is not what it should be.

    Raised for truncated downloads, checksum mismatches, archives without the expected members,
    data of the wrong shape and corrupt cache files. Nothing that failed these checks is left in
    the data folder, except a cache file found corrupt, which the message names so that it can be
    deleted.

    It is a subclass of ``OSError``, so ``except OSError`` catches it with the other file and
    network errors.

    Examples
    --------
    A damaged cache file is reported with its path:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from skffjord.datasets import DataIntegrityError, fetch_power
    >>> with tempfile.TemporaryDirectory() as home:
    ...     (Path(home) / "processed").mkdir()
    ...     _ = (Path(home) / "processed" / "power_maf.npz").write_bytes(b"not a npz file")
    ...     try:
    ...         fetch_power(home, download_if_missing=False)
    ...     except DataIntegrityError as exc:
    ...         print(str(exc).split(" is corrupt")[0].replace(home, "<home>"))
    The cached file <home>/processed/power_maf.npz
    """


def add_hint(exc: BaseException, hint: str) -> None:
    """Append ``hint`` to the message of ``exc``, in place.

    Parameters
    ----------
    exc : BaseException
        The exception whose first argument (its message) is extended.
    hint : str
        What the user can do about it, appended after a space.
    """
    exc.args = (f"{exc.args[0]} {hint}", *exc.args[1:]) if exc.args else (hint,)
