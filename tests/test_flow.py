"""The flow and its solvers: analytic log-determinants, gradients, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from torch import nn

from skffjord._flow import EvalConfig, FFJORDFlow, TrainConfig
from skffjord._rowwise_ode import integrate_rowwise


class LinearField(nn.Module):
    """f(z, t) = A z, with the VectorField interface."""

    bottleneck_index = None

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(torch.as_tensor(A, dtype=torch.float64))

    def forward(self, t, z):
        return z @ self.A.T

    def forward_with_bottleneck(self, t, z):
        return self.forward(t, z), None


def _flow(d, hidden=(16, 16), n_blocks=1, T=1.0, seed=0, loc=None, scale=None):
    loc = torch.zeros(d) if loc is None else torch.as_tensor(loc)
    scale = torch.ones(d) if scale is None else torch.as_tensor(scale)
    gen = torch.Generator().manual_seed(seed)
    return FFJORDFlow(
        d, hidden, "tanh", n_blocks, T, loc.double(), scale.double(), generator=gen
    ).double()


def _randomize_last_layers(flow, seed=1, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in flow.blocks:
            lin = block.field.layers[-1].linear
            lin.weight.uniform_(-scale, scale, generator=gen)
            lin.bias.uniform_(-scale, scale, generator=gen)


A = np.array([[-0.3, 0.8, 0.0], [-0.5, 0.2, 0.1], [0.2, 0.0, -0.4]])


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("T", [0.5, 1.7])
def test_linear_dynamics_exact_logdet(method, T):
    """For f(z) = A z the flow is z(T) = expm(A T) z(0) and the log-det is T tr(A)."""
    flow = _flow(3, T=T)
    flow.blocks[0].field = LinearField(A)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(20, 3)))
    cfg = EvalConfig(
        method=method,
        atol=1e-10,
        rtol=1e-10,
        options={"step_size": T / 200} if method == "rk4" else None,
    )
    z, div, _ = flow.blocks[0].forward_exact(x, cfg)
    np.testing.assert_allclose(div.numpy(), T * np.trace(A), rtol=1e-8)
    np.testing.assert_allclose(
        z.numpy(), x.numpy() @ scipy.linalg.expm(A * T).T, rtol=1e-7, atol=1e-9
    )
    # the training path (torchdiffeq, exact trace) agrees too
    train_cfg = TrainConfig(
        method="dopri5",
        atol=1e-10,
        rtol=1e-10,
        trace_estimator="exact",
        kinetic_energy_reg=0.0,
        jacobian_reg=0.0,
    )
    logp, _, _ = flow.train_log_prob(x, train_cfg, None)
    expected = scipy.stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(
        x.numpy() @ scipy.linalg.expm(A * T).T
    ) + T * np.trace(A)
    np.testing.assert_allclose(logp.detach().numpy(), expected, rtol=1e-7)


def test_linear_dynamics_hutchinson_mean():
    """With one probe per row, the log-det estimate averages to T tr(A)."""
    flow = _flow(3)
    flow.blocks[0].field = LinearField(A)
    x = torch.zeros(20000, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(
        method="rk4",
        options={"step_size": 0.25},
        trace_estimator="hutchinson",
        hutchinson_noise="gaussian",
    )
    _, div, _, _ = flow.blocks[0].forward_train(x, cfg, gen)
    div = div.detach().numpy()
    assert abs(div.mean() - np.trace(A)) < 3 * div.std() / np.sqrt(div.size)
    assert div.std() > 0.1  # really a random estimate


def test_zero_field_is_standard_normal_plus_standardization():
    loc, scale = np.array([1.0, -3.0]), np.array([2.0, 0.5])
    flow = _flow(2, loc=loc, scale=scale)  # last layer zero-initialised: f = 0
    x = np.random.default_rng(1).normal(size=(50, 2)) * 3
    logp = flow.log_prob(torch.as_tensor(x), EvalConfig()).numpy()
    expected = scipy.stats.norm(loc, scale).logpdf(x).sum(1)
    np.testing.assert_allclose(logp, expected, rtol=0, atol=1e-12)


def test_adjoint_and_backprop_gradients_agree():
    flow = _flow(3, hidden=(12, 12), n_blocks=2)
    _randomize_last_layers(flow)
    x = torch.as_tensor(np.random.default_rng(2).normal(size=(16, 3)))
    grads = {}
    for adjoint in (False, True):
        cfg = TrainConfig(
            method="dopri5",
            atol=1e-9,
            rtol=1e-9,
            adjoint=adjoint,
            trace_estimator="hutchinson",
            kinetic_energy_reg=0.1,
            jacobian_reg=0.1,
        )
        flow.zero_grad()
        logp, reg, _ = flow.train_log_prob(x, cfg, torch.Generator().manual_seed(5))
        (-logp.mean() + reg.mean()).backward()
        grads[adjoint] = torch.cat([p.grad.flatten() for p in flow.parameters()])
    assert grads[False].abs().max() > 1e-3
    np.testing.assert_allclose(grads[True].numpy(), grads[False].numpy(), rtol=1e-5, atol=1e-7)


def test_every_parameter_gets_a_gradient():
    flow = _flow(2, hidden=(8, 8))
    x = torch.as_tensor(np.random.default_rng(3).normal(size=(10, 2)))
    logp, _, _ = flow.train_log_prob(x, TrainConfig(method="rk4"), torch.Generator())
    (-logp.mean()).backward()
    # the zero-initialised flow still gets gradients on its last layer
    last = flow.blocks[0].field.layers[-1]
    assert last.linear.weight.grad.abs().sum() > 0
    assert last.hyper_bias.weight.grad.abs().sum() > 0


def test_rowwise_solver_matches_analytic_and_is_row_independent():
    M = torch.as_tensor(A)
    y0 = torch.as_tensor(np.random.default_rng(4).normal(size=(40, 3)) * [1, 10, 0.1])

    def func(t, y):
        return y @ M.T * (1 + t)  # time-dependent linear ODE

    y1, nfe = integrate_rowwise(func, y0, 0.0, 1.3, atol=1e-10, rtol=1e-10)
    # y(t) = expm(A (t + t^2/2)) y0
    expected = y0.numpy() @ scipy.linalg.expm(A * (1.3 + 1.3**2 / 2)).T
    np.testing.assert_allclose(y1.numpy(), expected, rtol=1e-8, atol=1e-10)
    assert nfe > 10
    # each row alone gives the same answer as in the batch
    for i in (0, 17, 39):
        yi, _ = integrate_rowwise(func, y0[i : i + 1], 0.0, 1.3, atol=1e-10, rtol=1e-10)
        np.testing.assert_allclose(yi.numpy()[0], y1.numpy()[i], rtol=1e-13, atol=1e-15)
    # backwards integration undoes the forward one
    back, _ = integrate_rowwise(func, y1, 1.3, 0.0, atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(back.numpy(), y0.numpy(), rtol=1e-8, atol=1e-9)
    # fifth order: 10^5 times tighter tolerances cost about 10 times the steps (a method
    # of order 1 to 4, or a wrong coefficient in the tableau, would need 10^5 to 10^1.25
    # times as many)
    coarse = {}
    _, nfe_coarse = integrate_rowwise(func, y0, 0.0, 1.3, atol=1e-5, rtol=1e-5, stats=coarse)
    assert 4 < nfe / nfe_coarse < 12
    assert coarse["rejected"] <= coarse["attempted"]
    assert coarse["row_evaluations"] >= 40 * nfe_coarse / 2  # rows drop out as they finish
    with pytest.raises(ValueError, match="Unknown per-row method"):
        integrate_rowwise(func, y0, 0.0, 1.0, atol=1e-6, rtol=1e-6, method="rk45")


def test_log_prob_does_not_depend_on_batch_mates():
    flow = _flow(3, hidden=(16, 16))
    _randomize_last_layers(flow, scale=1.0)
    x = torch.as_tensor(np.random.default_rng(5).normal(size=(30, 3)) * 2)
    cfg = EvalConfig(atol=1e-6, rtol=1e-6)
    full = flow.log_prob(x, cfg).numpy()
    halves = np.concatenate([flow.log_prob(x[:7], cfg).numpy(), flow.log_prob(x[7:], cfg).numpy()])
    single = np.array([flow.log_prob(x[i : i + 1], cfg).item() for i in range(30)])
    np.testing.assert_allclose(halves, full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(single, full, rtol=1e-12, atol=1e-12)


def test_to_data_inverts_to_latent():
    flow = _flow(3, hidden=(16, 16), n_blocks=2, loc=[1.0, 2.0, 3.0], scale=[0.5, 2.0, 1.0])
    _randomize_last_layers(flow, scale=1.0)
    z = torch.as_tensor(np.random.default_rng(6).normal(size=(100, 3)))
    cfg = EvalConfig(atol=1e-8, rtol=1e-8)
    x = flow.to_data(z, cfg)
    assert (x - flow.unstandardize(z)).abs().max() > 0.05  # the flow really moves points
    np.testing.assert_allclose(flow.to_latent(x, cfg).numpy(), z.numpy(), atol=1e-6)


def test_jacobian_penalty_at_a_share_of_rows_is_unbiased(monkeypatch):
    """The Jacobian penalty taken at a random quarter of the rows, weighted up by 4, has
    the mean of the penalty at every row (the probe's draws averaged out), zero at the
    rows left out, and the log-density of the full solve."""
    import skffjord._cnf_block as cnf_block

    flow = _flow(3, hidden=(16, 16))
    _randomize_last_layers(flow, scale=1.0)
    x = torch.as_tensor(np.random.default_rng(8).normal(size=(64, 3)))
    cfg = TrainConfig(
        method="rk4", trace_estimator="exact", kinetic_energy_reg=0.0, jacobian_reg=1.0
    )
    block = flow.blocks[0]

    def penalties(share, seed):
        monkeypatch.setattr(cnf_block, "JACOBIAN_PENALTY_SHARE", share)
        with torch.no_grad():
            _, div, reg, dyn = block.forward_train(x, cfg, torch.Generator().manual_seed(seed))
        return div.numpy(), reg.numpy(), dyn

    div_full, _, dyn_full = penalties(1.0, 0)
    assert dyn_full.probe_rows is None and dyn_full.probe.shape == (64, 3)
    div_share, reg_share, dyn = penalties(0.25, 0)
    assert dyn.probe.shape == (16, 3) and dyn.probe_rows.unique().numel() == 16
    np.testing.assert_allclose(div_share, div_full, rtol=1e-12)
    left_out = np.setdiff1d(np.arange(64), dyn.probe_rows.numpy())
    assert np.all(reg_share[left_out] == 0) and np.all(reg_share[dyn.probe_rows.numpy()] > 0)
    full = np.mean([penalties(1.0, s)[1].mean() for s in range(100)])
    share = np.array([penalties(0.25, s)[1].mean() for s in range(100)])
    assert abs(share.mean() - full) < 3 * share.std() / np.sqrt(share.size)
    assert share.std() > 0.01 * full  # really a random subset


def test_regulariser_states_are_left_out_of_error_control():
    """Adding the penalty states must not change the adaptive solver's steps."""
    flow = _flow(3, hidden=(16, 16))
    _randomize_last_layers(flow, scale=1.0)
    x = torch.as_tensor(np.random.default_rng(7).normal(size=(64, 3)) * 3)
    nfes = []
    for reg in (0.0, 1e-12):
        cfg = TrainConfig(
            method="dopri5",
            atol=1e-6,
            rtol=1e-6,
            kinetic_energy_reg=reg,
            jacobian_reg=reg,
            trace_estimator="exact",
        )
        logp, _, dyn = flow.train_log_prob(x, cfg, None)
        nfes.append(dyn[0].nfe)
    assert nfes[0] == nfes[1] > 8
