"""The ``skffjord`` command line: fit, score, sample and detect on CSV and Parquet tables.

Installed as the ``skffjord`` console script and run by ``python -m skffjord``. The options
of ``skffjord fit`` are generated from the parameters of :class:`~skffjord.FFJORDDensity`
(and ``contamination`` of :class:`~skffjord.FFJORDOutlierDetector`): their names, help
texts and defaults come from the estimators, and their values are checked by the
estimators' own validation.

Exit status: 0 on success, 1 when a file, the data or a model is rejected, 2 for a bad
command line (an unknown option, a malformed or rejected option value), 130 when
interrupted. Errors are one line on standard error, ``skffjord: error: ...``; ``--debug``
adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import torch
from sklearn.utils._param_validation import InvalidParameterError

from ._cli_commands import detect_command, fit_command, sample_command, score_command
from ._cli_messages import PROG, CommandError, fail, warnings_shown
from ._cli_options import (
    add_parameter_options,
    column_list,
    model_parameters,
    parameter_error,
    positive_int,
)
from ._cli_tables import FORMAT_NAMES
from ._estimator import FFJORDDensity
from ._ode import SolverError
from ._outlier import FFJORDOutlierDetector

__all__ = ["build_parser", "main"]


_VALUES_NOTE = """\
option values: 'none' stands for None, 'true'/'false' for booleans, a comma-separated
list for a tuple (--hidden-layer-sizes 64,64) and JSON for dicts and nested lists
(--solver '{"method": "dopri5"}', --bounds '[[0, 16], [0, null]]'). The estimator's own
validation checks every value before the fit starts."""


_EXIT_NOTE = """\
exit status: 0 success; 1 a file, the data or a model was rejected; 2 a bad command line
or option value; 130 interrupted."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, raised rather than printed.

    Options are not abbreviated: the model options follow the estimator's parameters, and a
    new parameter must not make a working command line ambiguous.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see '{self.prog} --help')", status=2)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs; wraps option help to 100."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(100, _terminal_width()))


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return 100


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``skffjord`` command and its subcommands.

    Returns
    -------
    argparse.ArgumentParser
    """
    from . import __version__

    parser = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description="FFJORD continuous normalizing flows on CSV and Parquet tables: fit a "
        "density\nor an outlier detector, then score rows, draw samples and flag outliers.",
        epilog=f"""\
examples:
  skffjord fit wine.csv -o wine.safetensors --max-time 60
  skffjord score wine.safetensors wine.csv -o scores.csv
  skffjord sample wine.safetensors -n 500 --random-state 0 -o samples.parquet
  skffjord fit wine.csv -o detector.safetensors --detector --contamination 0.05
  skffjord detect detector.safetensors wine.csv -o flags.csv

Run 'skffjord COMMAND --help' for the options of a command.

{_EXIT_NOTE}""",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    common = _Parser(add_help=False)
    group = common.add_argument_group("output and diagnostics")
    group.add_argument("-q", "--quiet", action="store_true", help="Show no warnings or summary.")
    group.add_argument(
        "--debug", action="store_true", help="Show the traceback of an error, not just its line."
    )

    def data_options(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument(
            "data", metavar="DATA", help=f"Table {what} (.csv, .tsv, .parquet; -: CSV on stdin)."
        )
        sub.add_argument(
            "--format",
            choices=sorted(FORMAT_NAMES),
            help="Format of DATA when its name does not say.",
        )

    def scored_options(sub: argparse.ArgumentParser, output: str) -> None:
        sub.add_argument("model", metavar="MODEL", help="A model file written by 'skffjord fit'.")
        data_options(sub, "of the rows to score, with a header row")
        sub.add_argument(
            "-o",
            "--output",
            required=True,
            metavar="OUT",
            help=f"Output table of {output}, one row per row of DATA, in order "
            "(.csv, .tsv, .parquet; -: CSV on stdout).",
        )
        sub.add_argument(
            "--columns",
            type=column_list,
            metavar="A,B,...",
            help="The columns of DATA to use as the model's features, in the model's order. "
            "Default: the columns named as the model's features (all columns for a model "
            "fitted without names).",
        )
        sub.add_argument(
            "--keep",
            type=column_list,
            metavar="A,B,...",
            help="Columns of DATA to copy into the output first (an id, say).",
        )

    # fit
    fit = commands.add_parser(
        "fit",
        parents=[common],
        formatter_class=_Formatter,
        usage=f"{PROG} fit DATA -o MODEL [--columns A,B,...] [--detector] [options]",
        help="Fit a density (or, with --detector, an outlier detector) and save it.",
        description="Fit FFJORDDensity (FFJORDOutlierDetector with --detector) to the rows of "
        "a table\nand write the fitted model file.",
        epilog=f"""\
