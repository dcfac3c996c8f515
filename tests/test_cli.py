"""The ``skffjord`` command line, end to end: ``python -m skffjord`` in subprocesses, the
installed console script once, and the argument handling in process.

A subprocess imports torch, so the fits are shared by the tests (module fixtures) and the
errors that need no fit are checked in process, where ``main`` returns the exit status.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import skffjord
from skffjord import FFJORDDensity, FFJORDOutlierDetector
from skffjord._cli import build_parser, main
from skffjord._cli_tables import _CSV_FLOATS

#: A fit of a fraction of a second: tiny network, two epochs, fixed-step solves, no
#: searches over the map or the base.
FAST_SOLVER = json.dumps({"method": "rk4", "options": {"step_size": 0.5}})
TINY = [
    "--max-iter", "2",
    "--hidden-layer-sizes", "8",
    "--solver", FAST_SOLVER,
    "--eval-solver", FAST_SOLVER,
    "--n-components", "1",
    "--standardize", "affine",
    "--discrete-features", "none",
    "--training", "likelihood",
    "--no-early-stopping",
    "--random-state", "0",
]  # fmt: skip

OUTLIER_ID = 59


def run_cli(*args, program=None):
    command = program or [sys.executable, "-m", "skffjord"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=600, check=False
    )


def read_csv(source):
    return pd.read_csv(source, **_CSV_FLOATS)


def assert_error(result_or_status, stderr, status, *words):
    """Exit ``status``, one line ``skffjord: error: ...`` naming ``words``, no traceback."""
    code = getattr(result_or_status, "returncode", result_or_status)
    assert code == status, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("skffjord: error: "), stderr
    for word in words:
        assert word in lines[0], (word, stderr)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A table with numeric columns a, b, c (row 59 a planted outlier), an integer id and a
    text column, as CSV and Parquet, and the two models fitted on it by the command line."""
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    cov = [[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 1.0]]
    X = np.vstack([rng.multivariate_normal([0.0, 1.0, -1.0], cov, size=59), [[7, -6, 7]]])
    frame = pd.DataFrame({"id": np.arange(60), "a": X[:, 0], "b": X[:, 1], "c": X[:, 2]})
    frame["name"] = [f"row{i}" for i in range(60)]
    frame.to_csv(folder / "data.csv", index=False)
    frame.to_parquet(folder / "data.parquet", index=False)
    # The same rows, columns in another order: the model picks its own by name.
    frame[["b", "id", "a", "name", "c"]].to_csv(folder / "shuffled.csv", index=False)

    density, detector = folder / "density.safetensors", folder / "detector.safetensors"
    density_fit = run_cli(
        "fit", folder / "data.csv", "-o", density, "--columns", "c,a", "-q", *TINY
    )
    detector_fit = run_cli(
        "fit", folder / "data.parquet", "-o", detector, "--columns", "a,b,c",
        "--detector", "--contamination", "0.1", "--progress", *TINY,
    )  # fmt: skip
    fits = (density_fit, detector_fit)
    return {"dir": folder, "frame": frame, "density": density, "detector": detector, "fits": fits}


def test_fit_writes_models_the_python_api_loads(work):
    density, detector = work["fits"]
    assert density.returncode == 0, density.stderr
    assert density.stderr == ""  # --quiet: no warning (two epochs) and no summary
    model = skffjord.load_model(work["density"])
    assert type(model) is FFJORDDensity
    assert list(model.feature_names_in_) == ["c", "a"]
    assert model.n_iter_ == 2

    assert detector.returncode == 0, detector.stderr
    assert "epoch" in detector.stderr  # --progress: the bar, though stderr is a pipe
    assert "wrote" in detector.stderr and "Traceback" not in detector.stderr
    model = skffjord.load_model(work["detector"])
    assert type(model) is FFJORDOutlierDetector
    assert model.contamination == 0.1
    assert list(model.feature_names_in_) == ["a", "b", "c"]


