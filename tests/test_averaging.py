"""Exponential moving average of the weights (``averaging_decay``)."""

import numpy as np
import pytest
import torch

from skffjord import FFJORDDensity
from skffjord._training import WeightAverage


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


def _fit(X, **kw):
    params = dict(
        hidden_layer_sizes=(16, 16), training="flow_matching", max_iter=6, batch_size=32,
        random_state=0, learning_rate_init=1e-2, early_stopping=False,
    )  # fmt: skip
    params.update(kw)
    return FFJORDDensity(**params).fit(X)


def test_fitted_weights_are_the_average_not_the_last_step(monkeypatch):
    import skffjord._training as training

    X = np.random.default_rng(0).normal(size=(200, 2))
    captured = {}
    apply = training.WeightAverage.apply

    def spy(self):
        captured["average"] = [a.clone() for a in self.average]
        captured["last"] = [p.detach().clone() for p in self.params]
        apply(self)

    monkeypatch.setattr(training.WeightAverage, "apply", spy)
    model = _fit(X, averaging_decay=0.9)
    fitted = [p.detach() for p in model.flow_.parameters() if p.requires_grad]
    assert len(fitted) == len(captured["average"])
    assert all(
        torch.allclose(f, a.double()) for f, a in zip(fitted, captured["average"], strict=True)
    )
    assert any(
        not torch.allclose(f, q.double()) for f, q in zip(fitted, captured["last"], strict=True)
    )
    # the same fit without averaging ends on the last step's weights, which differ
    plain = _fit(X, averaging_decay=None)
    assert not np.allclose(plain.score_samples(X[:20]), model.score_samples(X[:20]))


def test_interrupted_fit_without_validation_keeps_the_average(monkeypatch):
    import skffjord._training as training

    X = np.random.default_rng(0).normal(size=(200, 2))
    captured = {}
    calls = {"n": 0}
    loss = training.flow_matching_loss
    update = training.WeightAverage.update

    def interrupting_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return loss(*args, **kwargs)

    def spy(self):
        update(self)
        captured["average"] = [a.clone() for a in self.average]
        captured["last"] = [p.detach().clone() for p in self.params]

    monkeypatch.setattr(training, "flow_matching_loss", interrupting_loss)
    monkeypatch.setattr(training.WeightAverage, "update", spy)
    model = _fit(X, averaging_decay=0.9)
    assert model.stop_reason_ == "interrupted"
    fitted = [p.detach() for p in model.flow_.parameters() if p.requires_grad]
    assert all(
        torch.allclose(f, a.double()) for f, a in zip(fitted, captured["average"], strict=True)
    )
    assert any(
        not torch.allclose(f, q.double()) for f, q in zip(fitted, captured["last"], strict=True)
    )


def _train(averaging_decay, training):
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
    result = train_flow(
        flow, X[:40], w[:40], X[40:], w[40:], config, rng=np.random.default_rng(0), generator=gen
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


def test_averaging_decay_is_validated():
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match="averaging_decay"):
        FFJORDDensity(averaging_decay=1.0).fit(X)
