"""The learning-rate schedule: its formula, and that fits apply it step by step."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from skffjord import FFJORDDensity
from skffjord._training import LearningRateSchedule

from .conftest import TINY


def test_cosine_factor_over_epochs():
    schedule = LearningRateSchedule(max_iter=10, max_time=None, start=time.perf_counter())
    assert schedule.factor(0) == pytest.approx(1.0)
    assert schedule.factor(5) == pytest.approx(0.5)
    assert schedule.factor(2.5) == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)))
    assert schedule.factor(10) == pytest.approx(0.0, abs=1e-12)
    assert schedule.factor(12) == pytest.approx(0.0, abs=1e-12)  # clipped past the budget


def test_cosine_factor_follows_the_larger_share_of_the_budget():
    # 1 of 1000 epochs done, but 3 of 4 seconds gone: the time share decides
    schedule = LearningRateSchedule(max_iter=1000, max_time=4.0, start=time.perf_counter() - 3.0)
    assert schedule.factor(1) == pytest.approx(0.5 * (1 + np.cos(0.75 * np.pi)), abs=0.01)
    # 900 of 1000 epochs done within the first seconds: the epoch share decides
    schedule = LearningRateSchedule(max_iter=1000, max_time=1e6, start=time.perf_counter())
    assert schedule.factor(900) == pytest.approx(0.5 * (1 + np.cos(0.9 * np.pi)), abs=1e-6)


def _recorded_rates(monkeypatch, **params):
    rates: list[float] = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    X = np.random.default_rng(0).normal(size=(120, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FFJORDDensity(**{**TINY, "random_state": 0, "batch_size": 20, **params}).fit(X)
    return np.array(rates)


def test_constant_rate_is_left_alone(monkeypatch):
    rates = _recorded_rates(monkeypatch, max_iter=3, learning_rate_init=2e-3)
    assert len(rates) == 3 * 6
    np.testing.assert_array_equal(rates, 2e-3)


@pytest.mark.parametrize("training", ["likelihood", "flow_matching", "hybrid"])
def test_cosine_rate_decays_to_zero_step_by_step(monkeypatch, training):
    rates = _recorded_rates(
        monkeypatch, max_iter=8, learning_rate_init=2e-3, learning_rate="cosine", training=training
    )
    assert len(rates) == 8 * 6  # hybrid: 6 + 2 epochs, one schedule across both phases
    expected = 2e-3 * 0.5 * (1 + np.cos(np.pi * np.arange(len(rates)) / len(rates)))
    np.testing.assert_allclose(rates, expected, rtol=1e-9, atol=1e-12)
