"""Side-by-side comparison of FFJORDDensity training settings and sklearn baselines.

One run, one process, the same synthetic data for every model. Reports held-out mean
log-likelihood (nats per row, higher is better), fit seconds, function evaluations per
training solve, score throughput, and ratios against the default FFJORDDensity.

    python benchmarks/training_settings.py --max-time 60 --out results.json

The data are synthetic (documented generator below, fixed seed): a 6-D non-Gaussian set
whose first two columns are two moons and whose other columns are non-linear functions of
them plus noise. This is a stand-in, not a benchmark dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import make_moons
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

from skffjord import FFJORDDensity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maf_datasets import timed_fit_score  # noqa: E402


def make_data(n, seed):
    """Two moons in columns 0-1; columns 2-5 are smooth functions of them plus noise."""
    rng = np.random.default_rng(seed)
    m, _ = make_moons(n_samples=n, noise=0.08, random_state=seed)
    a, b = m[:, 0], m[:, 1]
    cols = [
        a,
        b,
        np.sin(2 * a) + 0.1 * rng.normal(size=n),
        a * b + 0.1 * rng.normal(size=n),
        np.tanh(b) ** 2 + 0.1 * rng.normal(size=n),
        rng.standard_t(5, size=n),
    ]
    return np.column_stack(cols)


def ffjord_variants(max_time, seed):
    base = dict(
        max_iter=10000,
        max_time=max_time,
        random_state=seed,
        early_stopping=True,
        n_iter_no_change=20,
    )
    return {
        "FFJORD default (dopri5, hutchinson)": FFJORDDensity(**base),
        "FFJORD rk4 step 0.25": FFJORDDensity(
            ode_solver="rk4", ode_solver_params={"step_size": 0.25}, **base
        ),
        "FFJORD exact trace": FFJORDDensity(trace_estimator="exact", **base),
        "FFJORD adjoint": FFJORDDensity(adjoint=True, **base),
        "FFJORD RNODE 0.01/0.01": FFJORDDensity(kinetic_energy_reg=0.01, jacobian_reg=0.01, **base),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--max-time", type=float, default=60.0, help="seconds per FFJORD fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()

    X, X_test = make_data(args.n_train, args.seed), make_data(args.n_test, args.seed + 1)
    rows = []
    models = ffjord_variants(args.max_time, args.seed)
    gmm_grid = [GaussianMixture(k, random_state=args.seed) for k in (1, 5, 20)]
    kde_grid = [KernelDensity(bandwidth=h) for h in (0.05, 0.1, 0.2)]
    for name, model in [
        *models.items(),
        *[(f"GaussianMixture({g.n_components})", g) for g in gmm_grid],
        *[(f"KernelDensity({k.bandwidth})", k) for k in kde_grid],
    ]:
        scores, fit_s, score_s = timed_fit_score(model, X, X_test)
        hist = getattr(model, "history_", None)
        rows.append(
            {
                "model": name,
                "test_loglik": float(scores.mean()),
                "stderr": float(scores.std() / np.sqrt(len(scores))),
                "fit_s": fit_s,
                "epochs": getattr(model, "n_iter_", None),
                "nfe_per_solve": float(np.mean([h["nfe"] for h in hist])) if hist else None,
                "score_rows_per_s": len(X_test) / score_s,
            }
        )
    ref = rows[0]
    print(
        "| model | test log-lik ± 2 s.e. | fit s | epochs | NFE/solve | score rows/s "
        "| fit time / default |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        nfe = f"{r['nfe_per_solve']:.1f}" if r["nfe_per_solve"] is not None else "-"
        print(
            f"| {r['model']} | {r['test_loglik']:.3f} ± {2 * r['stderr']:.3f} | "
            f"{r['fit_s']:.1f} | {r['epochs'] or '-'} | {nfe} | {r['score_rows_per_s']:.0f} | "
            f"{r['fit_s'] / ref['fit_s']:.2f} |"
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