examples:
  skffjord fit wine.csv -o wine.safetensors --max-time 60 --random-state 0
  skffjord fit wine.parquet -o wine.safetensors --columns alcohol,proline --hidden-layer-sizes 64,64
  skffjord fit wine.csv -o detector.safetensors --detector --contamination 0.05
  skffjord fit wine.csv -o wine.safetensors --solver '{{"method": "dopri5"}}' --no-early-stopping

{_VALUES_NOTE}

{_EXIT_NOTE}""",
    )
    data_options(fit, "of training rows, with a header row")
    fit.add_argument("-o", "--output", required=True, metavar="MODEL", help="Model file to write.")
    fit.add_argument(
        "--columns",
        type=column_list,
        metavar="A,B,...",
        help="The columns to model, by name. Default: every column (but --sample-weight's); "
        "each must be numeric.",
    )
    fit.add_argument(
        "--sample-weight",
        metavar="COLUMN",
        help="A column of non-negative row weights (not a feature).",
    )
    fit.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="Show a progress bar on stderr. Default: when stderr is a terminal, unless --quiet.",
    )
    detector = fit.add_argument_group("outlier detector (FFJORDOutlierDetector)")
    detector.add_argument(
        "--detector",
        action="store_true",
        help="Fit an outlier detector, for 'skffjord detect'.",
    )
    add_parameter_options(detector, FFJORDOutlierDetector, ["contamination"])
    names = model_parameters()
    estimator = fit.add_argument_group(
        "model options (the parameters of FFJORDDensity; 'none' stands for None)"
    )
    add_parameter_options(estimator, FFJORDDensity, names)
    fit.set_defaults(run=fit_command, parameters=[*names, "contamination"])

    # score
    score = commands.add_parser(
        "score",
        parents=[common],
        formatter_class=_Formatter,
        help="Write the log-density of each row.",
        description="Write the log-density of each row of a table under a fitted model: one "
        "column,\nlog_density (natural log, in the units of the data), as score_samples.",
        epilog=f"""\
examples:
  skffjord score wine.safetensors wine.csv -o scores.csv
  skffjord score wine.safetensors new.parquet -o - --keep id | sort -t, -k2 -g | head

{_EXIT_NOTE}""",
    )
    scored_options(score, "log_density")
    score.set_defaults(run=score_command)

    # sample
    sample = commands.add_parser(
        "sample",
        parents=[common],
        formatter_class=_Formatter,
        help="Draw samples from a fitted model.",
        description="Draw rows from a fitted model; the columns are the model's feature "
        "names\n(x0, x1, ... for a model fitted without names).",
        epilog=f"""\
examples:
  skffjord sample wine.safetensors -n 1000 -o samples.csv
  skffjord sample wine.safetensors -n 1000 --random-state 0 -o samples.parquet

{_EXIT_NOTE}""",
    )
    sample.add_argument("model", metavar="MODEL", help="A model file written by 'skffjord fit'.")
    sample.add_argument(
        "-n",
        "--n-samples",
        type=positive_int,
        required=True,
        metavar="N",
        help="Number of rows to draw.",
    )
    sample.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="Output table (.csv, .tsv, .parquet; -: CSV on stdout).",
    )
    sample.add_argument(
        "--random-state",
        type=int,
        metavar="INT",
        help="Seed of the draws (the same seed draws the same rows). Default: fresh draws.",
    )
    sample.set_defaults(run=sample_command)

    # detect
    detect = commands.add_parser(
        "detect",
        parents=[common],
        formatter_class=_Formatter,
        help="Flag outliers with a detector fitted by 'skffjord fit --detector'.",
        description="Flag the outliers among the rows of a table: two columns, label (+1 "
        "inlier,\n-1 outlier) and score (log-density minus the threshold: negative for "
        "outliers),\nas predict and decision_function.",
        epilog=f"""\
examples:
  skffjord fit wine.csv -o detector.safetensors --detector --contamination 0.05
  skffjord detect detector.safetensors wine.csv -o flags.csv --keep id

{_EXIT_NOTE}""",
    )
    scored_options(detect, "label and score")
    detect.set_defaults(run=detect_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``skffjord`` command line.

    Parameters
    ----------
    argv : sequence of str or None, default=None
        The arguments after the program name (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 success, 1 a file, the data or a model was rejected, 2 a bad
        command line or option value, 130 interrupted.

    Examples
    --------
    >>> from skffjord._cli import main
    >>> main(["sample", "missing.safetensors", "-n", "5", "-o", "-"])
    1
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
    except CommandError as err:
        return fail(err, err.status, debug)
    with warnings_shown(args.quiet):
        try:
            args.run(args)
        except CommandError as err:
            return fail(err, err.status, debug)
        except InvalidParameterError as err:
            return fail(err, 2, debug, parameter_error(err))
        except BrokenPipeError:  # the reader of stdout went away (| head): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        except (ValueError, OSError, SolverError, MemoryError, torch.cuda.OutOfMemoryError) as err:
            message = err
            if isinstance(err, OSError) and err.strerror and err.filename:
                message = f"{err.strerror}: {err.filename!r}"
            return fail(err, 1, debug, message)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
    return 0
