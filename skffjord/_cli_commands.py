"""The four commands of the ``skffjord`` command line, ``fit``, ``score``, ``sample`` and
``detect``, each run on the parsed arguments."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from ._cli_messages import CommandError, info, one_line
from ._cli_options import check_parameters
from ._cli_tables import (
    check_input,
    check_output,
    check_values,
    kept_columns,
    model_input,
    read_table,
    select_columns,
    table_format,
    write_table,
)
from ._estimator import FFJORDDensity
from ._model_file import ModelFileError, load_model
from ._outlier import FFJORDOutlierDetector

__all__ = ["detect_command", "fit_command", "load_model_file", "sample_command", "score_command"]


def load_model_file(path: str) -> FFJORDDensity:
    """Load a model file, turning a rejected file into a :class:`CommandError`.

    Parameters
    ----------
    path : str

    Returns
    -------
    FFJORDDensity or FFJORDOutlierDetector
    """
    check_input(path)
    try:
        return load_model(path)
    except ModelFileError as err:  # its message names the file and the fault
        raise CommandError(one_line(err)) from err


def fit_command(args: argparse.Namespace) -> None:
    """Fit an estimator to the rows of ``args.data`` and write its model file."""
    fmt = table_format(args.data, args.format, "input")
    check_output(args.output)
    if "contamination" in vars(args) and not args.detector:
        raise CommandError("--contamination needs --detector", status=2)
    cls = FFJORDOutlierDetector if args.detector else FFJORDDensity
    params = {name: getattr(args, name) for name in args.parameters if name in vars(args)}
    progress = args.progress
    if progress is None:
        progress = sys.stderr.isatty() and not args.quiet
    estimator = cls(**params, verbose=int(progress))
    estimator._validate_params()  # a bad value fails before the data are read
    frame = read_table(args.data, fmt)
    weight_column = args.sample_weight
    features = args.columns or [c for c in frame.columns if c != weight_column]
    if weight_column is not None and weight_column in features:
        raise CommandError(f"column {weight_column!r} is both a feature and the sample weight")
    X = select_columns(frame, features, args.data)
    weights = None
    if weight_column is not None:
        weights = select_columns(frame, [weight_column], args.data)
        check_values(weights, args.data)
        weights = weights.to_numpy(dtype=np.float64).ravel()
    check_parameters(estimator, X.shape[1], [str(c) for c in X.columns])
    check_values(X, args.data)
    estimator.fit(X, sample_weight=weights)
    estimator.save(args.output)
    info(
        args,
        f"wrote {args.output}: {cls.__name__} of {X.shape[1]} feature(s) fitted on "
        f"{X.shape[0]} rows in {estimator.n_iter_} epoch(s) (stopped: {estimator.stop_reason_})",
    )


def score_command(args: argparse.Namespace) -> None:
    """Write the log-density of each row of ``args.data`` under the model."""
    fmt = table_format(args.data, args.format, "input")
    out_fmt = table_format(args.output, None, "output")
    check_output(args.output)
    model = load_model_file(args.model)
    frame = read_table(args.data, fmt)
    X = model_input(model, frame, args.columns, args.data)
    out = kept_columns(frame, args.keep, args.data, ["log_density"])
    out["log_density"] = model.score_samples(X)
    write_table(out, args.output, out_fmt)


def sample_command(args: argparse.Namespace) -> None:
    """Write ``args.n_samples`` rows drawn from the model."""
    out_fmt = table_format(args.output, None, "output")
    check_output(args.output)
    model = load_model_file(args.model)
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        names = [f"x{j}" for j in range(model.n_features_in_)]
    samples = model.sample(args.n_samples, random_state=args.random_state)
    write_table(pd.DataFrame(samples, columns=list(names)), args.output, out_fmt)


def detect_command(args: argparse.Namespace) -> None:
    """Write the label and score of each row of ``args.data`` under the detector."""
    fmt = table_format(args.data, args.format, "input")
    out_fmt = table_format(args.output, None, "output")
    check_output(args.output)
    model = load_model_file(args.model)
    if not isinstance(model, FFJORDOutlierDetector):
        raise CommandError(
            f"{args.model!r} holds a density model ({type(model).__name__}), not an outlier "
            "detector; fit one with 'skffjord fit --detector'"
        )
    frame = read_table(args.data, fmt)
    X = model_input(model, frame, args.columns, args.data)
    out = kept_columns(frame, args.keep, args.data, ["label", "score"])
    score = model.decision_function(X)
    out["label"] = np.where(score < 0, -1, 1)  # FFJORDOutlierDetector.predict's rule
    out["score"] = score
    write_table(out, args.output, out_fmt)
    outliers = int(np.sum(out["label"] == -1))
    info(args, f"{outliers} of {len(out)} rows are outliers (label -1)")
