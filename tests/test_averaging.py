"""Exponential moving average of the weights (``averaging_decay``)."""

import numpy as np
import pytest
import torch

from skffjord._callbacks import WeightAverage


def test_average_follows_the_warmed_up_recursion():
    p = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage([p], decay=0.9)
    expected = torch.zeros(3)
    for k in range(1, 30):
        with torch.no_grad():
            p.fill_(float(k))
        average.update()
        decay = min(0.9, (1 + k) / (10 + k))
        expected = decay * expected + (1 - decay) * k
    assert torch.allclose(average.average[0], expected, atol=1e-5)
    # late in the run the decay is the one asked for: the average lags the last value
    assert expected[0] < 27


def test_applied_swaps_in_the_average_and_restores_the_trained_weights_on_error():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    average = WeightAverage([p], decay=0.5)
    with torch.no_grad():
        p.copy_(torch.tensor([5.0, 6.0]))
    average.update()  # warm-up decay 2/11
    averaged = average.average[0].clone()
    assert not torch.equal(averaged, p.detach())
    with pytest.raises(RuntimeError), average.applied():
        assert torch.equal(p.detach(), averaged)
        raise RuntimeError("inside")
    assert torch.equal(p.detach(), torch.tensor([5.0, 6.0]))
    average.apply()
    assert torch.equal(p.detach(), averaged)


def test_applied_weights_are_the_moving_average_computed_by_hand():
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(4, 3, generator=gen)),
        torch.nn.Parameter(torch.randn(2, generator=gen)),
    ]
    by_hand = [p.detach().double().clone() for p in params]
    average = WeightAverage(params, decay=0.8)
    for k in range(1, 16):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=gen))
        average.update()
        decay = min(0.8, (1 + k) / (10 + k))
        by_hand = [
            decay * a + (1 - decay) * p.detach().double()
            for a, p in zip(by_hand, params, strict=True)
        ]
    trained = [p.detach().clone() for p in params]
    with average.applied():
        for p, expected in zip(params, by_hand, strict=True):
            torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=1e-6)
    for p, t in zip(params, trained, strict=True):
        assert torch.equal(p.detach(), t)  # the trained weights are back, bit for bit


def test_only_flow_matching_fits_with_a_decay_are_averaged():
    from skffjord._fit_config import FitConfig
    from skffjord._flow import TrainConfig

    params = [torch.nn.Parameter(torch.zeros(2))]

    def config(training, decay):
        return FitConfig(
            batch_size=8, learning_rate_init=1e-3, alpha=0.0, max_iter=1, max_time=None,
            tol=0.0, n_iter_no_change=1, shuffle=True, solver=TrainConfig(method="rk4"),
            training=training, averaging_decay=decay,
        )  # fmt: skip

    average = WeightAverage.from_config(params, config("flow_matching", 0.9))
    assert isinstance(average, WeightAverage) and average.decay == 0.9
    assert WeightAverage.from_config(params, config("flow_matching", None)) is None
    assert WeightAverage.from_config(params, config("likelihood", 0.9)) is None


def test_a_non_finite_average_is_not_applied():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    average = WeightAverage([p], decay=0.5)
    average.average[0][0] = float("nan")
    average.apply_if_finite()
    assert torch.equal(p.detach(), torch.tensor([1.0, 2.0]))
    average.average[0][0] = 3.0
    average.apply_if_finite()
    assert torch.equal(p.detach(), torch.tensor([3.0, 2.0]))


def test_fitted_weights_are_the_average_not_the_last_step(monkeypatch):
    captured = {}
    apply = WeightAverage.apply

    def spy(self):
        captured["average"] = [a.clone() for a in self.average]
        captured["last"] = [p.detach().clone() for p in self.params]
        apply(self)

    monkeypatch.setattr(WeightAverage, "apply", spy)
    flow, result, _ = _train(0.9, "flow_matching", validate=False)
    assert result.stop_reason == "max_iter"
    fitted = [p.detach() for p in flow.parameters() if p.requires_grad]
    assert len(fitted) == len(captured["average"])
    assert all(torch.equal(f, a) for f, a in zip(fitted, captured["average"], strict=True))
    assert any(not torch.equal(f, q) for f, q in zip(fitted, captured["last"], strict=True))
    # the same fit without averaging ends on the last step's weights, which differ
    plain_flow, _, _ = _train(None, "flow_matching", validate=False)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(flow.parameters(), plain_flow.parameters(), strict=True)
    )