def test_score_picks_the_model_columns_by_name_and_equals_score_samples(work):
    folder = work["dir"]
    result = run_cli(
        "score", work["density"], folder / "shuffled.csv", "-o", folder / "s.csv",
        "--keep", "id",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = read_csv(folder / "s.csv")
    assert list(out.columns) == ["id", "log_density"]
    frame = read_csv(folder / "shuffled.csv")
    np.testing.assert_array_equal(out["id"], frame["id"])
    expected = skffjord.load_model(work["density"]).score_samples(frame[["c", "a"]])
    np.testing.assert_array_equal(out["log_density"].to_numpy(), expected)

    # Parquet in and out; --columns maps other columns onto the model's features, in order.
    result = run_cli(
        "score", work["detector"], folder / "data.parquet", "-o", folder / "s.parquet",
        "--columns", "b,c,a",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = pd.read_parquet(folder / "s.parquet")
    assert list(out.columns) == ["log_density"]
    swapped = work["frame"][["b", "c", "a"]].set_axis(["a", "b", "c"], axis=1)
    detector = skffjord.load_model(work["detector"])
    np.testing.assert_array_equal(out["log_density"], detector.score_samples(swapped))
    assert not np.array_equal(
        out["log_density"], detector.score_samples(work["frame"][["a", "b", "c"]])
    )


def test_sample_writes_the_model_features_to_stdout(work):
    result = run_cli("sample", work["density"], "-n", 7, "--random-state", 3, "-o", "-")
    assert result.returncode == 0, result.stderr
    out = read_csv(io.StringIO(result.stdout))
    assert list(out.columns) == ["c", "a"]
    model = skffjord.load_model(work["density"])
    np.testing.assert_array_equal(out.to_numpy(), model.sample(7, random_state=3))


def test_detect_writes_predict_and_decision_function(work):
    folder = work["dir"]
    result = run_cli(
        "detect", work["detector"], folder / "data.parquet", "-o", folder / "f.csv",
        "--keep", "id",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rows are outliers" in result.stderr
    out = read_csv(folder / "f.csv")
    assert list(out.columns) == ["id", "label", "score"]
    model = skffjord.load_model(work["detector"])
    X = work["frame"][["a", "b", "c"]]
    np.testing.assert_array_equal(out["score"].to_numpy(), model.decision_function(X))
    np.testing.assert_array_equal(out["label"].to_numpy(), model.predict(X))
    assert set(out["label"]) == {-1, 1}
    assert out.loc[out["id"] == OUTLIER_ID, "label"].item() == -1


def test_the_console_script(work):
    program = shutil.which("skffjord")
    if program is None:
        pytest.skip("the skffjord console script is not installed")
    result = run_cli("sample", work["detector"], "-n", 4, "-o", "-", program=[program])
    assert result.returncode == 0, result.stderr
    assert read_csv(io.StringIO(result.stdout)).shape == (4, 3)


def test_bad_input_is_one_line_without_traceback(work, tmp_path):
    folder = work["dir"]
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5,6\n")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00not a model" * 50)
    cases = [
        (
            ["score", work["density"], tmp_path / "absent.csv", "-o", "-"],
            1,
            "absent.csv",
        ),
        (["fit", tmp_path / "ragged.csv", "-o", tmp_path / "m.safetensors"], 1, "ragged.csv"),
        (["fit", folder / "data.csv", "-o", tmp_path / "m.safetensors", *TINY], 1, "'name'"),
        (
            ["fit", folder / "data.csv", "-o", tmp_path / "m.safetensors", "--columns", "a,zz"],
            1,
            "zz",
        ),
        (
            ["fit", folder / "data.csv", "-o", tmp_path / "m.safetensors", "--max-iter", "0"],
            2,
            "max-iter",
        ),
        (
            ["sample", tmp_path / "corrupt.safetensors", "-n", 3, "-o", "-"],
            1,
            "corrupt.safetensors",
        ),
        (
            ["detect", work["density"], folder / "data.csv", "-o", "-"],
            1,
            "--detector",
        ),
    ]
    for args, status, word in cases:
        result = run_cli(*args)
        assert_error(result, result.stderr, status, word)
        assert result.stdout == ""
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(
    "args, status, words",
    [
        (
            ["fit", "{csv}", "-o", "m.safetensors", "--solver", "{method: 1}"],
            2,
            ["--solver", "JSON"],
        ),
        (["fit", "{csv}", "-o", "m.safetensors", "--solver", '{"method": "x"}'], 2, ["method"]),
        (["fit", "{csv}", "-o", "m.safetensors", "--contamination", "0.2"], 2, ["--detector"]),
        (
            ["fit", "{csv}", "-o", "m.safetensors", "--detector", "--contamination", "2"],
            2,
            ["contam"],
        ),
        (
            ["fit", "{csv}", "-o", "m.safetensors", "--bounds", "[[0, 1]]", "--columns", "a,b"],
            2,
            [],
        ),
        (["fit", "{csv}", "-o", "m.safetensors", "--learning-rate"], 2, ["--learning-rate"]),
        (["fit", "{nan}", "-o", "m.safetensors", "--columns", "a,b"], 1, ["'b' (1)", "row 2"]),
        (["fit", "{csv}", "-o", "no/such/dir/m.safetensors"], 1, ["no such directory"]),
        (["fit", "{csv}", "-o", "m.safetensors", "--columns", "a,,b"], 2, ["--columns"]),
        (["score", "{density}", "{csv}", "-o", "scores.xlsx"], 2, ["scores.xlsx", ".parquet"]),
        (["score", "{density}", "{nan}", "-o", "-"], 1, ["'c'", "a, b"]),
        (["score", "{density}", "{csv}", "-o", "-", "--columns", "a"], 1, ["2 feature"]),
        (["score", "{density}", "{csv}", "-o", "-", "--keep", "log_density"], 2, ["--keep"]),
        (["score", "{density}", "{csv}", "-o", "-", "--keep", "id,zz"], 1, ["no column(s) 'zz'"]),
        (["score", "{density}", "{csv}", "-o", "-", "--format", "parquet"], 1, ["Parquet"]),
        (["sample", "{density}", "-n", "0", "-o", "-"], 2, ["positive"]),
        (["sample", "{csv}", "-n", "2", "-o", "-"], 1, ["data.csv", "not a model file"]),
        (["frobnicate"], 2, ["frobnicate"]),
    ],
)
def test_errors_in_process(work, tmp_path, monkeypatch, capsys, args, status, words):
    (tmp_path / "nan.csv").write_text("a,b\n1.0,2.0\n3.0,\n")
    paths = {
        "csv": work["dir"] / "data.csv",
        "nan": tmp_path / "nan.csv",
        "density": work["density"],
    }
    monkeypatch.chdir(tmp_path)
    for key, path in paths.items():
        args = [arg.replace(f"{{{key}}}", str(path)) for arg in args]
    code = main(args)
    captured = capsys.readouterr()
    assert_error(code, captured.err, status, *words)
    assert captured.out == ""
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("command", [None, "fit", "score", "sample", "detect"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"] if command else ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: skffjord {command or ''}".rstrip())
    assert "examples:\n  skffjord " in out and "exit status" in out


def test_help_and_version_in_a_subprocess():
    result = run_cli("--help")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert all(f"    {command} " in result.stdout for command in ("fit", "score", "sample"))
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0


def test_every_model_parameter_is_an_option_with_the_estimators_help(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    names = [n for n in FFJORDDensity().get_params() if n not in ("verbose", "warm_start")]
    for name in [*names, "contamination"]:
        assert f"--{name.replace('_', '-')}" in out, name
    # the help texts are the docstring's, defaults from the estimator
    assert "Wall-clock budget of a fit in seconds" in out
    assert "Default: softplus." in out and "--no-early-stopping" in out


def test_option_values_become_parameter_values():
    parser = build_parser()
    args = parser.parse_args(
        ["fit", "d.csv", "-o", "m.safetensors",
         "--hidden-layer-sizes", "64,32", "--n-components", "auto", "--batch-size", "16",
         "--discrete-features", "none", "--standardize", "false", "--max-time", "1.5",
         "--bounds", '[[0, 1], [null, 2]]', "--random-state", "none",
         "--solver", '{"method": "dopri5"}', "--no-early-stopping"]
    )  # fmt: skip
    given = {name: getattr(args, name) for name in args.parameters if name in vars(args)}
    assert given == {
        "hidden_layer_sizes": (64, 32),
        "n_components": "auto",
        "batch_size": 16,
        "discrete_features": None,
        "standardize": False,
        "max_time": 1.5,
        "bounds": [[0, 1], [None, 2]],
        "random_state": None,
        "solver": {"method": "dopri5"},
        "early_stopping": False,
    }
    FFJORDDensity(**given)._validate_params()
    # what is not given is left to the estimator's defaults
    assert "max_iter" not in vars(parser.parse_args(["fit", "d.csv", "-o", "m.safetensors"]))
