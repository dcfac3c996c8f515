"""The flow's base distribution: the standard normal, or a Gaussian mixture fitted by EM.

The flow's field starts at zero, so an untrained flow is the identity and the model is its
base distribution behind the fixed map. A Gaussian mixture fitted to the mapped training rows
(components chosen on held-out rows) makes the starting model a Gaussian mixture in the
user's units (after the per-feature map), so training starts from the classical model and,
with early stopping, can only end at or above it on the validation rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ._preprocessing import rowwise_product

__all__ = ["MIXTURE_COMPONENTS", "GaussianMixtureBase", "fit_mixture_base"]

#: Component counts tried for the base mixture (those with fewer than ``d + 1`` fitting rows
#: per component are skipped).
MIXTURE_COMPONENTS = (1, 2, 3, 5, 8, 12, 20)
#: Most training rows the candidate mixtures are fitted on.
MIXTURE_MAX_ROWS = 20_000
#: Regularisation added to each component's covariance diagonal (the data is whitened).
MIXTURE_REG_COVAR = 1e-4
#: EM restarts of the chosen count's final fit (the best likelihood is kept): one EM run's
#: local optimum decides several nats per row on wide tables, and the restarts make the
#: starting model depend far less on ``random_state``
#: (``python benchmarks/real_tables.py --tables digits,quakes``).
MIXTURE_REFIT_INITS = 5


class GaussianMixtureBase(nn.Module):
    """A Gaussian mixture density over the latent space (float64 buffers).

    Parameters
    ----------
    weights : Tensor of shape (k,)
    means : Tensor of shape (k, d)
    chol : Tensor of shape (k, d, d)
        Lower Cholesky factors of the component covariances.
    """

    def __init__(self, weights: Tensor, means: Tensor, chol: Tensor) -> None:
        super().__init__()
        self.register_buffer("log_weights", torch.log(weights.detach().clone()))
        self.register_buffer("means", means.detach().clone())
        self.register_buffer("chol", chol.detach().clone())
        eye = torch.eye(chol.shape[-1], dtype=chol.dtype).expand_as(chol)
        self.register_buffer("chol_inv", torch.linalg.solve_triangular(chol, eye, upper=False))

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-density at each row of ``z``, shape ``(n,)``, in ``z``'s precision."""
        d = z.shape[-1]
        diff = z[None, :, :] - self.means.to(z.dtype)[:, None, :]  # (k, n, d)
        chol_inv = self.chol_inv.to(z.dtype)
        if z.dtype == torch.float64:  # scoring in float64: each row's result row-independent
            white = torch.stack([rowwise_product(diff[j], chol_inv[j]) for j in range(len(diff))])
        else:
            white = diff @ chol_inv.transpose(1, 2)
        log_det = torch.log(torch.diagonal(self.chol, dim1=-2, dim2=-1)).sum(-1).to(z.dtype)
        comp = -0.5 * white.pow(2).sum(-1) - log_det[:, None] - 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(comp + self.log_weights.to(z.dtype)[:, None], dim=0)

    def rsample(self, shape: torch.Size, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """Draws of shape ``shape = (n, d)`` in ``like``'s precision and device."""
        n = shape[0]
        probs = self.log_weights.exp().to(like.device)
        comp = torch.multinomial(probs, n, replacement=True, generator=generator)
        eps = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
        chol = self.chol.to(like.dtype)[comp]
        return self.means.to(like.dtype)[comp] + (chol @ eps.unsqueeze(-1)).squeeze(-1)

    def sample_numpy(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """``n`` float64 draws from a NumPy random state."""
        probs = self.log_weights.exp().cpu().numpy()
        comp = rng.choice(len(probs), size=n, p=probs / probs.sum())
        eps = rng.standard_normal((n, self.means.shape[1]))
        chol, means = self.chol.cpu().numpy(), self.means.cpu().numpy()
        return means[comp] + np.einsum("nij,nj->ni", chol[comp], eps)


def _resampled(U: np.ndarray, w: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rows of ``U``: all of them (shuffled) for equal weights, else drawn in
    proportion to the weights (EM here takes no weights)."""
    positive = w > 0
    U, w = U[positive], w[positive]
    if np.allclose(w, w[0]):
        return U[rng.permutation(len(U))[:n]]
    return U[rng.choice(len(U), size=min(n, len(U)), p=w / w.sum())]


def fit_mixture_base(
    U: np.ndarray,
    w: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    seed: int,
    components: tuple[int, ...] | None = None,
) -> tuple[GaussianMixtureBase | None, dict[int, float]]:
    """The Gaussian mixture over mapped rows with the best held-out log-likelihood.

    Parameters
    ----------
    U : ndarray of shape (n_samples, n_features)
        Mapped training rows.
    w : ndarray of shape (n_samples,)
        Their weights.
    folds : list of (fit, held) index arrays into ``U``
        Each count's score is the weighted mean held-out log-likelihood over the folds.
    seed : int
        EM's initialisation and the resampling of weighted rows.
    components : tuple of int or None
        Counts to try; default :data:`MIXTURE_COMPONENTS`, stopping once the score falls and
        skipping counts with too few rows per parameter.

    Returns
    -------
    base : GaussianMixtureBase or None
        The best count's mixture refitted on all of ``U`` (the best of
        :data:`MIXTURE_REFIT_INITS` EM runs); ``None`` for one component (the
        standard normal, which the map's whitening makes the one-component fit).
    scores : dict
        Each tried count's held-out score (in the mapped space).
    """
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    d = U.shape[1]
    n = min(len(f) for f, _ in folds)

    def fitted(k: int, rows: np.ndarray, n_init: int = 1) -> GaussianMixture:
        model = GaussianMixture(
            k,
            covariance_type="full",
            reg_covar=MIXTURE_REG_COVAR,
            n_init=n_init,
            random_state=seed,
        )
        return model.fit(_resampled(U[rows], w[rows], rng, MIXTURE_MAX_ROWS))

    scores: dict[int, float] = {}
    best_k, best_score = 1, -math.inf
    fixed = components is not None
    for k in components or MIXTURE_COMPONENTS:
        if k > 1 and not fixed and k * (d + 1) > n:
            break
        total = weight = 0.0
        try:
            for fit, held in folds:
                total += float(w[held] @ fitted(k, fit).score_samples(U[held]))
                weight += float(w[held].sum())
        except ValueError:  # a component collapsed
            continue
        scores[k] = total / weight if math.isfinite(total) else -math.inf
        if scores[k] > best_score:
            best_k, best_score = k, scores[k]
        elif k > 1 and scores[k] < best_score and not fixed:
            break  # past the best count
    if best_k == 1:
        return None, scores
    model = fitted(best_k, np.arange(len(U)), MIXTURE_REFIT_INITS)
    chol = np.linalg.cholesky(model.covariances_)
    as_t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64))  # noqa: E731
    return GaussianMixtureBase(as_t(model.weights_), as_t(model.means_), as_t(chol)), scores
