"""
Choosing the network size by held-out likelihood
================================================

``FFJORDDensity.score`` is the mean log-likelihood per row, so ``GridSearchCV`` picks the
hyperparameters whose model explains held-out folds best. Here a scaler and the flow sit
in one ``Pipeline`` and the grid compares hidden layer sizes on two moons.

A pipeline's ``score`` is the log-density of the data *after* the scaler (scikit-learn adds
no Jacobian). ``FFJORDDensity`` alone, with its default ``standardize=True``, scales
internally and reports log-densities in the data's own units.
"""

import warnings

import numpy as np
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skffjord import FFJORDDensity

X, _ = make_moons(n_samples=1000, noise=0.08, random_state=0)
pipe = Pipeline(
    [
        ("scale", StandardScaler()),
        (
            "flow",
            FFJORDDensity(
                activation="tanh",
                max_iter=20,
                batch_size=128,
                learning_rate_init=5e-3,
                ode_solver="rk4",
                ode_solver_params={"step_size": 0.25},
                random_state=0,
            ),
        ),
    ]
)
grid = GridSearchCV(pipe, {"flow__hidden_layer_sizes": [(2,), (16,), (32, 32)]}, cv=3)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    grid.fit(X)

for params, score in zip(
    grid.cv_results_["params"], grid.cv_results_["mean_test_score"], strict=True
):
    print(f"{params['flow__hidden_layer_sizes']!s:>10}: held-out mean log-likelihood {score:.3f}")
print("best:", grid.best_params_)
print("its mean log-likelihood on the training rows:", np.round(grid.score(X), 3))
