"""
The training curve: loss and function evaluations
=================================================

``history_`` records every epoch: the training loss, the held-out score when
``early_stopping=True``, the function evaluations per training solve, the optimizer steps and
the wall time. With the default ``training='hybrid'`` the first phase is flow matching (the loss
is a regression loss and no ODE is solved, so no function evaluations are counted) and the
second is maximum likelihood (the loss is the negative log-likelihood in nats).

For comparison, the same network is also trained by maximum likelihood only, through an
adaptive solver (FFJORD's recipe), for the same time: its function evaluations per solve grow
as the dynamics become more complex.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning

from skffjord import FFJORDDensity

X, _ = make_moons(3000, noise=0.06, random_state=0)
runs = {
    "hybrid (default)": FFJORDDensity(early_stopping=True, max_time=20, max_iter=10**6),
    "likelihood, dopri5": FFJORDDensity(
        training="likelihood",
        solver={"method": "dopri5"},
        early_stopping=True,
        max_time=20,
        max_iter=10**6,
    ),
}
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for name, model in runs.items():
    model.set_params(random_state=0, learning_rate_init=3e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    h = model.history_
    time = np.array([r["time"] for r in h])
    phase = np.array([r.get("phase", "likelihood") for r in h])
    like = phase == "likelihood"
    axes[0].plot(
        time[like],
        [-r["valid_score"] for r, m in zip(h, like, strict=True) if m],
        marker=".",
        label=name,
    )
    axes[1].plot(
        time[like], [r["nfe"] for r, m in zip(h, like, strict=True) if m], marker=".", label=name
    )
    if (~like).any():
        axes[2].plot(
            time[~like],
            [r["train_loss"] for r, m in zip(h, ~like, strict=True) if m],
            marker=".",
            color="C0",
        )
    print(f"{name}: {model.n_iter_} epochs, held-out mean log-likelihood {model.score(X):.3f}")
axes[0].set(xlabel="wall time (s)", ylabel="held-out NLL (nats)", title="likelihood phase")
axes[1].set(
    xlabel="wall time (s)",
    ylabel="function evaluations per solve",
    title="cost of a training solve",
)
axes[2].set(xlabel="wall time (s)", ylabel="flow-matching loss", title="flow-matching phase")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()
