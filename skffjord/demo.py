"""Demo: fit FFJORDDensity on generated 2-D data, report held-out log-likelihood, plot it.

Run with ``python -m skffjord.demo``. No download: the data are generated.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity

from ._estimator import FFJORDDensity

__all__ = ["main"]


def _best_mixture(X: np.ndarray, X_val: np.ndarray) -> GaussianMixture:
    """GaussianMixture with the component count (1 to 20) that scores best on ``X_val``."""
    models = [GaussianMixture(k, random_state=0).fit(X) for k in (1, 2, 3, 5, 8, 12, 20)]
    return max(models, key=lambda m: m.score(X_val))


def _best_kde(X: np.ndarray) -> KernelDensity:
    """KernelDensity with the bandwidth chosen by 5-fold cross-validated likelihood."""
    grid = {"bandwidth": np.geomspace(0.02, 1.0, 15)}
    return GridSearchCV(KernelDensity(), grid, cv=5).fit(X).best_estimator_


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Fit on two moons, print held-out mean log-likelihoods, write a picture.

    Returns the held-out mean log-likelihood per model.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="ffjord_density.png", help="picture to write")
    parser.add_argument("--n-samples", type=int, default=4000)
    parser.add_argument("--max-time", type=float, default=60.0, help="fit budget in seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    X, _ = make_moons(n_samples=args.n_samples, noise=0.08, random_state=args.seed)
    X_test, _ = make_moons(n_samples=4000, noise=0.08, random_state=args.seed + 1)
    X, X_test = X * [2.0, 1.0] + [0.0, 5.0], X_test * [2.0, 1.0] + [0.0, 5.0]

    model = FFJORDDensity(max_time=args.max_time, random_state=args.seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    fit_seconds = time.perf_counter() - start
    split = int(0.8 * len(X))  # the mixture's component count is chosen on held-out rows
    gmm = _best_mixture(X[:split], X[split:])
    kde = _best_kde(X)
    scores = {
        "FFJORDDensity": model.score(X_test),
        f"GaussianMixture({gmm.n_components})": gmm.score(X_test),
        f"KernelDensity({kde.bandwidth:.3f})": float(kde.score_samples(X_test).mean()),
    }
    print(
        f"two moons, {len(X)} training rows, FFJORDDensity fit in {fit_seconds:.1f} s "
        f"({model.standardize_} map, {model.n_components_}-component base, "
        f"stopped: {model.stop_reason_})"
    )
    print("held-out mean log-likelihood (nats per row, higher is better; peers tuned by")
    print("held-out likelihood: GaussianMixture's components, KernelDensity's bandwidth):")
    for name, value in scores.items():
        print(f"  {name:<24s} {value: .4f}")
    _plot(model, X, args.out)
    return scores


def _plot(model: FFJORDDensity, X: np.ndarray, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional dependency
        print("matplotlib is not installed: no picture written (pip install skffjord[plot])")
        return
    lo, hi = X.min(0) - 0.5, X.max(0) + 0.5
    xs, ys = np.linspace(lo[0], hi[0], 150), np.linspace(lo[1], hi[1], 150)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    density = np.exp(model.score_samples(grid)).reshape(len(ys), len(xs))
    samples = model.sample(2000, random_state=0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    axes[0].scatter(X[:, 0], X[:, 1], s=2, alpha=0.4)
    axes[0].set_title("training data")
    mesh = axes[1].pcolormesh(xs, ys, density, shading="auto", cmap="viridis")
    fig.colorbar(mesh, ax=axes[1])
    axes[1].set_title("learned density exp(score_samples)")
    axes[2].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="C1")
    axes[2].set_title("samples from the model")
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    fig.savefig(path, dpi=110)
    print(f"picture written to {path}")


if __name__ == "__main__":
    main()
