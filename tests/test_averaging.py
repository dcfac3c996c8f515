"""Exponential moving average of the weights (``averaging_decay``)."""

from dataclasses import replace

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
        random_state=0, learning_rate_init=1e-2,
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
    plain = _fit(X)
    assert not np.allclose(plain.score_samples(X[:20]), model.score_samples(X[:20]))


def test_validation_scores_and_keeps_the_averaged_weights():
    from skffjord._flow import EvalConfig, FFJORDFlow, TrainConfig
    from skffjord._training import FitConfig, train_flow, validation_score

    rng = np.random.default_rng(1)
    X = torch.as_tensor(rng.normal(size=(60, 2)) * [1.0, 0.3], dtype=torch.float32)
    w = torch.ones(60)
    evaluation = EvalConfig(atol=1e-6, rtol=1e-6)
    gen = torch.Generator().manual_seed(0)
    flow = FFJORDFlow(
        2, (16, 16), "tanh", 1, 1.0, torch.zeros(2), torch.ones(2), generator=gen
    ).float()
    config = FitConfig(
        batch_size=20, learning_rate_init=3e-2, alpha=0.0, max_iter=6, max_time=None, tol=0.0,
        n_iter_no_change=100, shuffle=True, validation_solver=evaluation, averaging_decay=0.8,
        solver=TrainConfig(method="rk4", options={"step_size": 0.25}),
    )  # fmt: skip

    result = train_flow(
        flow, X[:40], w[:40], X[40:], w[40:], config, rng=np.random.default_rng(0), generator=gen
    )
    restored = validation_score(flow, X[40:], w[40:], evaluation, 1024)
    assert restored == pytest.approx(result.best_validation_score, abs=1e-5)
    assert result.best_validation_score == pytest.approx(
        max(h["valid_score"] for h in result.history), abs=1e-12
    )
    # the kept weights are not those of any optimizer step: a plain run from the same start
    # with the same batches ends elsewhere and validates differently
    gen = torch.Generator().manual_seed(0)
    plain_flow = FFJORDFlow(
        2, (16, 16), "tanh", 1, 1.0, torch.zeros(2), torch.ones(2), generator=gen
    ).float()
    plain = train_flow(
        plain_flow, X[:40], w[:40], X[40:], w[40:], replace(config, averaging_decay=None),
        rng=np.random.default_rng(0), generator=gen,
    )  # fmt: skip
    plain_scores = [h["valid_score"] for h in plain.history]
    averaged_scores = [h["valid_score"] for h in result.history]
    assert not np.allclose(plain_scores, averaged_scores)


def test_averaging_decay_is_validated():
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match="averaging_decay"):
        FFJORDDensity(averaging_decay=1.0).fit(X)
