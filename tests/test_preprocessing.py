"""The fixed maps in front of the flow, discrete-column detection and the mixture base."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from skffjord import find_discrete_features
from skffjord._base_distribution import GaussianMixtureBase, fit_mixture_base
from skffjord._discrete import dequantize, snap_to_grid
from skffjord._preprocessing import fit_gaussianizing_map, gaussian_log_likelihood


@pytest.fixture
def mixed():
    rng = np.random.default_rng(0)
    n = 400
    return np.column_stack(
        [
            rng.poisson(3.0, n),  # counts
            np.round(rng.normal(10, 2, n), 1),  # one decimal
            rng.integers(0, 2, n) * 5.0 + 2.0,  # binary on {2, 7}
            rng.normal(size=n),  # continuous
            np.round(rng.lognormal(size=n), 2) * 0 + np.linspace(0, 1, n),  # no ties
        ]
    )


def test_find_discrete_features_gives_each_grid_step(mixed):
    r = find_discrete_features(mixed)
    np.testing.assert_allclose(r, [1.0, 0.1, 5.0, 0.0, 0.0], rtol=1e-9)


def test_find_discrete_features_ignores_zero_weight_rows():
    X = np.array([[0.0], [1.0], [1.0], [2.0], [0.37]])
    assert find_discrete_features(X)[0] == 0.0  # 0.37 breaks the grid
    w = np.array([1, 1, 1, 1, 0.0])
    assert find_discrete_features(X, w)[0] == 1.0


def test_dequantize_stays_in_cell_and_snaps_back(mixed):
    r = find_discrete_features(mixed)
    noisy = dequantize(mixed, r, np.random.default_rng(1))
    assert np.all(np.abs(noisy - mixed) <= r / 2 + 1e-12)
    assert np.all(noisy[:, r > 0] != mixed[:, r > 0])
    np.testing.assert_array_equal(noisy[:, r == 0], mixed[:, r == 0])
    back = snap_to_grid(noisy, r, mixed.min(axis=0))
    np.testing.assert_allclose(back, mixed, atol=1e-9)


@pytest.mark.parametrize("marginal", [False, True])
def test_gaussianizing_map_inverts_and_its_log_det_is_the_jacobian(marginal):
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.lognormal(size=300), rng.standard_t(3, 300), rng.normal(size=300)])
    X[:, 2] += X[:, 0]
    m = fit_gaussianizing_map(X, np.ones(len(X)), marginal=marginal)
    x = torch.as_tensor(X[:7])
    u, log_det = m(x)
    torch.testing.assert_close(m.inverse(u), x, rtol=1e-9, atol=1e-9)
    for i in range(7):
        jac = torch.autograd.functional.jacobian(lambda r: m(r[None])[0][0], x[i])
        torch.testing.assert_close(log_det[i], torch.linalg.slogdet(jac)[1], rtol=1e-9, atol=1e-9)


def test_affine_map_is_the_full_covariance_gaussian():
    rng = np.random.default_rng(3)
    X = rng.multivariate_normal([1, -2, 3], [[2, 1.5, 0], [1.5, 2, 0.3], [0, 0.3, 1]], 500)
    m = fit_gaussianizing_map(X, np.ones(len(X)), marginal=False)
    cov = np.cov(X.T, bias=True)
    expected = multivariate_normal(X.mean(0), cov).logpdf(X[:50]).mean()
    assert gaussian_log_likelihood(m, X[:50], np.ones(50)) == pytest.approx(expected, abs=1e-4)


def test_sample_weights_count_by_their_ratios():
    rng = np.random.default_rng(4)
    X = rng.lognormal(size=(200, 2))
    w = rng.random(200)
    a = fit_gaussianizing_map(X, w, marginal=True)
    b = fit_gaussianizing_map(X, w * 1e3, marginal=True)
    torch.testing.assert_close(
        a(torch.as_tensor(X))[0], b(torch.as_tensor(X))[0], rtol=1e-6, atol=1e-6
    )


def test_sinh_arcsinh_map_fits_skewed_data_better_than_affine():
    rng = np.random.default_rng(5)
    X = rng.lognormal(size=(2000, 2))
    fit, held = X[:1500], X[1500:]
    ones = np.ones(500)
    affine = gaussian_log_likelihood(
        fit_gaussianizing_map(fit, np.ones(1500), marginal=False), held, ones
    )
    sas = gaussian_log_likelihood(
        fit_gaussianizing_map(fit, np.ones(1500), marginal=True), held, ones
    )
    assert sas > affine + 0.5


def test_mixture_base_log_prob_matches_scikit_learn():
    rng = np.random.default_rng(6)
    U = np.vstack([rng.normal(-3, 1, (200, 2)), rng.normal(3, 0.5, (200, 2))])
    gm = GaussianMixture(2, covariance_type="full", random_state=0).fit(U)
    base = GaussianMixtureBase(
        torch.as_tensor(gm.weights_),
        torch.as_tensor(gm.means_),
        torch.as_tensor(np.linalg.cholesky(gm.covariances_)),
    )
    np.testing.assert_allclose(base.log_prob(torch.as_tensor(U)).numpy(), gm.score_samples(U))
    draws = base.sample_numpy(20000, np.random.RandomState(0))
    np.testing.assert_allclose(draws.mean(0), gm.means_.T @ gm.weights_, atol=0.1)
    tdraws = base.rsample((20000, 2), torch.Generator().manual_seed(0), torch.zeros(1))
    np.testing.assert_allclose(tdraws.mean(0).numpy(), gm.means_.T @ gm.weights_, atol=0.1)


def test_fit_mixture_base_finds_clusters_and_keeps_one_gaussian_for_one():
    rng = np.random.default_rng(7)
    two = np.vstack([rng.normal(-3, 0.5, (300, 2)), rng.normal(3, 0.5, (300, 2))])
    idx = rng.permutation(600)
    folds = [(idx[120:], idx[:120])]
    base, scores = fit_mixture_base(two, np.ones(600), folds, seed=0)
    assert base is not None and base.means.shape[0] >= 2 and scores[2] > scores[1] + 1
    one = rng.normal(size=(600, 2))
    base, scores = fit_mixture_base(one, np.ones(600), folds, seed=0)
    assert base is None and 1 in scores


def test_snapped_values_are_the_decimals_they_were_recorded_as():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(0, 5, 200), rng.uniform(-2, 2, 200)])
    resolution = np.array([2.31 - 2.3, 1 / 3])  # a measured gap: 0.009999999999999787
    origin = np.array([0.5, 0.0])
    snapped = snap_to_grid(X, resolution, origin)
    cents = np.round(snapped[:, 0] * 100)
    np.testing.assert_array_equal(snapped[:, 0], cents / 100)  # 3.11, not 3.1099999999999994
    np.testing.assert_allclose(snapped[:, 0], np.round(X[:, 0], 2), atol=0.0051)
    thirds = snapped[:, 1] * 3
    np.testing.assert_allclose(thirds, np.round(thirds), atol=1e-12)  # a grid without decimals
    assert np.abs(snapped[:, 1] - X[:, 1]).max() <= 1 / 6 + 1e-12
