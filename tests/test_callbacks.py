"""The training loop's callbacks on their own: finiteness checks, the last-good checkpoint,
the time budget, early stopping, the adaptive step size and the solver-gap guard (the
weight average: test_averaging.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from skffjord import _callbacks as callbacks
from skffjord._callbacks import (
    Checkpoint,
    EarlyStopping,
    SolverGapGuard,
    StepSizeSchedule,
    TimeBudget,
    all_finite,
    refine_solver,
)
from skffjord._fit_config import FitConfig
from skffjord._flow import EvalConfig, TrainConfig


def _config(**kw):
    settings = dict(
        batch_size=8,
        learning_rate_init=1e-3,
        alpha=0.0,
        max_iter=100,
        max_time=None,
        tol=1e-4,
        n_iter_no_change=10,
        shuffle=True,
        solver=TrainConfig(method="rk4"),
    )
    settings.update(kw)
    return FitConfig(**settings)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("count", torch.zeros(()))


# -- finiteness and the last good weights ------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_one_bad_element_in_any_tensor(bad):
    tensors = [torch.ones(3, 4), torch.zeros(5), torch.full((2,), 3e38)]  # 3e38: near float32 max
    assert all_finite(tensors)
    for i in range(len(tensors)):
        spoiled = [t.clone() for t in tensors]
        spoiled[i].view(-1)[-1] = bad
        assert not all_finite(spoiled)
    assert all_finite([])


def test_checkpoint_restores_the_values_saved_last_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2, generator=gen)) for _ in range(2)]
    checkpoint = Checkpoint(params)
    with torch.no_grad():
        params[0].add_(1.0)
        params[1].mul_(1 + 1e-7)  # a change in the last bits
    checkpoint.save()
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.mul_(-7.0).add_(0.1)
    checkpoint.restore()
    for p, s in zip(params, saved, strict=True):
        assert torch.equal(p.detach(), s)
    with torch.no_grad():  # a copy, not an alias: changing the weights leaves it alone
        params[0].zero_()
    checkpoint.restore()
    assert torch.equal(params[0].detach(), saved[0])


def test_checkpoint_rolls_back_only_non_finite_weights():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    checkpoint = Checkpoint([p])
    with torch.no_grad():
        p.add_(0.5)
    checkpoint.restore_if_not_finite()  # finite: the new values stay
    assert torch.equal(p.detach(), torch.tensor([1.5, 2.5]))
    with torch.no_grad():
        p[1] = float("nan")
    checkpoint.restore_if_not_finite()
    assert torch.equal(p.detach(), torch.tensor([1.0, 2.0]))


# -- the time budget -----------------------------------------------------------------------


class _ManualClock:
    def __init__(self, now=100.0):
        self.now = now
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return self.now


def test_time_budget_measures_the_injected_clock_from_construction():
    clock = _ManualClock()
    budget = TimeBudget(2.0, clock)
    clock.now += 1.5
    assert budget.elapsed() == 1.5
    assert not budget.exceeded()
    clock.now += 0.5  # exactly the budget: not exceeded yet
    assert not budget.exceeded()
    clock.now += 1e-9
    assert budget.exceeded()


def test_time_budget_without_a_limit_never_runs_out_nor_reads_the_clock():
    clock = _ManualClock()
    budget = TimeBudget(None, clock)
    clock.now += 1e9
    reads = clock.reads
    assert not budget.exceeded()
    assert clock.reads == reads
    assert budget.elapsed() == 1e9


# -- early stopping ------------------------------------------------------------------------


def test_early_stopping_stops_after_n_iter_no_change_epochs_without_a_gain_beyond_tol():
    stopping = EarlyStopping(_Linear(), n_iter_no_change=3, tol=0.1)
    verdicts = []
    # +1.0 improves; +0.05 and +0.1 are within tol; +0.2 improves again; then flat
    for score in [-5.0, -4.0, -3.95, -3.85, -3.65, -3.65, -3.7, -3.6]:
        stopping.observe_score(score)
        verdicts.append((stopping.no_improve, stopping.should_stop))
    assert verdicts == [
        (0, False),
        (0, False),
        (1, False),
        (2, False),
        (0, False),
        (1, False),
        (2, False),
        (3, True),
    ]
    assert stopping.best_score == -3.6  # a gain within tol still makes the best weights


def test_early_stopping_keeps_the_best_weights_and_their_gap():
    flow = _Linear()
    stopping = EarlyStopping(flow, n_iter_no_change=5, tol=0.0)
    for k, score in enumerate([-3.0, -1.0, -2.0]):
        with torch.no_grad():
            flow.weight.fill_(float(k))
            flow.count.fill_(10.0 * k)
        stopping.observe_score(score, solver_gap=0.1 * k)
    assert stopping.has_best and stopping.best_score == -1.0 and stopping.best_gap == 0.1
    stopping.restore_best()
    assert torch.equal(flow.weight.detach(), torch.ones(3))
    assert float(flow.count) == 10.0  # buffers too


def test_early_stopping_with_a_starting_score_competes_with_the_starting_weights():
    flow = _Linear()
    stopping = EarlyStopping(flow, n_iter_no_change=2, tol=0.0)
    stopping.start_from(-1.0)
    assert stopping.has_best and stopping.no_improve == 0
    with torch.no_grad():
        flow.weight.fill_(7.0)
    stopping.observe_score(-2.0)
    stopping.observe_score(-math.inf)  # a failed validation: no improvement
    assert stopping.should_stop
    stopping.restore_best()
    assert torch.equal(flow.weight.detach(), torch.zeros(3))


def test_early_stopping_is_not_scored_until_a_finite_score():
    stopping = EarlyStopping(_Linear(), n_iter_no_change=5, tol=0.0)
    assert not stopping.has_best
    stopping.observe_score(-math.inf)
    assert not stopping.has_best and stopping.no_improve == 1


def test_early_stopping_on_the_training_loss():
    stopping = EarlyStopping(_Linear(), n_iter_no_change=2, tol=0.1)
    for loss, expected in [(3.0, 0), (2.95, 1), (2.5, 0), (2.45, 1), (2.6, 2)]:
        stopping.observe_loss(loss)
        assert stopping.no_improve == expected
    assert stopping.best_loss == 2.45 and stopping.should_stop
    stopping.restart()
    assert stopping.no_improve == 0 and not stopping.should_stop


# -- the adaptive step size ----------------------------------------------------------------


def _schedule(
    learning_rate="adaptive", training_kind="likelihood", n_iter_no_change=10, max_time=None
):
    config = _config(
        max_time=max_time,
        n_iter_no_change=n_iter_no_change,
        training=training_kind,
        learning_rate=learning_rate,
    )
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    return StepSizeSchedule(optimizer, config), optimizer


def test_step_size_drops_after_the_patience_and_not_before():
    schedule, optimizer = _schedule()  # 100 epochs, untimed: drops from epoch 50 on
    for no_improve in range(callbacks.LR_PATIENCE):
        assert not schedule.lowered(no_improve, 0.0, 60)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert schedule.lowered(callbacks.LR_PATIENCE, 0.0, 60)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * callbacks.LR_FACTOR)


def test_adaptive_step_size_drops_after_the_patience_and_at_most_three_times():
    schedule, optimizer = _schedule()
    assert not schedule.lowered(callbacks.LR_PATIENCE - 1, 0.0, 60)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    rates = []
    for _ in range(5):
        lowered = schedule.lowered(callbacks.LR_PATIENCE, 0.0, 60)
        rates.append((lowered, optimizer.param_groups[0]["lr"]))
    expected = [1e-3 * callbacks.LR_FACTOR**k for k in (1, 2, 3, 3, 3)]
    assert [r[0] for r in rates] == [True, True, True, False, False]
    np.testing.assert_allclose([r[1] for r in rates], expected, rtol=1e-12)
    # the patience never exceeds the stopping rule's, so a reduction comes before the stop
    short, opt_short = _schedule(n_iter_no_change=2)
    assert short.lowered(2, 0.0, 60) and opt_short.param_groups[0]["lr"] < 1e-3


def test_adaptive_step_size_never_drops_in_the_first_half_of_the_budget():
    # 100 epochs untimed: the epochs count
    schedule, optimizer = _schedule()
    assert not schedule.lowered(50, 1e9, 49)
    assert schedule.lowered(callbacks.LR_PATIENCE, 0.0, 50)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * callbacks.LR_FACTOR)
    # 10 s and 100 epochs: whichever is further along
    timed, optimizer = _schedule(max_time=10.0)
    assert not timed.lowered(50, 4.99, 49)
    assert timed.lowered(callbacks.LR_PATIENCE, 5.0, 1)
    epochs_first, _ = _schedule(max_time=1e6)  # a generous time cap
    assert epochs_first.lowered(callbacks.LR_PATIENCE, 1.0, 50)


def test_adaptive_step_size_drops_once_late_in_a_phase_that_never_stalled():
    schedule, optimizer = _schedule(max_time=10.0)
    assert not schedule.lowered(0, 0.79 * 10.0, 1)
    assert schedule.lowered(0, 0.81 * 10.0, 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * callbacks.LR_FACTOR)
    assert not schedule.lowered(0, 9.9, 1)  # once
    untimed, _ = _schedule()  # late by the epoch count
    assert not untimed.lowered(0, 0.0, 79) and untimed.lowered(0, 0.0, 80)
    # a phase that has already stalled and dropped gets no extra drop for being late
    stalled, optimizer = _schedule(max_time=10.0)
    assert stalled.lowered(callbacks.LR_PATIENCE, 6.0, 1)
    assert not stalled.lowered(0, 9.0, 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * callbacks.LR_FACTOR)


@pytest.mark.parametrize(
    ("learning_rate", "training_kind"),
    [("constant", "likelihood"), ("adaptive", "flow_matching")],
)
def test_step_size_stays_put_when_constant_or_flow_matching(learning_rate, training_kind):
    schedule, optimizer = _schedule(learning_rate, training_kind, max_time=1.0)
    assert not schedule.lowered(50, 100.0, 100)
    assert optimizer.param_groups[0]["lr"] == 1e-3


# -- the solver-gap guard ------------------------------------------------------------------


def test_solver_is_refined_one_step_per_gap_above_the_threshold_up_to_the_cap():
    config = _config(
        solver=TrainConfig(method="rk4", fixed_steps=4), refine_solver_gap=1.0, max_fixed_steps=6
    )
    steps = []
    for gap in [0.5, 1.0, 1.5, math.nan, 1.5, 1.5, 1.5]:
        config = refine_solver(config, gap)
        steps.append(config.solver.fixed_steps)
    assert steps == [4, 4, 5, 5, 6, 6, 6]
    unchanged = replace(config, solver=replace(config.solver, fixed_steps=4))
    assert refine_solver(replace(unchanged, refine_solver_gap=None), 9.0).solver.fixed_steps == 4
    user_grid = replace(unchanged.solver, options={"step_size": 0.25})  # the user's grid
    assert refine_solver(replace(unchanged, solver=user_grid), 9.0).solver == user_grid


@pytest.mark.parametrize(
    ("training_kind", "validation_solver", "active"),
    [
        ("likelihood", EvalConfig(), True),
        ("likelihood", None, False),
        ("flow_matching", EvalConfig(), False),
    ],
)
def test_solver_gap_guard_watches_likelihood_fits_with_an_evaluation_solver(
    training_kind, validation_solver, active
):
    config = _config(
        solver=TrainConfig(method="rk4", fixed_steps=4),
        refine_solver_gap=1.0,
        training=training_kind,
        validation_solver=validation_solver,
    )
    guard = SolverGapGuard(config)
    assert guard.active == active and math.isnan(guard.last_gap)
    refined = guard.observe(config, 2.0)
    assert guard.last_gap == 2.0 and refined.solver.fixed_steps == 5
    assert guard.observe(refined, math.nan) is refined and math.isnan(guard.last_gap)
