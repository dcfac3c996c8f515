"""Fit FFJORDDensity on the MAF data sets and report test log-likelihood in nats.

The splits come from :mod:`skffjord.datasets` (downloaded and cached on first use), so the
numbers are in the convention of the MAF and FFJORD papers: standardised data (BSDS300: MAF's
patch recipe), average log-likelihood per test row in nats, with its standard error. Published
FFJORD test negative log-likelihoods (NLL = -log-likelihood) are printed alongside:
POWER -0.46, GAS -8.59, HEPMASS 14.92, MINIBOONE 10.43, BSDS300 -157.40.

The model is FFJORDDensity with its defaults and ``--max-time`` seconds of fitting; the
options from ``--hidden-layer-sizes`` to ``--n-iter-no-change`` override single parameters.
A GaussianMixture fitted to the same training rows is reported in the same run, as a floor.

Examples
--------
    # real data (downloads MAF's archive, about 1 GB, into data_home once)
    python benchmarks/maf_datasets.py --dataset miniboone --max-time 600

    # BSDS300 cut from the original images, read from a folder
    python benchmarks/maf_datasets.py --dataset bsds300 --bsds300-source images \\
        --images-dir /path/to/BSDS300/images --n-train 20000 --n-test 2000 --max-time 300

    # synthetic stand-ins of the same shapes (no download; NOT the benchmark datasets)
    python benchmarks/maf_datasets.py --dataset all --synthetic --max-time 60

``--n-train`` and ``--n-test`` subsample the rows (chosen at random with ``--seed``) so that a
CPU run fits in minutes; a subsampled test set gives an unbiased estimate of the full test
mean, with the standard error reported. Results go to stdout and, with ``--out``, to JSON.

The module also holds the data helpers of ``peers.py``, ``defaults.py``, ``profile_share.py``
and ``scaling.py``: the shapes of the MAF splits and their synthetic stand-ins.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from skffjord import FFJORDDensity
from skffjord.datasets import DATASETS, fetch_dataset

PUBLISHED_FFJORD_NLL = {
    "power": -0.46,
    "gas": -8.59,
    "hepmass": 14.92,
    "miniboone": 10.43,
    "bsds300": -157.40,
}
SHAPES = {  # (d, train rows, test rows) of the MAF splits
    "power": (6, 1_659_917, 204_928),
    "gas": (8, 852_174, 105_206),
    "hepmass": (21, 315_123, 174_987),
    "miniboone": (43, 29_556, 3_648),
    "bsds300": (63, 1_000_000, 250_000),
}


def mixture_sinh(d, n_train, n_test, seed):
    """A mixture of 8 Gaussians with random covariances in R^d, pushed through a random
    rotation and an elementwise sinh (heavy tails), then standardised with the training mean
    and standard deviation, like the MAF sets. Returns ``(train, test)``."""
    rng = np.random.default_rng([seed, d])
    means = rng.normal(scale=2.0, size=(8, d))
    factors = rng.normal(scale=0.5, size=(8, d, d)) / np.sqrt(d)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))

    def draw(n):
        comp = rng.integers(0, 8, n)
        z = rng.normal(size=(n, d))
        x = means[comp] + 0.3 * z
        for k in range(8):  # per component: no (n, d, d) temporary
            rows = comp == k
            x[rows] += z[rows] @ factors[k].T
        return np.sinh(x @ rotation)

    train, test = draw(n_train), draw(n_test)
    mu, sd = train.mean(0), train.std(0)
    return (train - mu) / sd, (test - mu) / sd


def synthetic_stand_in(name, n_train, n_test, seed):
    """Data of the dataset's dimension, not the dataset: :func:`mixture_sinh` at its d."""
    return mixture_sinh(SHAPES[name][0], n_train, n_test, seed)


def timed_fit_score(model, train, test):
    """Fit ``model`` on ``train`` (convergence warnings silenced) and score ``test``.

    Returns ``(scores, fit_seconds, score_seconds)``."""

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = model.score_samples(test)
    return scores, fit_seconds, time.perf_counter() - t0


def mean_and_stderr(values):
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


def subsample(array, n, rng):
    if n is None or n >= array.shape[0]:
        return np.asarray(array, dtype=np.float64)
    return np.asarray(array[rng.choice(array.shape[0], n, replace=False)], dtype=np.float64)


def fetch_real(name, args):
    """The dataset's Bunch through :mod:`skffjord.datasets`, and a label of its source."""
    kwargs = {"data_home": args.data_home}
    source = "MAF archive"
    if name == "bsds300":
        kwargs.update(source=args.bsds300_source, images_dir=args.images_dir)
        if args.bsds300_source == "images":
            source = "original images, MAF recipe (not MAF's patches)"
    return fetch_dataset(name, **kwargs), source