def test_a_flow_matching_fit_of_the_estimator_ends_on_its_average(monkeypatch):
    """``FFJORDDensity`` averages the weights of flow matching with a decay of 0.999, and
    a fit without validation ends on the average."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from skffjord import FFJORDDensity

    made = []
    init = WeightAverage.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(WeightAverage, "__init__", recording)
    model = FFJORDDensity(
        training="flow_matching", hidden_layer_sizes=(8,), standardize="affine",
        n_components=1, discrete_features=None, early_stopping=False, max_iter=3,
        batch_size=50, random_state=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.random.default_rng(0).normal(size=(200, 2)))
    assert len(made) == 1 and made[0].decay == 0.999
    fitted = [p.detach() for p in model.flow_.blocks.parameters()]
    assert len(fitted) == len(made[0].average)
    assert all(torch.equal(f, a) for f, a in zip(fitted, made[0].average, strict=True))


def test_interrupted_fit_without_validation_keeps_the_average(monkeypatch):
    import skffjord._optimizer_steps as optimizer_steps

    captured = {}
    calls = {"n": 0}
    loss = optimizer_steps.flow_matching_loss
    update = WeightAverage.update

    def interrupting_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the first step of the third epoch
            raise KeyboardInterrupt
        return loss(*args, **kwargs)

    def spy(self):
        update(self)
        captured["average"] = [a.clone() for a in self.average]
        captured["last"] = [p.detach().clone() for p in self.params]

    monkeypatch.setattr(optimizer_steps, "flow_matching_loss", interrupting_loss)
    monkeypatch.setattr(WeightAverage, "update", spy)
    flow, result, _ = _train(0.9, "flow_matching", validate=False)
    assert result.stop_reason == "interrupted" and result.n_iter == 2
    fitted = [p.detach() for p in flow.parameters() if p.requires_grad]
    assert all(torch.equal(f, a) for f, a in zip(fitted, captured["average"], strict=True))
    assert any(not torch.equal(f, q) for f, q in zip(fitted, captured["last"], strict=True))


def _train(averaging_decay, training, validate=True):
    """``train_flow`` for 6 epochs of 2 steps; ``validate``: with 20 validation rows."""
    from skffjord._flow import EvalConfig, FFJORDFlow, TrainConfig
    from skffjord._training import FitConfig, train_flow

    rng = np.random.default_rng(1)
    X = torch.as_tensor(rng.normal(size=(60, 2)) * [1.0, 0.3], dtype=torch.float32)
    w = torch.ones(60)
    gen = torch.Generator().manual_seed(0)
    flow = FFJORDFlow(
        2, (16, 16), "tanh", 1, 1.0, torch.zeros(2), torch.ones(2), generator=gen
    ).float()
    config = FitConfig(
        batch_size=20, learning_rate_init=3e-2, alpha=0.0, max_iter=6, max_time=None, tol=0.0,
        n_iter_no_change=100, shuffle=True, averaging_decay=averaging_decay, training=training,
        validation_solver=EvalConfig(atol=1e-6, rtol=1e-6),
        solver=TrainConfig(method="rk4", options={"step_size": 0.25}),
    )  # fmt: skip
    u_val, w_val = (X[40:], w[40:]) if validate else (None, None)
    result = train_flow(
        flow, X[:40], w[:40], u_val, w_val, config, rng=np.random.default_rng(0), generator=gen
    )
    return flow, result, (X[40:], w[40:], config)


def test_flow_matching_validates_and_keeps_the_averaged_weights():
    from skffjord._training import flow_matching_validation_loss

    flow, result, (u_val, w_val, config) = _train(0.8, "flow_matching")
    restored = -flow_matching_validation_loss(flow, u_val, w_val, config)
    assert restored == pytest.approx(result.best_validation_score, abs=1e-6)
    assert result.best_validation_score == max(h["valid_score"] for h in result.history)
    # the same run without the average (same batches, same draws) validates differently
    _, plain, _ = _train(None, "flow_matching")
    assert not np.allclose(
        [h["valid_score"] for h in plain.history], [h["valid_score"] for h in result.history]
    )


def test_likelihood_training_is_not_averaged():
    flow, result, _ = _train(0.8, "likelihood")
    plain_flow, plain, _ = _train(None, "likelihood")
    assert [h["valid_score"] for h in result.history] == [h["valid_score"] for h in plain.history]
    for a, b in zip(flow.parameters(), plain_flow.parameters(), strict=True):
        assert torch.equal(a, b)
