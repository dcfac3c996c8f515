"""
Points flowing from the base Gaussian to the data
=================================================

A continuous normalizing flow moves every point along the solution of ``dz/dt = f(z, t)``.
:meth:`skffjord.FFJORDDensity.trajectory` returns those paths, from the data (``t = 0``) to
the latent space; read backwards they show how base noise is transported onto the data.
Here the flow is fitted to two moons with a standard normal base (``n_components=1``; the
default may start from a Gaussian mixture instead); samples are drawn with ``sample`` and
their paths are drawn back to the Gaussian they came from.
"""

import warnings

import matplotlib.pyplot as plt
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity

X, _ = make_moons(2000, noise=0.06, random_state=0)
model = FFJORDDensity(max_time=15, n_components=1, learning_rate_init=3e-3, random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    model.fit(X)

samples = model.sample(300, random_state=0)
path = model.trajectory(samples, n_times=21)[::-1]  # base noise (t = T) -> data (t = 0)

fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
for ax, k in zip(axes[:3], (0, 10, 20), strict=True):
    t = 1 - k / 20
    ax.scatter(path[k, :, 0], path[k, :, 1], s=4, color="C1")
    ax.set_title(f"t = {t:.1f}")
axes[3].plot(path[:, :60, 0], path[:, :60, 1], color="C0", lw=0.6, alpha=0.7)
axes[3].scatter(path[0, :60, 0], path[0, :60, 1], s=6, color="k", label="base noise")
axes[3].scatter(path[-1, :60, 0], path[-1, :60, 1], s=6, color="C1", label="sample")
axes[3].legend(fontsize=7, loc="lower left")
axes[3].set_title("paths of 60 points")
for ax in axes:
    ax.set_xlim(-3, 4)
    ax.set_ylim(-3, 3)
    ax.set_aspect("equal")
fig.tight_layout()
plt.show()
