"""Every path on a CUDA device: fits in each training mode, scores, samples, trajectories,
the outlier detector, pickles and model files give the CPU's results within float32
tolerance (float64 solves: far tighter). Skipped where no CUDA device is present."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch

from skffjord import FFJORDDensity, FFJORDOutlierDetector, load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = dict(hidden_layer_sizes=(32, 32), discrete_features=None, max_iter=6, random_state=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = np.array([[-2.0, 0.0], [2.0, 1.0]])
    X = centres[rng.integers(0, 2, 1200)] + rng.normal(scale=0.6, size=(1200, 2))
    return X[:900], X[900:]


def _on_cuda(model: FFJORDDensity) -> FFJORDDensity:
    """A copy of a CPU-fitted model with its flow on the CUDA device."""
    moved = copy.deepcopy(model)
    moved.flow_ = moved.flow_.to("cuda")
    moved.device_ = "cuda"
    return moved


@pytest.mark.parametrize("training", ["likelihood", "flow_matching", "hybrid"])
def test_a_cuda_fit_matches_a_cpu_fit_of_the_same_budget(data, training):
    train, test = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = FFJORDDensity(training=training, **SMALL).fit(train)
        gpu = FFJORDDensity(training=training, device="cuda", **SMALL).fit(train)
    assert gpu.device_.startswith("cuda")
    assert all(p.is_cuda for p in gpu.flow_.parameters())
    scores = gpu.score_samples(test)
    assert np.isfinite(scores).all()
    # the random streams differ between devices: a different fit of the same budget
    assert abs(scores.mean() - cpu.score(test)) < 0.2
    assert gpu.n_iter_ == cpu.n_iter_


@pytest.fixture(scope="module")
def fitted(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FFJORDDensity(**SMALL).fit(data[0])


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-8), ("float32", 1e-3)])
def test_the_same_weights_score_alike_on_cpu_and_cuda(fitted, data, dtype, tol):
    test = data[1]
    cpu = copy.deepcopy(fitted).set_params(eval_solver={"dtype": dtype})
    gpu = _on_cuda(cpu)
    np.testing.assert_allclose(gpu.score_samples(test), cpu.score_samples(test), atol=tol)


def test_the_same_weights_sample_and_move_alike_on_cpu_and_cuda(fitted, data):
    cpu = copy.deepcopy(fitted).set_params(eval_solver={"dtype": "float64"})
    gpu = _on_cuda(cpu)
    np.testing.assert_allclose(
        gpu.sample(200, random_state=0), cpu.sample(200, random_state=0), atol=1e-6
    )
    rows = data[1][:20]
    np.testing.assert_allclose(gpu.trajectory(rows, 5), cpu.trajectory(rows, 5), atol=1e-6)


def test_the_outlier_detector_on_cuda(data):
    train, test = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = FFJORDOutlierDetector(contamination=0.05, **SMALL).fit(train)
        gpu = FFJORDOutlierDetector(contamination=0.05, device="cuda", **SMALL).fit(train)
    assert set(np.unique(gpu.predict(test))) <= {-1, 1}
    assert abs(gpu.offset_ - cpu.offset_) < 0.5
    moved = _on_cuda(cpu)
    np.testing.assert_allclose(
        moved.decision_function(test), cpu.decision_function(test), atol=1e-3
    )


def test_pickles_and_model_files_of_a_cuda_model(fitted, data, tmp_path):
    gpu = _on_cuda(fitted)
    expected = gpu.score_samples(data[1])
    unpickled = pickle.loads(pickle.dumps(gpu))
    assert all(p.is_cuda for p in unpickled.flow_.parameters())
    np.testing.assert_array_equal(unpickled.score_samples(data[1]), expected)
    path = tmp_path / "model.safetensors"
    gpu.save(path)
    loaded = load_model(path)
    assert all(p.is_cuda for p in loaded.flow_.parameters())
    np.testing.assert_array_equal(loaded.score_samples(data[1]), expected)
