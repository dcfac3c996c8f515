"""Data-parallel fitting: two processes on the gloo backend, started by the test.

One start of two ranks runs every scenario in turn (starting processes is the slow part);
each rank writes what it saw to a file, and the tests compare the ranks' files.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.stats import multivariate_normal
from sklearn.datasets import make_moons

from skffjord import FFJORDDensity
from skffjord._flow import FFJORDFlow
from skffjord._ode import SolverError

from .conftest import TINY

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
#: The process group's timeout: the longest a rank waits for a peer that died.
GROUP_TIMEOUT_S = 60
#: The longest the test waits for both ranks to finish every scenario.
DEADLINE_S = 240

#: A fit that learns the moons well within a second (flow matching, no solve in training).
ACCURACY = dict(
    TINY,
    training="flow_matching",
    activation="tanh",
    hidden_layer_sizes=(32, 32),
    learning_rate_init=1e-2,
    batch_size=128,
    max_iter=30,
    random_state=0,
)


def _moons(n: int, seed: int) -> np.ndarray:
    return make_moons(n_samples=n, noise=0.08, random_state=seed)[0]


def _failing_on_call(call: int, error: Exception):
    """A ``train_log_prob`` that raises ``error`` on its ``call``-th call."""
    original = FFJORDFlow.train_log_prob
    calls = [0]

    def train_log_prob(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise error
        return original(self, *args, **kwargs)

    return train_log_prob


def _fitted(model: FFJORDDensity) -> dict:
    """What a rank reports of a fit."""
    return {
        "state": {k: v.detach().cpu().clone() for k, v in model.flow_.state_dict().items()},
        "world_size": model.world_size_,
        "history": model.history_,
        "stop_reason": model.stop_reason_,
        "n_iter": model.n_iter_,
        "best_validation_score": model.best_validation_score_,
    }


def _outcome(fit) -> dict:
    """Run ``fit``; its report, or the error it raised."""
    try:
        return fit()
    except Exception as err:  # reported to the parent, which asserts on it
        return {"error": type(err).__name__, "message": str(err)}


def _rank_main(rank: int, port: int, out: str) -> None:
    """One rank: join the group, run every scenario, write the reports."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S),
    )
    report: dict = {}
    X = np.random.default_rng(0).normal(size=(300, 2))

    def tiny() -> dict:
        model = FFJORDDensity(**dict(TINY, max_iter=3, random_state=0)).fit(X)
        if rank == 0:
            model.save(Path(out) / "tiny.skffjord")
        return _fitted(model)

    def accuracy() -> dict:
        model = FFJORDDensity(**ACCURACY).fit(_moons(1200, 1))
        return dict(_fitted(model), held_out=model.score_samples(_moons(1000, 2)))

    def hybrid() -> dict:
        params = dict(TINY, training="hybrid", early_stopping=True, n_iter_no_change=2)
        model = FFJORDDensity(**dict(params, max_iter=8, random_state=None)).fit(X)
        return _fitted(model)

    def different_data() -> dict:
        rows = X + (1e-3 if rank == 1 else 0.0)
        return _fitted(FFJORDDensity(**TINY).fit(rows))

    def failure(error: Exception) -> dict:
        saved = FFJORDFlow.train_log_prob
        if rank == 1:
            FFJORDFlow.train_log_prob = _failing_on_call(3, error)
        try:
            return _fitted(FFJORDDensity(**dict(TINY, max_iter=4, random_state=0)).fit(X))
        finally:
            FFJORDFlow.train_log_prob = saved

    def max_time() -> dict:
        rows = np.random.default_rng(3).normal(size=(3000, 2))
        params = dict(TINY, max_iter=None, max_time=2.0, random_state=0)
        return _fitted(FFJORDDensity(**params).fit(rows))

    def discrete() -> dict:
        rng = np.random.default_rng(4)
        rows = np.column_stack(
            [rng.normal(size=400), rng.integers(0, 5, 400), np.round(rng.normal(size=400), 1)]
        )
        params = dict(TINY, discrete_features="auto", max_iter=2, random_state=0)
        model = FFJORDDensity(**params).fit(rows)
        return dict(
            _fitted(model),
            discrete_features=model.discrete_features_,
            sample=model.sample(50, random_state=0),
        )

    def warm_start() -> dict:
        model = FFJORDDensity(**dict(TINY, max_iter=3, warm_start=True, random_state=0)).fit(X)
        first = _fitted(model)
        model.set_params(max_iter=2)
        return dict(_fitted(model.fit(X)), first=first)

    def streamed() -> dict:
        import skffjord._streamed_rows as streamed_rows

        streamed_rows.STREAMED_FIT_ROWS = 200  # so that 600 rows stream
        rng = np.random.default_rng(5)
        rows = np.column_stack([rng.normal(size=600), rng.integers(0, 4, 600)])
        params = dict(TINY, discrete_features="auto", early_stopping=True, max_iter=3)
        model = FFJORDDensity(**dict(params, random_state=0)).fit(rows)
        return dict(_fitted(model), sample=model.sample(50, random_state=0))

    report["tiny"] = _outcome(tiny)
    report["streamed"] = _outcome(streamed)
    report["max_time"] = _outcome(max_time)
    report["discrete"] = _outcome(discrete)
    report["warm_start"] = _outcome(warm_start)
    report["accuracy"] = _outcome(accuracy)
    report["hybrid"] = _outcome(hybrid)
    report["different_data"] = _outcome(different_data)
    report["solver_error"] = _outcome(lambda: failure(SolverError("injected solver failure")))
    report["crash"] = _outcome(lambda: failure(RuntimeError("injected crash")))
    torch.save(report, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> tuple[list[dict], Path]:
    """Every rank's reports of every scenario, and the folder they wrote to."""
    out = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(
        _rank_main,
        args=(_free_port(), str(out)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "the ranks did not finish in time"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)], out


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_end_with_the_same_model(reports):
    ranks, out = reports
    first, second = (r["tiny"] for r in ranks)
    assert "error" not in first, first
    assert first["world_size"] == second["world_size"] == 2
    assert _same_state(first["state"], second["state"])
    np.testing.assert_equal(first["history"], second["history"])  # NaN equal to NaN
    # the model file keeps the attribute
    assert FFJORDDensity.load(out / "tiny.skffjord").world_size_ == 2


def test_ranks_streaming_their_rows_end_with_the_same_model(reports):
    ranks, _ = reports
    first, second = (r["streamed"] for r in ranks)
    assert "error" not in first, first
    assert first["world_size"] == second["world_size"] == 2
    assert _same_state(first["state"], second["state"])
    np.testing.assert_equal(first["history"], second["history"])
    np.testing.assert_array_equal(first["sample"], second["sample"])


def test_two_ranks_learn_as_well_as_one_process(reports):
    ranks, _ = reports
    shared = ranks[0]["accuracy"]
    assert "error" not in shared, shared
    assert _same_state(shared["state"], ranks[1]["accuracy"]["state"])
    train, held_out = _moons(1200, 1), _moons(1000, 2)
    single = FFJORDDensity(**ACCURACY).fit(train).score_samples(held_out)
    # the model before training: the Gaussian of the training rows
    start = multivariate_normal(train.mean(axis=0), np.cov(train.T, bias=True)).logpdf(held_out)
    gain = single - start
    assert gain.mean() > 10 * gain.std() / np.sqrt(len(gain))  # training clearly helps
    diff = shared["held_out"] - single
    se = diff.std() / np.sqrt(len(diff))
    assert abs(diff.mean()) < max(4 * se, 0.25 * gain.mean()), (diff.mean(), se, gain.mean())


def test_hybrid_early_stopping_agrees_across_ranks(reports):
    ranks, _ = reports
    first, second = (r["hybrid"] for r in ranks)
    assert "error" not in first, first
    phases = {h["phase"] for h in first["history"]}
    assert phases == {"flow_matching", "likelihood"}
    np.testing.assert_equal(first["history"], second["history"])
    assert (first["stop_reason"], first["n_iter"]) == (second["stop_reason"], second["n_iter"])
    assert first["best_validation_score"] == second["best_validation_score"]
    assert _same_state(first["state"], second["state"])


def test_different_data_on_the_ranks_is_an_error(reports):
    ranks, _ = reports
    for r in ranks:
        report = r["different_data"]
        assert report.get("error") == "ValueError", report
        assert "X differs on rank(s) [1]" in report["message"]


def test_a_solver_failure_on_one_rank_stops_every_rank_alike(reports):
    ranks, _ = reports
    first, second = (r["solver_error"] for r in ranks)
    assert "error" not in first, first
    assert first["stop_reason"] == second["stop_reason"] == "solver_failed"
    assert _same_state(first["state"], second["state"])


def test_a_crash_on_one_rank_stops_the_others_with_a_clear_error(reports):
    ranks, _ = reports
    first, second = (r["crash"] for r in ranks)
    assert second == {"error": "RuntimeError", "message": "injected crash"}
    assert first["error"] == "RankFailure", first
    assert "rank 1 of 2" in first["message"] and "injected crash" in first["message"]


def test_max_time_stops_every_rank_on_rank_0s_clock(reports):
    ranks, _ = reports
    first, second = (r["max_time"] for r in ranks)
    assert "error" not in first and "error" not in second, (first, second)
    assert first["stop_reason"] == second["stop_reason"] == "max_time"
    assert first["n_iter"] == second["n_iter"] > 1
    np.testing.assert_equal(first["history"], second["history"])
    assert _same_state(first["state"], second["state"])


def test_discrete_features_agree_across_ranks(reports):
    ranks, _ = reports
    first, second = (r["discrete"] for r in ranks)
    assert "error" not in first and "error" not in second, (first, second)
    np.testing.assert_array_equal(first["discrete_features"], [0.0, 1.0, 0.1])
    np.testing.assert_array_equal(first["discrete_features"], second["discrete_features"])
    assert _same_state(first["state"], second["state"])
    assert first["sample"].shape == (50, 3)
    np.testing.assert_array_equal(first["sample"], second["sample"])


def test_warm_start_agrees_across_ranks(reports):
    ranks, _ = reports
    first, second = (r["warm_start"] for r in ranks)
    assert "error" not in first and "error" not in second, (first, second)
    for a, b in ((first["first"], second["first"]), (first, second)):
        assert a["world_size"] == b["world_size"] == 2
        assert _same_state(a["state"], b["state"])
        np.testing.assert_equal(a["history"], b["history"])
    # the second fit went on from the first
    assert not _same_state(first["first"]["state"], first["state"])


def test_a_plain_fit_runs_on_one_process():
    X = np.random.default_rng(0).normal(size=(100, 2))
    assert FFJORDDensity(**TINY).fit(X).world_size_ == 1
