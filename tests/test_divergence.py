"""Trace estimators: exact trace, Hutchinson's unbiasedness, the bottleneck probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skffjord._divergence import (
    bottleneck_hutchinson_trace,
    exact_trace,
    field_and_exact_trace,
    hutchinson_trace,
    sample_probe,
)
from skffjord._dynamics import VectorField


def _random_field(d, hidden, seed=0):
    gen = torch.Generator().manual_seed(seed)
    field = VectorField(d, hidden, "tanh", generator=gen).double()
    # give the zero-initialised last layer random weights so the Jacobian is not zero
    last = field.layers[-1].linear
    with torch.no_grad():
        last.weight.uniform_(-1, 1, generator=gen)
        last.bias.uniform_(-1, 1, generator=gen)
    return field


def _jacobian_traces(field, t, z):
    traces = []
    for row in z:
        jac = torch.autograd.functional.jacobian(lambda x: field(t, x[None])[0], row)
        traces.append(torch.trace(jac))
    return torch.stack(traces)


def test_exact_trace_matches_autograd_jacobian():
    field = _random_field(5, (16, 16))
    z = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z.requires_grad_(True)
    t = torch.tensor(0.3, dtype=torch.float64)
    f = field(t, z)
    np.testing.assert_allclose(
        exact_trace(f, z, create_graph=False).detach().numpy(),
        _jacobian_traces(field, t, z.detach()).numpy(),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("hidden", [(32, 32), (32, 2, 32)])
def test_hutchinson_is_unbiased(kind, hidden):
    """Mean of many probes matches the exact trace within 3 standard errors."""
    d, n_draws = 6, 4000
    field = _random_field(d, hidden)
    gen = torch.Generator().manual_seed(2)
    z0 = torch.randn(3, d, dtype=torch.float64, generator=gen)
    t = torch.tensor(0.5, dtype=torch.float64)
    z = z0.repeat(n_draws, 1).requires_grad_(True)  # each row its own probe
    f, a = field.forward_with_bottleneck(t, z)
    exact = exact_trace(f, z, create_graph=False).detach()[:3]
    if a is None:
        probe = sample_probe(
            (z.shape[0], d), kind=kind, generator=gen, dtype=z.dtype, device=z.device
        )
        est, _ = hutchinson_trace(f, z, probe, create_graph=False)
    else:
        probe = sample_probe(
            (z.shape[0], a.shape[1]), kind=kind, generator=gen, dtype=z.dtype, device=z.device
        )
        est = bottleneck_hutchinson_trace(f, a, z, probe, create_graph=False)
    est = est.detach().reshape(n_draws, 3)
    mean, se = est.mean(0), est.std(0) / np.sqrt(n_draws)
    assert torch.all(se > 0)
    assert torch.all((mean - exact).abs() < 3 * se), (mean, exact, se)


def test_bottleneck_probe_has_lower_variance():
    """On a d=16 network with a 2-unit bottleneck the k x k probe varies less (not a
    theorem for every network, but true of this one by a wide margin)."""
    d, n_draws = 16, 3000
    field = _random_field(d, (64, 2, 64), seed=3)
    assert field.bottleneck_index == 1
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(1, d, dtype=torch.float64, generator=gen).repeat(n_draws, 1)
    z.requires_grad_(True)
    t = torch.tensor(0.2, dtype=torch.float64)
    f, a = field.forward_with_bottleneck(t, z)
    exact = exact_trace(f, z, create_graph=False)[0].item()
    plain, _ = hutchinson_trace(
        f,
        z,
        sample_probe((n_draws, d), kind="gaussian", generator=gen, dtype=z.dtype, device=z.device),
        create_graph=False,
    )
    small = bottleneck_hutchinson_trace(
        f,
        a,
        z,
        sample_probe((n_draws, 2), kind="gaussian", generator=gen, dtype=z.dtype, device=z.device),
        create_graph=False,
    )
    # both unbiased ...
    assert abs(plain.mean().item() - exact) < 3 * plain.std().item() / np.sqrt(n_draws)
    assert abs(small.mean().item() - exact) < 3 * small.std().item() / np.sqrt(n_draws)
    # ... and the bottleneck one clearly less variable
    assert small.var().item() < 0.5 * plain.var().item(), (small.var(), plain.var())


def test_rademacher_probe_values_and_moments():
    gen = torch.Generator().manual_seed(0)
    p = sample_probe(
        (20000, 3),
        kind="rademacher",
        generator=gen,
        dtype=torch.float64,
        device=torch.device("cpu"),
    )
    assert set(p.unique().tolist()) == {-1.0, 1.0}
    cov = (p.T @ p) / p.shape[0]
    np.testing.assert_allclose(cov.numpy(), np.eye(3), atol=0.03)
    with pytest.raises(ValueError, match="probe kind"):
        sample_probe(
            (2, 2), kind="uniform", generator=gen, dtype=torch.float64, device=torch.device("cpu")
        )


def _fully_random_field(d, hidden, activation, seed):
    """A float64 field with every weight and time shift random."""
    gen = torch.Generator().manual_seed(seed)
    field = VectorField(d, hidden, activation, generator=gen).double()
    with torch.no_grad():
        for layer in field.layers:
            layer.linear.weight.uniform_(-1, 1, generator=gen)
            layer.hyper_bias.weight.uniform_(-1, 1, generator=gen)
    return field, gen


@pytest.mark.parametrize("hidden", [(), (7,), (9, 5), (3, 12)])
@pytest.mark.parametrize("activation", ["softplus", "tanh", "elu", "swish"])
def test_closed_form_trace_matches_autograd(hidden, activation):
    """The closed-form trace equals the trace of the autograd Jacobian, per-row times too."""
    d = 4
    field, gen = _fully_random_field(d, hidden, activation, seed=11)
    z = torch.randn(6, d, dtype=torch.float64, generator=gen) * 2
    t = torch.rand(6, 1, dtype=torch.float64, generator=gen)
    f, trace = field.forward_with_trace(t, z)
    np.testing.assert_allclose(f.detach().numpy(), field(t, z).detach().numpy(), rtol=1e-14)
    expected = []
    for i in range(6):
        jac = torch.autograd.functional.jacobian(
            lambda x, i=i: field(t[i : i + 1], x[None])[0], z[i]
        )
        expected.append(torch.trace(jac).item())
    np.testing.assert_allclose(trace.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_closed_form_trace_is_differentiable_and_refuses_deep_fields():
    gen = torch.Generator().manual_seed(2)
    field = VectorField(3, (8, 8), "softplus", generator=gen).double()
    with torch.no_grad():
        field.layers[-1].linear.weight.uniform_(-1, 1, generator=gen)
    z = torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_(True)
    t = torch.tensor(0.3, dtype=torch.float64)
    _, trace = field.forward_with_trace(t, z)
    f = field(t, z)
    reference = exact_trace(f, z, create_graph=True)
    g1 = torch.autograd.grad(trace.sum(), [z, *field.parameters()], allow_unused=True)
    g2 = torch.autograd.grad(reference.sum(), [z, *field.parameters()], allow_unused=True)
    for a, b in zip(g1, g2, strict=True):
        if a is None:  # the trace does not depend on the output biases
            assert b is None or not b.any()
            continue
        np.testing.assert_allclose(
            a.numpy(), (0 if b is None else b.numpy()), rtol=1e-10, atol=1e-12
        )
    deep = VectorField(3, (8, 8, 8), "softplus", generator=gen)
    assert not deep.has_closed_form_trace
    with pytest.raises(ValueError, match="at most two hidden layers"):
        deep.forward_with_trace(t, z.float())


@pytest.mark.parametrize("hidden", [(), (7,), (9, 5)])
def test_closed_form_jvp_at_a_subset_of_rows(hidden):
    """With ``rows``, the product is J v at those rows only, equal to the full product's
    rows there, and the field and trace are those of every row."""
    d = 4
    field, gen = _fully_random_field(d, hidden, "softplus", seed=6)
    z = torch.randn(9, d, dtype=torch.float64, generator=gen)
    t = torch.rand(9, 1, dtype=torch.float64, generator=gen)
    v = torch.randn(9, d, dtype=torch.float64, generator=gen)
    rows = torch.tensor([7, 2, 4])
    f, trace, jv = field.forward_with_trace(t, z, v)
    f_sub, trace_sub, jv_sub = field.forward_with_trace(t, z, v[rows], rows)
    assert jv_sub.shape == (3, d)
    np.testing.assert_allclose(jv_sub.detach().numpy(), jv[rows].detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(f_sub.detach().numpy(), f.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(trace_sub.detach().numpy(), trace.detach().numpy(), rtol=1e-14)
    assert not np.allclose(jv[rows].detach().numpy(), jv[:3].detach().numpy())


@pytest.mark.parametrize("hidden", [(), (7,), (9, 5)])
@pytest.mark.parametrize("activation", ["softplus", "tanh"])
def test_closed_form_jvp_matches_the_autograd_jacobian(hidden, activation):
    """``forward_with_trace`` with ``v`` gives J v per row (time per row too), the same field
    and trace, and the gradients of ``|J v|^2`` that double backprop of a VJP gives."""
    d = 4
    field, gen = _fully_random_field(d, hidden, activation, seed=5)
    z = torch.randn(6, d, dtype=torch.float64, generator=gen).requires_grad_(True)
    t = torch.rand(6, 1, dtype=torch.float64, generator=gen)
    v = torch.randn(6, d, dtype=torch.float64, generator=gen)
    f, trace, jv = field.forward_with_trace(t, z, v)
    f_ref, trace_ref = field.forward_with_trace(t, z)
    np.testing.assert_allclose(f.detach().numpy(), f_ref.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(trace.detach().numpy(), trace_ref.detach().numpy(), rtol=1e-14)
    for i in range(6):
        jac = torch.autograd.functional.jacobian(
            lambda x, i=i: field(t[i : i + 1], x[None])[0], z[i].detach()
        )
        np.testing.assert_allclose(jv[i].detach().numpy(), (jac @ v[i]).numpy(), rtol=1e-11)
    # over the basis vectors |J e_k|^2 and |e_k^T J|^2 both sum to |J|_F^2
    eye = torch.eye(d, dtype=z.dtype)
    f2 = field(t, z)
    with torch.no_grad():
        frob_jvp = sum(
            field.forward_with_trace(t, z, eye[k].expand(6, d))[2].pow(2).sum() for k in range(d)
        )
    frob_vjp = sum(
        torch.autograd.grad(f2, z, eye[k].expand(6, d), retain_graph=True)[0].pow(2).sum()
        for k in range(d)
    )
    assert float(frob_jvp) == pytest.approx(float(frob_vjp), rel=1e-10)
    # gradients of the penalty |J v|^2 equal those through autograd's own JVP
    params = list(field.parameters())
    g_closed = torch.autograd.grad(jv.pow(2).sum(), params, allow_unused=True)
    reference = sum(
        torch.autograd.functional.jvp(
            lambda x, i=i: field(t[i : i + 1], x[None])[0], z[i].detach(), v[i],
            create_graph=True,
        )[1].pow(2).sum()
        for i in range(6)
    )  # fmt: skip
    g_reference = torch.autograd.grad(reference, params, allow_unused=True)
    for a, b in zip(g_closed, g_reference, strict=True):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
            continue
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("activation", ["softplus", "tanh"])
def test_workspace_scoring_path_matches_and_reuses_its_buffers(activation):
    """``forward_with_trace_into`` gives ``forward_with_trace``'s field and trace (per-row
    times, large pre-activations past softplus's threshold), reuses its buffers while the
    row count shrinks, and reallocates when it grows."""
    d = 5
    field, gen = _fully_random_field(d, (9, 6), activation, seed=3)
    z = torch.randn(40, d, dtype=torch.float64, generator=gen) * 8
    t = torch.rand(40, 1, dtype=torch.float64, generator=gen)
    workspace: dict = {}
    pointers = None
    for n in (40, 33, 7, 1):
        f, trace = field.forward_with_trace_into(t[:n], z[:n], workspace)
        f_ref, trace_ref = field.forward_with_trace(t[:n], z[:n])
        np.testing.assert_allclose(f.numpy(), f_ref.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            trace.numpy(), trace_ref.detach().numpy(), rtol=1e-12, atol=1e-12
        )
        now = {k: v.data_ptr() for k, v in workspace.items()}
        assert pointers is None or now == pointers
        pointers = now
    # one time for all rows (a scalar) is broadcast, not a one-row result
    f, trace = field.forward_with_trace_into(torch.tensor(0.4, dtype=z.dtype), z[:3], workspace)
    f_ref, trace_ref = field.forward_with_trace(torch.tensor(0.4, dtype=z.dtype), z[:3])
    assert f.shape == (3, d) and trace.shape == (3,)
    np.testing.assert_allclose(trace.numpy(), trace_ref.detach().numpy(), rtol=1e-12)
    field.forward_with_trace_into(torch.cat([t, t]), torch.cat([z, z]), workspace)
    assert workspace["act0"].shape[0] == 80


def test_workspace_scoring_path_refuses_other_fields():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3)
    others = [((8, 8), "elu"), ((8, 8), "swish"), ((8,), "tanh"), ((8,) * 3, "tanh")]
    for hidden, activation in others:
        field = VectorField(3, hidden, activation, generator=gen)
        assert not field.has_fast_scoring_path
        with pytest.raises(ValueError, match="two hidden layers, softplus or tanh"):
            field.forward_with_trace_into(torch.tensor(0.0), z, {})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scoring_softplus_and_slope_match_float64_everywhere(dtype):
    """The scoring path's ``softplus(x) = x - log(sigmoid(x))`` is within a few roundings of
    ``max(|x|, 1)`` of float64's softplus, its slope is float64's sigmoid, and both stay
    finite far past the floor (where the log of an underflowed sigmoid would be -inf)."""
    from skffjord._dynamics import _softplus_and_slope_

    x64 = torch.cat(
        [
            torch.linspace(-1000, 1000, 20001, dtype=torch.float64),
            torch.tensor([-1e30, -104.0, -88.0, -80.0, 1e30], dtype=torch.float64),
        ]
    )
    pre = x64.to(dtype)
    act, slope = _softplus_and_slope_(pre.clone(), torch.empty_like(pre), torch.empty_like(pre))
    assert torch.isfinite(act).all() and torch.isfinite(slope).all()
    x = pre.double()  # the input as rounded to dtype
    eps = torch.finfo(dtype).eps
    bound = 4 * eps * x.abs().clamp_min(1)
    exact = torch.logaddexp(x, torch.zeros_like(x))  # softplus without a threshold
    assert ((act.double() - exact).abs() <= bound).all()
    assert ((slope.double() - torch.sigmoid(x)).abs() <= 4 * eps * torch.sigmoid(x) + 1e-30).all()
    # the library's own float32 softplus is no closer than that bound
    if dtype == torch.float32:
        assert ((torch.nn.functional.softplus(pre).double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("activation", ["softplus", "tanh"])
@pytest.mark.parametrize("per_row_time", [False, True], ids=["fixed-time", "per-row-times"])
def test_fused_kernel_closed_form_and_autograd_trace_agree(activation, per_row_time):
    """In float64 the three implementations of the exact trace give one field and trace:
    the fused scoring kernel, the closed form and autograd's ``d`` vector-Jacobian products,
    for one time for all rows and for a time per row."""
    d, n = 5, 30
    field, gen = _fully_random_field(d, (11, 7), activation, seed=13)
    z = torch.randn(n, d, dtype=torch.float64, generator=gen) * 3
    if per_row_time:
        t = torch.rand(n, 1, dtype=torch.float64, generator=gen)
    else:
        t = torch.tensor(0.37, dtype=torch.float64)
    f_fused, trace_fused = field.forward_with_trace_into(t, z, {})
    f_closed, trace_closed = field.forward_with_trace(t, z)
    z_leaf = z.clone().requires_grad_(True)
    f_auto = field(t, z_leaf)
    trace_auto = exact_trace(f_auto, z_leaf, create_graph=False)
    tight = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f_fused.numpy(), f_closed.detach().numpy(), **tight)
    np.testing.assert_allclose(trace_fused.numpy(), trace_closed.detach().numpy(), **tight)
    np.testing.assert_allclose(f_closed.detach().numpy(), f_auto.detach().numpy(), **tight)
    np.testing.assert_allclose(trace_closed.detach().numpy(), trace_auto.detach().numpy(), **tight)


def test_dispatcher_picks_the_fused_kernel_the_closed_form_or_autograd(monkeypatch):
    """``field_and_exact_trace`` uses the fused kernel only for scoring (no graph, no
    vectors, a workspace), the closed form whenever the network allows it and autograd for
    deeper networks; every route gives the same trace, and only training keeps a graph."""
    calls = []
    for name in ("forward_with_trace_into", "forward_with_trace"):
        method = getattr(VectorField, name)
        monkeypatch.setattr(
            VectorField,
            name,
            lambda self, *a, _m=method, _n=name: calls.append(_n) or _m(self, *a),
        )
    d = 4
    field, gen = _fully_random_field(d, (9, 6), "softplus", seed=21)
    z = torch.randn(8, d, dtype=torch.float64, generator=gen)
    t = torch.rand(8, 1, dtype=torch.float64, generator=gen)
    v = torch.randn(8, d, dtype=torch.float64, generator=gen)

    def route(*args, **kwargs):
        calls.clear()
        out = field_and_exact_trace(field, t, *args, **kwargs)
        return calls[0] if calls else "autograd", out

    scoring, (f, trace, product) = route(z, create_graph=False, workspace={})
    assert scoring == "forward_with_trace_into" and product is None
    no_workspace, (_, trace_closed, _) = route(z, create_graph=False)
    assert no_workspace == "forward_with_trace"
    np.testing.assert_allclose(trace.numpy(), trace_closed.numpy(), rtol=1e-12)
    with_vectors, (_, _, jv) = route(z, v, create_graph=False, workspace={})
    assert with_vectors == "forward_with_trace" and not jv.requires_grad
    training, (f, trace, jv) = route(z.requires_grad_(True), v, create_graph=True)
    assert training == "forward_with_trace" and trace.requires_grad and jv.requires_grad

    deep, gen = _fully_random_field(d, (6, 6, 6), "softplus", seed=22)
    assert not deep.has_closed_form_trace and not deep.has_fast_scoring_path
    calls.clear()
    f, trace, vjp = field_and_exact_trace(deep, t, z, v, create_graph=True)
    assert not calls and trace.requires_grad
    expected = torch.autograd.grad(deep(t, z), z, v)[0]
    np.testing.assert_allclose(vjp.detach().numpy(), expected.numpy(), rtol=1e-12)
    rows = torch.tensor([5, 0, 3])
    _, trace_rows, vjp_rows = field_and_exact_trace(
        deep, t, z.detach(), v[rows], rows, create_graph=False, workspace={}
    )
    assert not trace_rows.requires_grad and vjp_rows.shape == (3, d)
    np.testing.assert_allclose(trace_rows.numpy(), trace.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(vjp_rows.numpy(), expected[rows].numpy(), rtol=1e-12)
