"""What the ``skffjord`` command line prints on standard error: one-line errors and warnings,
each after the program name, and the exit status of a failure."""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["PROG", "CommandError", "fail", "info", "one_line", "warnings_shown"]

PROG = "skffjord"


class CommandError(Exception):
    """A failure the user can fix: printed as one line, with exit status ``status``.

    Parameters
    ----------
    message : str
        What went wrong and, where possible, what to do about it.
    status : int, default=1
        The exit status: 1 for rejected files, data and models, 2 for a bad command line.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: object) -> str:
    """``text`` as one line, each run of whitespace a single space."""
    return " ".join(str(text).split())


def info(args: argparse.Namespace, message: str) -> None:
    """Print ``message`` after the program name, unless ``--quiet``."""
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    print(f"{PROG}: warning: {one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def warnings_shown(quiet: bool) -> Iterator[None]:
    """Show warnings as one line each on standard error (none when ``quiet``)."""
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        warnings.showwarning = _show_warning
        yield


def fail(err: BaseException, status: int, debug: bool, message: object = None) -> int:
    """Print ``err`` as one line (``message`` if given; with ``debug`` its traceback first)
    and return the exit status."""
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    print(f"{PROG}: error: {one_line(err if message is None else message)}", file=sys.stderr)
    return status
