"""The training loop: its optimizer, its steps (non-finite losses and gradients, mixed
precision), its time budget on an injected clock, the step-size schedule in a fit, and its
validation scores, early stopping and solver gap (the callbacks on their own:
test_callbacks.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity
from skffjord import _callbacks as callbacks
from skffjord import _optimizer_steps as optimizer_steps
from skffjord import _training as training
from skffjord._optimizer_steps import _adam


def test_fused_adam_takes_the_same_steps_as_the_plain_one():
    torch.manual_seed(0)
    start = [torch.randn(8, 3), torch.randn(5)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    results = []
    for make in (_adam, lambda ps, lr, wd: torch.optim.Adam(ps, lr=lr, weight_decay=wd)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make(params, 1e-2, 1e-3)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            optimizer.step()
        results.append([p.detach() for p in params])
    for fused, plain in zip(*results, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-7)
    assert not torch.equal(results[0][0], start[0])


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


def test_an_infinite_gradient_stops_the_fit_and_keeps_the_last_good_weights(monkeypatch):
    X = np.random.default_rng(0).normal(size=(120, 2))
    original = optimizer_steps.flow_matching_loss
    calls, seen = {"n": 0}, []

    def loss_with_infinite_gradient_on_call_4(flow, u, w, generator):
        calls["n"] += 1
        seen.append([p.detach().clone() for p in flow.parameters()])
        loss = original(flow, u, w, generator)
        return _InfiniteGradient.apply(loss) if calls["n"] == 4 else loss

    monkeypatch.setattr(
        optimizer_steps, "flow_matching_loss", loss_with_infinite_gradient_on_call_4
    )
    model = FFJORDDensity(
        hidden_layer_sizes=(8,),
        training="flow_matching",
        standardize="affine",
        n_components=1,
        early_stopping=False,
        batch_size=40,
        max_iter=5,
        random_state=0,
    )
    with pytest.warns(ConvergenceWarning, match="gradients became NaN or infinite"):
        model.fit(X)
    assert model.stop_reason_ == "diverged"
    assert model.n_iter_ == 1  # 3 batches per epoch: call 4 is in the second
    # the weights kept are those the 4th loss was computed with (finite, and saved at the
    # end of the first epoch), not the 3rd step's starting point
    for kept, before in zip(model.flow_.parameters(), seen[3], strict=True):
        torch.testing.assert_close(kept.detach(), before.to(kept.dtype), rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(seen[2], seen[3], strict=True))
    assert np.isfinite(model.score_samples(X)).all()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    ("train_dtype", "expected"), [("bfloat16", torch.bfloat16), ("float32", None)]
)
def test_training_steps_run_under_autocast_and_validation_does_not(
    monkeypatch, train_dtype, expected
):
    """solver={'dtype': 'bfloat16'} autocasts the training steps' forward passes (flow
    matching and the likelihood solves) and nothing else; 'float32' autocasts nothing."""
    seen: dict[str, set] = {"steps": set(), "validation": set()}

    def precision():
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None

    def recording(kind, function):
        def wrapped(*args, **kwargs):
            seen[kind].add(precision())
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        optimizer_steps,
        "flow_matching_loss",
        recording("steps", optimizer_steps.flow_matching_loss),
    )
    monkeypatch.setattr(
        training.FFJORDFlow,
        "train_log_prob",
        recording("steps", training.FFJORDFlow.train_log_prob),
    )
    monkeypatch.setattr(
        training, "guarded_validation", recording("validation", training.guarded_validation)
    )
    monkeypatch.setattr(training, "solver_gap", recording("validation", training.solver_gap))
    monkeypatch.setattr(
        training,
        "flow_matching_validation_loss",
        recording("validation", training.flow_matching_validation_loss),
    )
    X = np.random.default_rng(0).normal(size=(300, 3))
    model = FFJORDDensity(
        hidden_layer_sizes=(16, 16), max_iter=4, early_stopping=True, random_state=0,
        solver={"dtype": train_dtype}, standardize="affine",
    )  # fmt: skip
    model.fit(X)
    assert model.train_dtype_ == train_dtype
    # train_log_prob also scores the solver gap's training-solver pass, without autocast
    assert expected in seen["steps"]
    assert seen["validation"] == {None}
    if expected is None:
        assert seen["steps"] == {None}


def test_field_under_autocast_returns_its_input_precision():
    """Under bfloat16 autocast the field's products run in bfloat16 but f, the trace and the
    Jacobian product come back in z's precision, within bfloat16 rounding of float32."""
    from skffjord._dynamics import VectorField

    gen = torch.Generator().manual_seed(0)
    field = VectorField(5, (64, 64), generator=gen)
    with torch.no_grad():
        field.layers[-1].linear.weight.normal_(0, 0.3, generator=gen)
    z, t = torch.randn(32, 5, generator=gen), torch.rand(32, 1, generator=gen)
    v = torch.randn(32, 5, generator=gen)
    exact = field.forward_with_trace(t, z, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = field.forward_with_trace(t, z, v)
        plain = field(t, z)
    for a, b in zip((*mixed, plain), (*exact, exact[0]), strict=True):
        assert a.dtype == torch.float32
        err = float((a - b).detach().abs().max() / b.detach().abs().max())
        assert 1e-5 < err < 3e-2  # bfloat16's rounding (8 bits), not float32's


def test_train_dtype_auto_follows_the_hardware(monkeypatch):
    from skffjord import _utils

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    wide, narrow = (256, 256), (128, 128)
    monkeypatch.setattr(_utils, "has_native_bfloat16", lambda: True)
    assert _utils.resolve_train_dtype("auto", cpu, wide) == "bfloat16"
    assert _utils.resolve_train_dtype("auto", cpu, (32, 192)) == "bfloat16"
    assert _utils.resolve_train_dtype("auto", cpu, narrow) == "float32"  # overhead-bound
    assert _utils.resolve_train_dtype("auto", cpu, ()) == "float32"
    assert _utils.resolve_train_dtype("auto", cuda, wide) == "float32"
    assert _utils.resolve_train_dtype("float32", cpu, wide) == "float32"
    monkeypatch.setattr(_utils, "has_native_bfloat16", lambda: False)
    assert _utils.resolve_train_dtype("auto", cpu, wide) == "float32"
    assert _utils.resolve_train_dtype("bfloat16", cpu, narrow) == "bfloat16"


def test_auto_precision_of_a_fit(monkeypatch):
    """'auto' on a CPU with bfloat16 instructions: bfloat16 for a wide field, float32 for a
    narrow one, as ``train_dtype_`` reports."""
    from skffjord import _utils

    monkeypatch.setattr(_utils, "has_native_bfloat16", lambda: True)
    X = np.random.default_rng(0).normal(size=(64, 2))
    for hidden, expected in (((192,), "bfloat16"), ((16, 16), "float32")):
        model = FFJORDDensity(hidden_layer_sizes=hidden, max_iter=1, random_state=0)
        with pytest.warns(ConvergenceWarning):
            model.fit(X)
        assert model.train_dtype_ == expected


class _TickingClock:
    """A fake clock: ``tick`` seconds pass between two readings."""

    def __init__(self, tick):
        self.tick = tick
        self.readings = 0

    def __call__(self):
        self.readings += 1
        return self.readings * self.tick


def _train(clock, n_rows=40, validate=False, **fit_kwargs):
    """``train_flow`` on a small flow (flow matching by default: no ODE is solved), 4 steps
    per epoch; ``validate``: with 20 validation rows."""
    from skffjord._flow import EvalConfig, FFJORDFlow, TrainConfig

    rng = np.random.default_rng(1)
    X = torch.as_tensor(rng.normal(size=(n_rows + 20, 2)), dtype=torch.float32)
    w = torch.ones(n_rows + 20)
    gen = torch.Generator().manual_seed(0)
    flow = FFJORDFlow(2, (8,), "tanh", 1, 1.0, torch.zeros(2), torch.ones(2), generator=gen)
    settings = dict(
        batch_size=n_rows // 4, learning_rate_init=1e-2, alpha=0.0, max_iter=1000, max_time=1.0,
        tol=0.0, n_iter_no_change=10**6, shuffle=True, training="flow_matching",
        solver=TrainConfig(method="rk4", options={"step_size": 0.5}),
        validation_solver=EvalConfig(atol=1e-5, rtol=1e-5),
    )  # fmt: skip
    settings.update(fit_kwargs)
    config = training.FitConfig(**settings)
    start = {k: v.clone() for k, v in flow.state_dict().items()}
    u_val, w_val = (X[n_rows:], w[n_rows:]) if validate else (None, None)
    result = training.train_flow(
        flow, X[:n_rows], w[:n_rows], u_val, w_val, config,
        rng=np.random.default_rng(0), generator=gen, clock=clock,
    )  # fmt: skip
    return flow, start, result, (X[n_rows:], w[n_rows:], config)


def test_max_time_stops_at_the_first_reading_of_the_clock_past_the_budget():
    budget, tick = 0.295, 0.01
    _, _, result, _ = _train(_TickingClock(tick), max_time=budget)
    assert result.stop_reason == "max_time"
    steps = [h["n_steps"] for h in result.history]
    # an epoch takes 4 steps; the budget runs out in the last one, which ends there
    assert steps[:-1] == [4] * (len(steps) - 1) and 1 <= steps[-1] <= 4
    # one reading after every step, and a few per epoch: 20 to 29 steps in the budget
    assert 20 <= sum(steps) <= 29
    times = [h["time"] for h in result.history]
    assert np.all(np.diff(times) > 0)
    assert all(t <= budget + tick for t in times[:-1])
    # the last record follows the first reading past the budget
    assert budget < times[-1] <= budget + 3 * tick


def test_history_times_are_read_from_the_injected_clock():
    stopped = _TickingClock(0.0)  # time does not pass: the budget never runs out
    _, _, result, _ = _train(stopped, max_time=1e-9, max_iter=3)
    assert result.stop_reason == "max_iter" and result.n_iter == 3
    assert [h["time"] for h in result.history] == [0.0, 0.0, 0.0]
    unlimited = _TickingClock(1.0)  # no budget: an hour per reading does not matter
    _, _, result, _ = _train(unlimited, max_time=None, max_iter=3)
    assert result.stop_reason == "max_iter"
    assert [h["n_steps"] for h in result.history] == [4, 4, 4]


def test_a_budget_spent_on_the_initial_score_leaves_the_starting_weights():
    # the first reading starts the clock, the second (after scoring the starting weights)
    # is already past the budget: no epoch runs
    flow, start, result, (u_val, w_val, config) = _train(
        _TickingClock(2.0), validate=True, max_time=1.0, training="likelihood",
        score_initial=True,
    )  # fmt: skip
    assert result.n_iter == 0 and result.stop_reason == "max_time" and not result.history
    assert all(torch.equal(v, start[k]) for k, v in flow.state_dict().items())
    initial = training.guarded_validation(flow, u_val, w_val, config)
    assert result.best_validation_score == initial


@pytest.mark.parametrize("learning_rate", ["adaptive", "constant"])
def test_a_stalled_fit_lowers_the_step_size_from_the_best_weights(monkeypatch, learning_rate):
    from skffjord._flow import FFJORDFlow

    # validation improves for two epochs and then stalls: with 'adaptive' the step size
    # drops after epoch 2 + LR_PATIENCE, and training goes on from epoch 2's weights
    scores = iter([-5.0, -4.0] + [-4.0] * 20)
    validated, loaded = [], []

    def fake_validation(flow, *args, **kwargs):
        validated.append({k: v.detach().clone() for k, v in flow.state_dict().items()})
        return next(scores)

    original_load = FFJORDFlow.load_state_dict

    def recording_load(self, state, *args, **kwargs):
        loaded.append({k: v.detach().clone() for k, v in state.items()})
        return original_load(self, state, *args, **kwargs)

    monkeypatch.setattr(training, "guarded_validation", fake_validation)
    monkeypatch.setattr(FFJORDFlow, "load_state_dict", recording_load)
    *_, result, (_, _, config) = _train(
        None, validate=True, training="likelihood", learning_rate=learning_rate, max_iter=9,
        max_time=None,
    )  # fmt: skip
    rates = [h["learning_rate"] for h in result.history]
    lr = config.learning_rate_init
    drop = 2 + callbacks.LR_PATIENCE  # the epoch after which the step size drops
    if learning_rate == "constant":
        assert rates == [lr] * 9
        assert len(loaded) == 1  # only the final restore of the best weights
        return
    np.testing.assert_allclose(rates, [lr] * drop + [lr * callbacks.LR_FACTOR] * (9 - drop))
    assert len(loaded) == 2  # the restore at the drop, and the final one
    for name, value in loaded[0].items():
        torch.testing.assert_close(value, validated[1][name], rtol=0, atol=0)
    # training went on after the restore: later weights differ from the restored ones
    assert any(not torch.equal(validated[-1][k], v) for k, v in loaded[0].items())


# -- validation, early stopping and the solver gap of a likelihood fit ----------------------


def _likelihood_setup(rng, **fit_kwargs):
    """A small float32 flow, 60 rows of 2 features, and the settings of a likelihood fit
    (a one-step Euler training solve unless ``solver`` is given)."""
    from skffjord._flow import FFJORDFlow, TrainConfig

    X = torch.as_tensor(rng.normal(size=(60, 2)), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    flow = FFJORDFlow(
        2, (32, 32), "tanh", 1, 1.0, torch.zeros(2), torch.ones(2), generator=gen
    ).float()
    settings = dict(
        batch_size=20,
        learning_rate_init=3e-2,
        alpha=0.0,
        max_iter=40,
        max_time=None,
        tol=0.0,
        n_iter_no_change=5,
        shuffle=True,
        solver=TrainConfig(method="euler", options={"step_size": 1.0}),
    )
    settings.update(fit_kwargs)
    return X, gen, flow, training.FitConfig(**settings)


def test_early_stopping_restores_best_validation_weights():
    from skffjord._flow import TrainConfig

    solver = TrainConfig(method="rk4", options={"step_size": 0.25})
    X, gen, flow, cfg = _likelihood_setup(np.random.default_rng(0), solver=solver)
    w = torch.ones(60)  # (validated through `solver`: no validation_solver is given)
    result = training.train_flow(
        flow, X[:40], w[:40], X[40:], w[40:], cfg, rng=np.random.default_rng(0), generator=gen
    )
    scores = [h["valid_score"] for h in result.history]
    assert result.stop_reason == "converged" and result.n_iter < 40  # overfits, then stops
    assert result.best_validation_score == max(scores)
    assert int(np.argmax(scores)) < len(scores) - 1  # the best epoch is not the last one
    restored = training.validation_score(flow, X[40:], w[40:], solver, 1024)
    assert restored == pytest.approx(result.best_validation_score, abs=1e-6)


def test_validation_goes_through_the_evaluation_solver():
    from skffjord._flow import EvalConfig

    evaluation = EvalConfig(atol=1e-6, rtol=1e-6)
    X, gen, flow, cfg = _likelihood_setup(np.random.default_rng(0), validation_solver=evaluation)
    w = torch.ones(60)
    result = training.train_flow(
        flow, X[:40], w[:40], X[40:], w[40:], cfg, rng=np.random.default_rng(0), generator=gen
    )
    restored = training.validation_score(flow, X[40:], w[40:], evaluation, 1024)
    assert restored == pytest.approx(result.best_validation_score, abs=1e-6)
    # the one-step Euler training solver gives a different number for the same weights
    coarse = training.validation_score(flow, X[40:], w[40:], cfg.solver, 1024)
    assert abs(coarse - restored) > 1e-3


def test_score_initial_keeps_the_starting_weights_when_training_only_hurts():
    from skffjord._flow import EvalConfig

    evaluation = EvalConfig(atol=1e-6, rtol=1e-6)
    # an absurd learning rate: every epoch is worse than the starting weights
    X, gen, flow, cfg = _likelihood_setup(
        np.random.default_rng(0),
        validation_solver=evaluation,
        score_initial=True,
        learning_rate_init=3.0,
    )
    start = {k: v.clone() for k, v in flow.state_dict().items()}
    initial = training.validation_score(flow, X[40:], torch.ones(20), evaluation, 1024)
    w = torch.ones(60)
    result = training.train_flow(
        flow, X[:40], w[:40], X[40:], w[40:], cfg, rng=np.random.default_rng(0), generator=gen
    )
    scores = [h["valid_score"] for h in result.history]
    assert max(scores) < initial  # the premise: training made it worse
    assert result.best_validation_score == pytest.approx(initial, abs=1e-6)
    assert all(torch.equal(v, start[k]) for k, v in flow.state_dict().items())
    assert result.n_iter == cfg.n_iter_no_change  # no epoch beat the starting weights


def test_solver_gap_is_small_for_a_fine_solver_and_large_for_a_coarse_one():
    import math

    from skffjord._flow import EvalConfig, FFJORDFlow, TrainConfig

    gen = torch.Generator().manual_seed(0)
    flow = FFJORDFlow(
        2, (32, 32), "tanh", 1, 1.0, torch.zeros(2), torch.ones(2), generator=gen
    ).double()
    with torch.no_grad():  # a strongly non-linear field (the output layer starts at zero)
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    u = torch.as_tensor(np.random.default_rng(0).normal(size=(300, 2)))

    def gap(solver):
        cfg = training.FitConfig(
            batch_size=10, learning_rate_init=1e-3, alpha=0.0, max_iter=1, max_time=None,
            tol=0.0, n_iter_no_change=1, shuffle=False, solver=solver,
            validation_solver=EvalConfig(atol=1e-8, rtol=1e-8),
        )  # fmt: skip
        return training.solver_gap(flow, u, torch.ones(u.shape[0], dtype=u.dtype), cfg, n_rows=64)

    fine = gap(TrainConfig(method="rk4", options={"step_size": 0.01}))
    assert math.isfinite(fine) and abs(fine) < 1e-4
    assert abs(gap(TrainConfig(method="euler", options={"step_size": 1.0}))) > 0.1
