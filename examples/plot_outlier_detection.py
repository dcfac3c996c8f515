"""
Outlier detection: decision regions and an ROC curve
====================================================

:class:`skffjord.FFJORDOutlierDetector` flags rows whose log-density is below the
``contamination`` quantile of the training rows. Left: its decision regions on two moons with
a few planted outliers, next to :class:`~sklearn.ensemble.IsolationForest` and
:class:`~sklearn.covariance.EllipticEnvelope` at the same contamination. Right: ROC curves on
scikit-learn's breast-cancer data, trained on benign tumours only (novelty detection) and
tested on held-out benign and malignant ones.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.covariance import EllipticEnvelope
from sklearn.datasets import load_breast_cancer, make_moons
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import RocCurveDisplay
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skffjord import FFJORDOutlierDetector

rng = np.random.default_rng(0)
inliers, _ = make_moons(600, noise=0.06, random_state=0)
X = np.vstack([inliers, rng.uniform(-1.5, 2.5, size=(30, 2))])

detectors = {
    "FFJORDOutlierDetector": FFJORDOutlierDetector(
        contamination=0.05, max_time=12, max_iter=10**6, learning_rate_init=3e-3, random_state=0
    ),
    "IsolationForest": IsolationForest(contamination=0.05, random_state=0),
    "EllipticEnvelope": EllipticEnvelope(contamination=0.05, random_state=0),
}
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
gx, gy = np.meshgrid(np.linspace(-2, 3, 150), np.linspace(-1.5, 2, 150))
grid = np.c_[gx.ravel(), gy.ravel()]
for ax, (name, det) in zip(axes, detectors.items(), strict=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = det.fit_predict(X)
    inside = det.predict(grid).reshape(gx.shape)
    ax.contourf(gx, gy, inside, levels=[-2, 0, 2], colors=["#f4cccc", "#d9ead3"])
    ax.scatter(X[labels == 1, 0], X[labels == 1, 1], s=3, color="k")
    ax.scatter(X[labels == -1, 0], X[labels == -1, 1], s=12, color="C3", label="flagged")
    ax.set_title(name)
    ax.legend(fontsize=7, loc="lower left")

# ROC on breast cancer: benign tumours are the inliers
data = load_breast_cancer()
benign, malignant = data.data[data.target == 1], data.data[data.target == 0]
order = rng.permutation(len(benign))
train, test_benign = benign[order[:250]], benign[order[250:]]
X_test = np.vstack([test_benign, malignant])
y_test = np.r_[np.zeros(len(test_benign)), np.ones(len(malignant))]  # 1 = outlier
for name, det in {
    "FFJORDOutlierDetector": FFJORDOutlierDetector(max_time=20, max_iter=10**6, random_state=0),
    "IsolationForest": IsolationForest(random_state=0),
    "EllipticEnvelope": EllipticEnvelope(random_state=0, support_fraction=0.9),
}.items():
    pipe = make_pipeline(StandardScaler(), det)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(train)
    score = -pipe.score_samples(X_test)  # higher = more abnormal
    RocCurveDisplay.from_predictions(y_test, score, name=name, ax=axes[3])
axes[3].set_title("breast cancer: malignant as outliers")
fig.tight_layout()
plt.show()
