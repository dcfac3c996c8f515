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
from sklearn.neighbors import KernelDensity

from ._estimator import FFJORDDensity

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Fit on two moons, print held-out mean log-likelihoods, write a picture.

    Returns the held-out mean log-likelihood per model.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="ffjord_density.png", help="picture to write")
    parser.add_argument("--n-samples", type=int, default=4000)
    parser.add_argument("--max-iter", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    X, _ = make_moons(n_samples=args.n_samples, noise=0.08, random_state=args.seed)
    X_test, _ = make_moons(n_samples=4000, noise=0.08, random_state=args.seed + 1)
    X, X_test = X * [2.0, 1.0] + [0.0, 5.0], X_test * [2.0, 1.0] + [0.0, 5.0]

    model = FFJORDDensity(
        hidden_layer_sizes=(32, 32),
        activation="tanh",
        batch_size=256,
        learning_rate_init=5e-3,
        ode_solver="rk4",
        ode_solver_params={"step_size": 0.25},
        max_iter=args.max_iter,
        random_state=args.seed,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    fit_seconds = time.perf_counter() - start
    gmm = GaussianMixture(n_components=1, random_state=0).fit(X)
    kde = KernelDensity(bandwidth=0.1).fit(X)
    scores = {
        "FFJORDDensity": model.score(X_test),
        "GaussianMixture(1)": gmm.score(X_test),
        "KernelDensity(0.1)": float(kde.score_samples(X_test).mean()),
    }
    print(
        f"two moons, {len(X)} training rows, fit in {fit_seconds:.1f} s "
        f"({model.n_iter_} epochs, {model.history_[-1]['nfe']:.0f} evaluations per solve)"
    )
    print("held-out mean log-likelihood (nats per row, higher is better):")
    for name, value in scores.items():
        print(f"  {name:<20s} {value: .4f}")
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
