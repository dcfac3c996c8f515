"""Model files: ``save``, ``load`` and ``load_model`` round trips, and refused files."""

from __future__ import annotations

import copy
import functools
import json
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import skffjord
from skffjord import (
    DeviceWarning,
    FFJORDDensity,
    FFJORDOutlierDetector,
    ModelFileError,
    load_model,
)
from skffjord._json_codec import decode, encode
from skffjord._model_file import FORMAT_VERSION, _checksum

from .conftest import TINY

DATA = Path(__file__).parent / "data"


def _rng():
    return np.random.default_rng(0)


def _gaussian():
    return _rng().multivariate_normal([1.0, -2.0], [[1.0, 0.8], [0.8, 1.0]], size=150)


def _bounded():
    """Columns bounded below, on both sides and above."""
    z = _rng().normal(size=(150, 3))
    return np.column_stack([np.exp(z[:, 0]), 1 / (1 + np.exp(-z[:, 1])), 5 - np.exp(z[:, 2])])


def _discrete():
    rng = _rng()
    return np.column_stack([rng.poisson(3.0, size=150).astype(float), rng.normal(size=150)])


def _frame():
    return pd.DataFrame(_gaussian(), columns=["a", "b"])


def _tiny(**kw):
    return {**TINY, "random_state": 0, **kw}


#: name: (estimator class, parameters, data)
CASES = {
    "defaults": (
        FFJORDDensity,
        dict(hidden_layer_sizes=(8,), max_iter=2, random_state=0),
        _gaussian,
    ),
    "affine": (FFJORDDensity, _tiny(standardize="affine"), _gaussian),
    "sinh_arcsinh": (FFJORDDensity, _tiny(standardize="sinh_arcsinh"), _gaussian),
    "quantile": (FFJORDDensity, _tiny(standardize="quantile"), _gaussian),
    "no_map": (FFJORDDensity, _tiny(standardize=False), _gaussian),
    "three_components": (FFJORDDensity, _tiny(n_components=3), _gaussian),
    "bounds": (FFJORDDensity, _tiny(bounds=[(0, None), (0, 1), (None, 5)]), _bounded),
    "discrete": (FFJORDDensity, _tiny(discrete_features="auto"), _discrete),
    "two_blocks": (FFJORDDensity, _tiny(n_blocks=2), _gaussian),
    "deep": (FFJORDDensity, _tiny(hidden_layer_sizes=(8, 8, 8)), _gaussian),
    "dataframe": (FFJORDDensity, _tiny(), _frame),
    "flow_matching": (
        FFJORDDensity,
        _tiny(training="flow_matching", early_stopping=True),
        _gaussian,
    ),
    "detector_defaults": (
        FFJORDOutlierDetector,
        dict(hidden_layer_sizes=(8,), max_iter=2, random_state=0, contamination=0.05),
        _gaussian,
    ),
    "detector_quantile_mixture": (
        FFJORDOutlierDetector,
        _tiny(standardize="quantile", n_components=3),
        _gaussian,
    ),
    "detector_dataframe": (FFJORDOutlierDetector, _tiny(), _frame),
}