def load(name, args, rng):
    if args.synthetic:
        d, n_train_full, n_test_full = SHAPES[name]
        n_train = min(args.n_train or n_train_full, n_train_full)
        n_test = min(args.n_test or n_test_full, n_test_full)
        train, test = synthetic_stand_in(name, n_train, n_test, args.seed)
        return train, test, "synthetic stand-in (NOT the real dataset)"
    bunch, source = fetch_real(name, args)
    return (
        subsample(bunch.train, args.n_train, rng),
        subsample(bunch.test, args.n_test, rng),
        source,
    )


def run_one(name, args):
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    train, test, source = load(name, args, rng)
    load_seconds = time.perf_counter() - t0
    d = train.shape[1]
    overrides = {
        "hidden_layer_sizes": args.hidden_layer_sizes
        and tuple(int(v) for v in args.hidden_layer_sizes.split(",")),
        "solver": (args.ode_solver or args.step_size)
        and {
            "method": args.ode_solver or "rk4",
            "options": args.step_size and {"step_size": args.step_size},
        },
        "batch_size": args.batch_size,
        "learning_rate_init": args.learning_rate,
        "max_iter": args.max_iter,
        "n_iter_no_change": args.n_iter_no_change,
    }
    model = FFJORDDensity(
        max_time=args.max_time,
        random_state=args.seed,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    ffjord_scores, fit_seconds, score_seconds = timed_fit_score(model, train, test)
    gmm = GaussianMixture(
        n_components=args.gmm_components, covariance_type="full", random_state=args.seed
    ).fit(train)
    gmm_scores = gmm.score_samples(test)
    ffjord_mean, ffjord_se = mean_and_stderr(ffjord_scores)
    gmm_mean, gmm_se = mean_and_stderr(gmm_scores)
    return {
        "dataset": name,
        "source": source,
        "d": d,
        "n_train": int(train.shape[0]),
        "n_test": int(test.shape[0]),
        "ffjord_test_loglik": ffjord_mean,
        "ffjord_test_loglik_stderr": ffjord_se,
        "ffjord_test_nll": -ffjord_mean,
        "gmm_test_loglik": gmm_mean,
        "gmm_test_loglik_stderr": gmm_se,
        "published_ffjord_nll": PUBLISHED_FFJORD_NLL[name],
        "comparable_to_published": not args.synthetic,
        "epochs": int(model.n_iter_),
        "stop_reason": model.stop_reason_,
        "load_seconds": load_seconds,
        "fit_seconds": fit_seconds,
        "score_seconds": score_seconds,
        "hidden_layer_sizes": list(model._hidden_sizes(d)),  # 'auto' resolved
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="miniboone", choices=[*DATASETS, "all"])
    parser.add_argument(
        "--data-home", default=None, help="default: SKFFJORD_DATA or ~/skffjord_data"
    )
    parser.add_argument("--synthetic", action="store_true", help="same-shaped stand-ins")
    parser.add_argument("--bsds300-source", default="maf", choices=["maf", "images"])
    parser.add_argument("--images-dir", default=None)
    parser.add_argument("--n-train", type=int, default=None, help="subsample training rows")
    parser.add_argument("--n-test", type=int, default=None, help="subsample test rows")
    parser.add_argument(
        "--hidden-layer-sizes", default=None, help="comma-separated widths, e.g. 256,256"
    )
    parser.add_argument("--ode-solver", default=None, help="training solver, e.g. rk4, dopri5")
    parser.add_argument("--step-size", type=float, default=None, help="fixed-step solvers")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--max-iter", type=int, default=None)
    parser.add_argument("--n-iter-no-change", type=int, default=None)
    parser.add_argument("--max-time", type=float, default=120.0, help="seconds per fit")
    parser.add_argument("--gmm-components", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    names = DATASETS if args.dataset == "all" else (args.dataset,)
    results = []
    print(
        f"{'dataset':10s} {'d':>3s} {'n_train':>8s} {'n_test':>7s} "
        f"{'FFJORD loglik':>17s} {'GMM loglik':>17s} {'paper NLL':>9s} {'fit s':>6s}  source"
    )
    for name in names:
        r = run_one(name, args)
        results.append(r)
        print(
            f"{name:10s} {r['d']:3d} {r['n_train']:8d} {r['n_test']:7d} "
            f"{r['ffjord_test_loglik']:9.3f} ± {r['ffjord_test_loglik_stderr']:5.3f} "
            f"{r['gmm_test_loglik']:9.3f} ± {r['gmm_test_loglik_stderr']:5.3f} "
            f"{r['published_ffjord_nll']:9.2f} {r['fit_seconds']:6.0f}  {r['source']}",
            flush=True,
        )
    meta = {
        "machine": platform.platform(),
        "processor": platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "args": vars(args),
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
