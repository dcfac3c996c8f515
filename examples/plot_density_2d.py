"""
Learned densities of 2-D shapes, and samples drawn from them
============================================================

Three toy shapes that a single Gaussian cannot describe: two moons, two concentric rings and
a ring of eight Gaussians. For each, :class:`skffjord.FFJORDDensity` is fitted by flow
matching alone (``training="flow_matching"``, 250 to 700 epochs of 8 steps) with three
hidden layers of 64 units, a learning rate of 0.005 and mini-batches of 256 rows. In two
dimensions a deeper, narrower network and many small steps do better in a short budget than
the defaults, which were chosen on tabular benchmarks. Whatever the training, the densities
are exact likelihoods of the trained flow (``score_samples`` solves the ODE with the exact
trace). The figure shows the training data, the learned density ``exp(score_samples)`` on a
grid, and samples drawn with ``sample``.

These are short fits (about 10 to 20 seconds each on two CPU cores) and it shows: the moons
and the eight modes are found, but the inner ring and the gaps between modes are still
blurred, with some mass on the bridges between them. Longer fits sharpen them.

The densities are normalised: the grid sum times the cell area is printed next to each
shape (close to 1 when the grid covers the mass).
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_circles, make_moons
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity


def eight_gaussians(n, seed):
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    centers = 2.0 * np.c_[np.cos(angles), np.sin(angles)]
    return centers + 0.15 * rng.normal(size=(n, 2))


# (data, training epochs): the rings, which must be torn apart from one Gaussian blob, need
# the longest training
shapes = {
    "two moons": (make_moons(2000, noise=0.06, random_state=0)[0], 250),
    "two rings": (make_circles(2000, noise=0.04, factor=0.5, random_state=0)[0], 700),
    "eight Gaussians": (eight_gaussians(2000, 0), 300),
}

fig, axes = plt.subplots(3, 3, figsize=(9, 9))
for row, (name, (X, epochs)) in zip(axes, shapes.items(), strict=True):
    model = FFJORDDensity(
        training="flow_matching",
        hidden_layer_sizes=(64, 64, 64),
        learning_rate_init=5e-3,
        batch_size=256,
        max_iter=epochs,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    lo, hi = X.min(0) - 0.5, X.max(0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 70), np.linspace(lo[1], hi[1], 70))
    grid = np.c_[gx.ravel(), gy.ravel()]
    density = np.exp(model.score_samples(grid)).reshape(gx.shape)
    cell = (gx[0, 1] - gx[0, 0]) * (gy[1, 0] - gy[0, 0])
    samples = model.sample(1500, random_state=1)

    row[0].scatter(X[:, 0], X[:, 1], s=1, alpha=0.5)
    row[0].set_title(f"{name}: data")
    row[1].pcolormesh(gx, gy, density, shading="auto", cmap="viridis")
    row[1].set_title(f"density (mass on grid {density.sum() * cell:.3f})")
    row[2].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.5, color="C1")
    row[2].set_title("samples")
    for ax in row:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    mass = density.sum() * cell
    print(f"{name}: mean log-likelihood {model.score(X):.3f}, mass on grid {mass:.3f}")
fig.tight_layout()
plt.show()