def _fit(cls, params, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cls(**params).fit(X)


@functools.cache
def _fitted(name):
    """The model of ``CASES[name]`` fitted on its data (once per test run), and the data."""
    cls, params, data = CASES[name]
    X = data()
    return _fit(cls, params, X), X


@pytest.fixture(params=list(CASES))
def case(request):
    return _fitted(request.param)


@pytest.fixture
def tiny_case():
    return _fitted("affine")  # the suite's tiny settings


@pytest.fixture
def detector_case():
    return _fitted("detector_quantile_mixture")


def _rows(X, n):
    return X.iloc[:n] if isinstance(X, pd.DataFrame) else X[:n]


def _saved(model, folder, name="model.safetensors"):
    path = Path(folder) / name
    model.save(path)
    return path


def assert_same(a, b, where="value"):
    """``a`` and ``b`` are equal and of the same types all the way down (NaN equals NaN)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    elif isinstance(a, np.random.RandomState):
        assert_same(list(a.get_state()), list(b.get_state()), where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_flow(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key
    assert repr(a) == repr(b)


# ---------------------------------------------------------------------- round trips
def test_round_trip_is_exact(case, tmp_path):
    model, X = case
    path = _saved(model, tmp_path)
    loaded = type(model).load(path)
    assert type(loaded) is type(model)
    assert type(load_model(path)) is type(model)
    assert_same(loaded.get_params(), model.get_params(), "params")
    assert set(loaded.__dict__) == set(model.__dict__)
    for key, value in model.__dict__.items():
        if key not in ("flow_", "_optimizer_state"):
            assert_same(loaded.__dict__[key], value, key)
    assert loaded._optimizer_state is None
    assert_same_flow(loaded.flow_, model.flow_)
    rows = _rows(X, 40)
    np.testing.assert_array_equal(loaded.score_samples(rows), model.score_samples(rows))
    np.testing.assert_array_equal(
        loaded.sample(20, random_state=0), model.sample(20, random_state=0)
    )
    np.testing.assert_array_equal(
        loaded.trajectory(_rows(X, 5), n_times=3), model.trajectory(_rows(X, 5), n_times=3)
    )
    if isinstance(model, FFJORDOutlierDetector):
        np.testing.assert_array_equal(loaded.predict(rows), model.predict(rows))
        np.testing.assert_array_equal(loaded.decision_function(rows), model.decision_function(rows))


def test_round_trips_cover_every_map_and_base():
    """The configurations above give each module a file can hold (checked on the flows
    they fit, so that a change of the defaults cannot silently drop one)."""
    kinds = {type(m).__name__ for name in CASES for m in _fitted(name)[0].flow_.modules()}
    assert {
        "ChainedMap", "BoundsMap", "GaussianizingMap", "QuantileGaussianizer",
        "GaussianMixtureBase",
    } <= kinds  # fmt: skip


def test_file_is_safetensors_with_the_documented_metadata(tiny_case, tmp_path):
    model, _ = tiny_case
    path = _saved(model, tmp_path)
    with safe_open(str(path), "pt") as file:
        metadata = file.metadata()
        names = set(file.keys())
    assert metadata["format"] == "skffjord-model"
    assert metadata["format_version"] == str(FORMAT_VERSION) == "1"
    assert metadata["skffjord_version"] == skffjord.__version__
    assert metadata["estimator"] == "FFJORDDensity"
    assert len(metadata["sha256"]) == 64
    stored = json.loads(metadata["model"])
    assert set(stored) == {"params", "attributes", "arrays", "flow"}
    assert stored["flow"]["hidden_layer_sizes"] == [8]
    assert {f"flow.{k}" for k in model.flow_.state_dict()} <= names
    tensors = load_file(str(path))
    assert tensors["flow.blocks.0.field.layers.0.linear.weight"].dtype == torch.float32
    assert tensors["flow.loc"].dtype == torch.float64
    assert tensors["flow.marginal.chol"].dtype == torch.float64
    assert tensors["attr.bounds_"].dtype == torch.float64
    assert not any(name.endswith("_optimizer_state") for name in names)


def test_loading_unpickles_nothing(tiny_case, tmp_path, monkeypatch):
    model, X = tiny_case
    path = _saved(model, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model file must not unpickle")

    for target in (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"):
        monkeypatch.setattr(*target, refuse)
    loaded = FFJORDDensity.load(path)
    monkeypatch.undo()
    np.testing.assert_array_equal(loaded.score_samples(X[:10]), model.score_samples(X[:10]))


def test_loading_leaves_the_global_random_state_alone(tiny_case, tmp_path):
    path = _saved(tiny_case[0], tmp_path)
    before = torch.get_rng_state()
    FFJORDDensity.load(path)
    assert torch.equal(torch.get_rng_state(), before)


def test_json_values_round_trip_exactly():
    value = {
        "solver": {"method": "rk4", "options": {"step_size": 0.5, "grid": (0.0, 0.5, 1.0)}},
        "scores": {1: -math.inf, 3: 0.1 + 0.2, 2: math.nan},
        "floats": [math.inf, -0.0, 5e-324, np.float64(1.5), np.float32(0.1), np.int64(7)],
        "nested": ((1, "a"), [None, True]),
        "__tuple__": "a key that looks like a tag",
        "array": np.array([[1.0, np.nan], [-np.inf, 2.0]]),
        "names": np.array(["a", "b"], dtype=object),
    }
    encoded = json.dumps(encode(value, "value"), allow_nan=False)
    decoded = decode(json.loads(encoded))
    assert_same(decoded, value)
    assert math.copysign(1.0, decoded["floats"][1]) == -1.0


def test_random_state_instance_is_stored_as_its_state(tmp_path):
    X = _gaussian()
    random_state = np.random.RandomState(3)
    model = _fit(FFJORDDensity, _tiny(random_state=random_state), X)
    loaded = FFJORDDensity.load(_saved(model, tmp_path))
    assert isinstance(loaded.random_state, np.random.RandomState)
    assert loaded.random_state is not random_state
    assert_same(loaded.random_state, random_state)
    np.testing.assert_array_equal(loaded.random_state.rand(3), random_state.rand(3))


def test_a_value_a_file_cannot_hold_is_named(tiny_case, tmp_path):
    model = copy.deepcopy(tiny_case[0])
    model.set_params(random_state=np.random.default_rng(0))
    with pytest.raises(ModelFileError, match="'random_state'.*Generator"):
        model.save(tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


# ---------------------------------------------------------------------- refits
def test_fit_on_a_loaded_model_matches_a_fresh_fit(tiny_case, tmp_path):
    model, X = tiny_case
    loaded = FFJORDDensity.load(_saved(model, tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        refit = loaded.fit(X[:100])
        fresh = clone(model).fit(X[:100])
    assert refit is loaded and refit.n_features_in_ == 2
    np.testing.assert_array_equal(refit.score_samples(X[:20]), fresh.score_samples(X[:20]))


def test_warm_start_continues_from_a_loaded_model(tiny_case, tmp_path):
    model, X = tiny_case
    loaded = FFJORDDensity.load(_saved(model, tmp_path))
    original = copy.deepcopy(model)  # fitted without warm_start: no optimizer state
    assert original._optimizer_state is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        loaded.set_params(warm_start=True).fit(X)
        original.set_params(warm_start=True).fit(X)
    assert loaded.n_iter_ == original.n_iter_ == 2
    assert not torch.equal(
        loaded.flow_.blocks[0].field.layers[0].linear.weight,
        model.flow_.blocks[0].field.layers[0].linear.weight,
    )  # it trained on
    np.testing.assert_array_equal(loaded.score_samples(X[:20]), original.score_samples(X[:20]))


def test_loaded_model_checks_feature_names_like_the_fitted_one(tmp_path):
    cls, params, data = CASES["dataframe"]
    frame = data()
    model = _fit(cls, params, frame)
    loaded = FFJORDDensity.load(_saved(model, tmp_path))
    assert loaded.feature_names_in_.dtype == object
    np.testing.assert_array_equal(loaded.feature_names_in_, ["a", "b"])
    for estimator in (model, loaded):
        with pytest.raises(ValueError, match="feature names"):
            estimator.score_samples(frame.rename(columns={"a": "z"}))
        with pytest.warns(UserWarning, match="valid feature names"):
            estimator.score_samples(frame.to_numpy()[:5])


def test_loaded_model_still_pickles(tiny_case, tmp_path):
    model, X = tiny_case
    loaded = FFJORDDensity.load(_saved(model, tmp_path))
    again = pickle.loads(pickle.dumps(loaded))
    np.testing.assert_array_equal(again.score_samples(X[:10]), model.score_samples(X[:10]))


# ---------------------------------------------------------------------- devices
def test_a_model_from_a_missing_device_loads_on_the_cpu(tiny_case, tmp_path):
    model, X = tiny_case
    elsewhere = copy.deepcopy(model)
    elsewhere.device_ = "cuda:99"
    path = _saved(elsewhere, tmp_path)
    with pytest.warns(DeviceWarning, match="cuda:99"):
        loaded = FFJORDDensity.load(path)
    assert loaded.device_ == "cpu"
    assert loaded.flow_.loc.device.type == "cpu"
    np.testing.assert_array_equal(loaded.score_samples(X[:10]), model.score_samples(X[:10]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_model_loads_on_cuda_and_on_a_machine_without_it(tmp_path, monkeypatch):
    X = _gaussian()
    model = _fit(FFJORDDensity, _tiny(device="cuda"), X)
    path = _saved(model, tmp_path)
    on_cuda = FFJORDDensity.load(path)
    assert on_cuda.flow_.loc.device.type == "cuda"
    np.testing.assert_array_equal(on_cuda.score_samples(X[:10]), model.score_samples(X[:10]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning):
        on_cpu = FFJORDDensity.load(path)
    assert on_cpu.device_ == "cpu" and on_cpu.flow_.loc.device.type == "cpu"
    np.testing.assert_allclose(
        on_cpu.score_samples(X[:10]), model.score_samples(X[:10]), rtol=1e-4, atol=1e-4
    )


# ---------------------------------------------------------------------- refused files
def test_an_unfitted_estimator_cannot_be_saved(tmp_path):
    with pytest.raises(NotFittedError):
        FFJORDDensity().save(tmp_path / "model.safetensors")


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        FFJORDDensity.load(tmp_path / "missing.safetensors")


def _bytes_of(model, folder):
    return _saved(model, folder).read_bytes()


def _header_end(data):
    return 8 + int.from_bytes(data[:8], "little")


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda data: b"just some text, not a model", "not a model file"),
        (lambda data: b"", "not a model file"),
        (lambda data: data[:-7], "truncated"),
        (lambda data: data[: len(data) // 3], "truncated"),
        (lambda data: data[:8] + b"[" + data[9:], "not a model file"),  # header JSON broken
    ],
    ids=["text", "empty", "truncated_tail", "truncated_header", "broken_json"],
)
def test_a_file_that_is_not_a_model_file_is_refused(tiny_case, tmp_path, damage, match):
    data = _bytes_of(tiny_case[0], tmp_path)
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damage(data))
    with pytest.raises(ModelFileError, match=match):
        FFJORDDensity.load(path)
    with pytest.raises(ModelFileError, match=match):
        load_model(path)


def test_another_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"purpose": "other"})
    with pytest.raises(ModelFileError, match="not a skffjord model file"):
        load_model(path)


def test_a_changed_tensor_byte_fails_the_checksum(tiny_case, tmp_path):
    data = bytearray(_bytes_of(tiny_case[0], tmp_path))
    data[-1] ^= 0x01  # the last byte of the last tensor
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        FFJORDDensity.load(path)
    # every tensor byte is covered, not just the last one
    data = bytearray(_bytes_of(tiny_case[0], tmp_path))
    data[_header_end(data)] ^= 0x80
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        FFJORDDensity.load(path)


@pytest.mark.parametrize("old, new", [(b"softplus", b"softplux"), (b"max_iter", b"max_itex")])
def test_a_changed_metadata_byte_fails_the_checksum(tiny_case, tmp_path, old, new):
    data = _bytes_of(tiny_case[0], tmp_path)
    end = _header_end(data)
    assert old in data[:end]
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(data[:end].replace(old, new, 1) + data[end:])
    with pytest.raises(ModelFileError, match="checksum"):
        FFJORDDensity.load(path)


def _rewritten(path, **changes):
    """The model file at ``path`` with metadata entries changed and a valid checksum."""
    with safe_open(str(path), "pt") as file:
        metadata = dict(file.metadata())
    tensors = load_file(str(path))
    metadata.update(changes)
    metadata["sha256"] = _checksum(metadata, tensors)
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_a_newer_format_is_refused_with_both_versions(tiny_case, tmp_path):
    path = _rewritten(_saved(tiny_case[0], tmp_path), format_version="2", skffjord_version="9.0.0")
    with pytest.raises(ModelFileError) as err:
        FFJORDDensity.load(path)
    message = str(err.value)
    assert "skffjord 9.0.0" in message
    assert "model-file format 2" in message
    assert "reads format <= 1" in message


def test_the_rewrite_helper_keeps_a_file_loadable(tiny_case, tmp_path):
    """The checksum recomputed above is the one load verifies (so the refusal above is the
    version check, not a checksum failure)."""
    model, X = tiny_case
    path = _rewritten(_saved(model, tmp_path), skffjord_version="0.0.1")
    np.testing.assert_array_equal(
        FFJORDDensity.load(path).score_samples(X[:5]), model.score_samples(X[:5])
    )


def test_an_unknown_parameter_is_named(tiny_case, tmp_path):
    path = _saved(tiny_case[0], tmp_path)
    with safe_open(str(path), "pt") as file:
        model = json.loads(file.metadata()["model"])
    model["params"]["new_option"] = 1
    _rewritten(path, model=json.dumps(model))
    with pytest.raises(ModelFileError, match="new_option"):
        FFJORDDensity.load(path)


def test_a_file_of_another_estimator_names_both(tiny_case, detector_case, tmp_path):
    detector_file = _saved(detector_case[0], tmp_path, "detector.safetensors")
    with pytest.raises(ModelFileError, match="FFJORDOutlierDetector, not a FFJORDDensity"):
        FFJORDDensity.load(detector_file)
    density_file = _saved(tiny_case[0], tmp_path, "density.safetensors")
    with pytest.raises(ModelFileError, match="FFJORDDensity, not a FFJORDOutlierDetector"):
        FFJORDOutlierDetector.load(density_file)
    assert type(load_model(detector_file)) is FFJORDOutlierDetector
    assert type(load_model(density_file)) is FFJORDDensity


def test_a_state_dict_of_the_wrong_shape_is_refused(tiny_case, tmp_path):
    path = _saved(tiny_case[0], tmp_path)
    with safe_open(str(path), "pt") as file:
        model = json.loads(file.metadata()["model"])
    model["flow"]["hidden_layer_sizes"] = [9]
    _rewritten(path, model=json.dumps(model))
    with pytest.raises(ModelFileError, match="cannot be rebuilt"):
        FFJORDDensity.load(path)


# ---------------------------------------------------------------------- committed file
def test_the_committed_format_1_file_loads_and_scores():
    """Guards the layout: a file written by the current format must keep loading and
    scoring the same (regenerate it with tests/data/make_model_file_fixture.py only when
    the format version changes)."""
    path = DATA / "model_file_v1.safetensors"
    expected = json.loads((DATA / "model_file_v1_scores.json").read_text())
    with safe_open(str(path), "pt") as file:
        assert file.metadata()["format_version"] == "1"
    model = load_model(path)
    assert type(model) is FFJORDDensity
    assert model.n_features_in_ == 2 and model.n_components_ == 2
    assert model._structure["hidden_layer_sizes"] == (8,)
    assert {"ChainedMap", "BoundsMap", "GaussianizingMap", "GaussianMixtureBase"} <= {
        type(m).__name__ for m in model.flow_.modules()
    }
    scores = model.score_samples(np.array(expected["rows"]))
    np.testing.assert_allclose(scores, expected["scores"], rtol=0, atol=1e-12)
