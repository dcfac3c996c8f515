"""The training loop's per-step machinery: finiteness checks, the last-good checkpoint, and
the optimizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity
from skffjord import _training as training
from skffjord._training import _adam, _all_finite, _Checkpoint


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_one_bad_element_in_any_tensor(bad):
    tensors = [torch.ones(3, 4), torch.zeros(5), torch.full((2,), 3e38)]  # 3e38: near float32 max
    assert _all_finite(tensors)
    for i in range(len(tensors)):
        spoiled = [t.clone() for t in tensors]
        spoiled[i].view(-1)[-1] = bad
        assert not _all_finite(spoiled)
    assert _all_finite([])


def test_checkpoint_restores_the_values_saved_last():
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    checkpoint = _Checkpoint(params)
    with torch.no_grad():
        params[0].add_(1.0)
    checkpoint.save()
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.mul_(-7.0)
    checkpoint.restore()
    for p, s in zip(params, saved, strict=True):
        torch.testing.assert_close(p.detach(), s, rtol=0, atol=0)


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
    original = training.flow_matching_loss
    calls, seen = {"n": 0}, []

    def loss_with_infinite_gradient_on_call_4(flow, u, w, generator):
        calls["n"] += 1
        seen.append([p.detach().clone() for p in flow.parameters()])
        loss = original(flow, u, w, generator)
        return _InfiniteGradient.apply(loss) if calls["n"] == 4 else loss

    monkeypatch.setattr(training, "flow_matching_loss", loss_with_infinite_gradient_on_call_4)
    model = FFJORDDensity(
        hidden_layer_sizes=(8,),
        training="flow_matching",
        standardize="affine",
        n_components=1,
        early_stopping=False,
        averaging_decay=None,
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
    """train_dtype='bfloat16' autocasts the training steps' forward passes (flow matching
    and the likelihood solves) and nothing else; 'float32' autocasts nothing."""
    seen: dict[str, set] = {"steps": set(), "validation": set()}

    def precision():
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None

    def recording(kind, function):
        def wrapped(*args, **kwargs):
            seen[kind].add(precision())
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        training, "flow_matching_loss", recording("steps", training.flow_matching_loss)
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
        train_dtype=train_dtype, standardize="affine",
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
    exact = field.forward_with_trace_and_jvp(t, z, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = field.forward_with_trace_and_jvp(t, z, v)
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


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_models_pickled_before_train_dtype_and_learning_rate_existed_still_work():
    import pickle

    X = np.random.default_rng(1).normal(size=(80, 2))
    model = FFJORDDensity(hidden_layer_sizes=(8,), max_iter=1, random_state=0).fit(X)
    expected = model.score_samples(X)
    del model.__dict__["train_dtype"], model.__dict__["train_dtype_"]
    del model.__dict__["learning_rate"]
    old = pickle.loads(pickle.dumps(model))
    assert old.train_dtype == "auto" and old.train_dtype_ == "float32"
    assert old.learning_rate == "constant"  # the schedule such a model was fitted with
    np.testing.assert_array_equal(old.score_samples(X), expected)
    assert old.fit(X).train_dtype_ in ("float32", "bfloat16")


def _schedule(
    learning_rate="adaptive", training_kind="likelihood", n_iter_no_change=10, max_time=None
):
    from skffjord._flow import TrainConfig

    config = training.FitConfig(
        batch_size=8,
        learning_rate_init=1e-3,
        alpha=0.0,
        max_iter=100,
        max_time=max_time,
        tol=1e-4,
        n_iter_no_change=n_iter_no_change,
        shuffle=True,
        solver=TrainConfig(method="rk4"),
        training=training_kind,
        learning_rate=learning_rate,
    )
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    return training._StepSizeSchedule(optimizer, config), optimizer


def test_adaptive_step_size_drops_after_the_patience_and_at_most_three_times():
    schedule, optimizer = _schedule()  # 100 epochs, untimed: drops from epoch 50 on
    assert not schedule.lowered(training.LR_PATIENCE - 1, 0.0, 60)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    rates = []
    for _ in range(5):
        lowered = schedule.lowered(training.LR_PATIENCE, 0.0, 60)
        rates.append((lowered, optimizer.param_groups[0]["lr"]))
    expected = [1e-3 * training.LR_FACTOR**k for k in (1, 2, 3, 3, 3)]
    assert [r[0] for r in rates] == [True, True, True, False, False]
    np.testing.assert_allclose([r[1] for r in rates], expected, rtol=1e-12)
    # the patience never exceeds the stopping rule's, so a reduction comes before the stop
    short, opt_short = _schedule(n_iter_no_change=2)
    assert short.lowered(2, 0.0, 60) and opt_short.param_groups[0]["lr"] < 1e-3


def test_adaptive_step_size_never_drops_in_the_first_half_of_the_budget():
    # 100 epochs untimed: the epochs count
    schedule, optimizer = _schedule()
    assert not schedule.lowered(50, 1e9, 49)
    assert schedule.lowered(training.LR_PATIENCE, 0.0, 50)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * training.LR_FACTOR)
    # 10 s and 100 epochs: whichever is further along
    timed, optimizer = _schedule(max_time=10.0)
    assert not timed.lowered(50, 4.99, 49)
    assert timed.lowered(training.LR_PATIENCE, 5.0, 1)
    epochs_first, _ = _schedule(max_time=1e6)  # a generous time cap
    assert epochs_first.lowered(training.LR_PATIENCE, 1.0, 50)


def test_adaptive_step_size_drops_once_late_in_a_phase_that_never_stalled():
    schedule, optimizer = _schedule(max_time=10.0)
    assert not schedule.lowered(0, 0.79 * 10.0, 1)
    assert schedule.lowered(0, 0.81 * 10.0, 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * training.LR_FACTOR)
    assert not schedule.lowered(0, 9.9, 1)  # once
    untimed, _ = _schedule()  # late by the epoch count
    assert not untimed.lowered(0, 0.0, 79) and untimed.lowered(0, 0.0, 80)
    # a phase that has already stalled and dropped gets no extra drop for being late
    stalled, optimizer = _schedule(max_time=10.0)
    assert stalled.lowered(training.LR_PATIENCE, 6.0, 1)
    assert not stalled.lowered(0, 9.0, 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * training.LR_FACTOR)


@pytest.mark.parametrize(
    ("learning_rate", "training_kind"),
    [("constant", "likelihood"), ("adaptive", "flow_matching")],
)
def test_step_size_stays_put_when_constant_or_flow_matching(learning_rate, training_kind):
    schedule, optimizer = _schedule(learning_rate, training_kind, max_time=1.0)
    assert not schedule.lowered(50, 100.0, 100)
    assert optimizer.param_groups[0]["lr"] == 1e-3


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("learning_rate", ["adaptive", "constant"])
def test_a_stalled_fit_lowers_the_step_size_from_the_best_weights(monkeypatch, learning_rate):
    import skffjord._estimator as estimator
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
    # the trained weights are kept over the starting model's (that guard is tested in
    # test_starting_model.py): the loads counted are the schedule's
    monkeypatch.setattr(estimator, "significant_gain", lambda *args: True)
    X = np.random.default_rng(0).normal(size=(100, 2))
    model = FFJORDDensity(
        hidden_layer_sizes=(8,),
        training="likelihood",
        standardize="affine",
        early_stopping=True,
        learning_rate=learning_rate,
        max_iter=9,
        batch_size=30,
        random_state=0,
    )
    model.fit(X)
    rates = [h["learning_rate"] for h in model.history_]
    drop = 2 + training.LR_PATIENCE  # the epoch after which the step size drops
    if learning_rate == "constant":
        assert rates == [1e-3] * 9
        assert len(loaded) == 1  # only the final restore of the best weights
        return
    np.testing.assert_allclose(rates, [1e-3] * drop + [1e-3 * training.LR_FACTOR] * (9 - drop))
    assert len(loaded) == 2  # the restore at the drop, and the final one
    for name, value in loaded[0].items():
        torch.testing.assert_close(value, validated[1][name], rtol=0, atol=0)
    # training went on after the restore: later weights differ from the restored ones
    assert any(not torch.equal(validated[-1][k], v) for k, v in loaded[0].items())
