"""Downloading and unpacking: temporary files, verification, atomic moves."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ._data_home import FILE_MODE
from ._exceptions import DataIntegrityError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file to download, with what is known about it.

    Parameters
    ----------
    filename : str
        Name of the local copy.
    url : str
        Where to download it from.
    sha256 : str or None
        SHA-256 of the whole file, when known.
    size : int or None
        Size in bytes, when known. The ``Content-Length`` the server announces is always
        checked as well.
    """

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None


def _remove(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _download_once(remote: RemoteFile, tmp: str, *, timeout: float, verbose: bool) -> str:
    """Stream ``remote`` into ``tmp``; return its SHA-256. Raises on a short read."""
    sha = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(remote.url, timeout=timeout) as response:  # noqa: S310
        announced = response.headers.get("Content-Length")
        total = int(announced) if announced is not None else remote.size
        with (
            open(tmp, "wb") as fh,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"Downloading {remote.filename}",
                disable=not verbose,
                file=sys.stderr,
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except http.client.IncompleteRead as exc:
                    received += len(exc.partial)
                    raise DataIntegrityError(
                        f"Truncated download of {remote.url}: the connection closed after "
                        f"{received} bytes of {announced}."
                    ) from exc
                if not chunk:
                    break
                fh.write(chunk)
                sha.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if announced is not None and received != int(announced):
        raise DataIntegrityError(
            f"Truncated download of {remote.url}: received {received} bytes, the server "
            f"announced {announced}."
        )
    if remote.size is not None and received != remote.size:
        raise DataIntegrityError(
            f"Download of {remote.url} has {received} bytes, expected {remote.size}."
        )
    return sha.hexdigest()


def download(
    remote: RemoteFile,
    folder: Path,
    *,
    n_retries: int = 3,
    delay: float = 1.0,
    timeout: float = 60.0,
    verbose: bool = True,
) -> Path:
    """Download ``remote`` into ``folder``, verified, and return the final path.

    The bytes go to a temporary file in ``folder``; only after the byte count and the
    checksum (when known) agree is it renamed into place, so an interrupted or failed download
    never leaves a file under the final name. Network errors and truncated transfers are retried
    ``n_retries`` times, ``delay`` seconds apart; a checksum mismatch is not.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.filename
    fd, tmp = tempfile.mkstemp(prefix=remote.filename + ".", suffix=".part", dir=folder)
    os.close(fd)
    try:
        for attempt in range(n_retries + 1):
            try:
                digest = _download_once(remote, tmp, timeout=timeout, verbose=verbose)
                break
            except urllib.error.HTTPError as exc:
                # a client error (404, 403, ...) will not go away by asking again
                if exc.code < 500 or attempt == n_retries:
                    raise OSError(
                        f"Could not download {remote.url}: HTTP {exc.code} {exc.reason}"
                    ) from exc
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                http.client.HTTPException,
                DataIntegrityError,
            ) as exc:
                # A checksum mismatch is raised below, outside this retry loop.
                if attempt == n_retries:
                    if isinstance(exc, DataIntegrityError):
                        raise
                    reason = getattr(exc, "reason", exc)
                    raise OSError(f"Could not download {remote.url}: {reason}") from exc
            time.sleep(delay)
        if remote.sha256 is not None and digest != remote.sha256:
            raise DataIntegrityError(
                f"Checksum mismatch for {remote.url}: SHA-256 {digest}, expected "
                f"{remote.sha256}. The file was not kept."
            )
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    finally:
        _remove(tmp)
    return target


def _member_key(name: str, prefix: str) -> str:
    name = name.removeprefix("./")
    return name.removeprefix(prefix) if prefix else name


def _safe_target(folder: Path, key: str, flatten: bool, archive: Path) -> Path:
    """Where member ``key`` is written; names that could escape ``folder`` are refused."""
    parts = key.split("/")
    if (
        key.startswith("/")
        or "\\" in key
        or ":" in key
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise DataIntegrityError(f"Unsafe member name {key!r} in {archive}.")
    return folder / ("__".join(parts) if flatten else Path(*parts))


def extract(
    archive: Path,
    folder: Path,
    select: Callable[[str], bool],
    *,
    strip_prefix: str = "",
    flatten: bool = True,
    stop_after: int | None = None,
) -> dict[str, Path]:
    """Extract the regular-file members of a tar archive for which ``select(name)`` is true.

    Names are given to ``select`` after removing ``strip_prefix`` (for instance ``"data/"``).
    The archive is read as a stream: members that are not selected are skipped, never written.
    With ``flatten`` the files land directly in ``folder`` (``/`` replaced by ``__``); without
    it they keep their relative path. Reading stops after ``stop_after`` members.

    Returns
    -------
    paths : dict
        Member name (prefix removed) to extracted path.

    Raises
    ------
    DataIntegrityError
        When the archive is unreadable or truncated.
    """
    found: dict[str, Path] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                key = _member_key(info.name, strip_prefix)
                if key in found or not info.isfile() or not select(key):
                    continue
                out = _safe_target(folder, key, flatten, archive)
                source = tar.extractfile(info)
                if source is None:  # pragma: no cover - isfile() members always have data
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                # Errors writing `out` (a full disk, permissions) are not the archive's fault:
                # they propagate as they are; only reading errors are reported as a bad archive.
                with source, open(out, "wb") as fh:
                    while chunk := source.read(_CHUNK):
                        fh.write(chunk)
                if out.stat().st_size != info.size:
                    raise DataIntegrityError(
                        f"Member {info.name!r} of {archive} is truncated: "
                        f"{out.stat().st_size} of {info.size} bytes."
                    )
                found[key] = out
                if stop_after is not None and len(found) == stop_after:
                    break
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataIntegrityError(
            f"The archive {archive} is unreadable or truncated ({type(exc).__name__}: {exc})."
        ) from exc
    return found


def extract_members(
    archive: Path, members: Iterable[str], folder: Path, *, strip_prefix: str = ""
) -> dict[str, Path]:
    """Extract exactly ``members`` of the tar archive into ``folder`` (see :func:`extract`).

    Raises
    ------
    DataIntegrityError
        When the archive is unreadable or truncated, or lacks one of the members.
    """
    wanted = set(members)
    found = extract(
        archive,
        folder,
        wanted.__contains__,
        strip_prefix=strip_prefix,
        stop_after=len(wanted),
    )
    missing = sorted(wanted - set(found))
    if missing:
        raise DataIntegrityError(
            f"The archive {archive} has no member {', '.join(map(repr, missing))}."
        )
    return found


def git_blob_sha1(path: Path) -> str:
    """The id ``git hash-object`` prints for a file: SHA-1 of ``blob <size>\\0`` + content."""
    sha = hashlib.sha1()  # noqa: S324 - git's object id, not a security use
    sha.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest()
