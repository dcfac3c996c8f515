"""How FFJORDDensity's cost grows with the number of rows n and the dimension d.

For every point: after a short warm-up fit with the defaults, one flow-matching epoch and one
likelihood epoch (default rk4 steps, closed-form exact trace) are timed on all n rows, then
``score_samples`` on up to ``--score-rows`` rows. Data: the synthetic stand-in generator
of ``maf_datasets.py`` (8-component Gaussian mixture, random rotation, sinh), at any d.
Reported: seconds per epoch of each kind and seconds per scored row, the log-log slope
(exponent) of each against n and against d, a JSON file and a two-panel plot.

    python benchmarks/scaling.py --out scaling.json --plot scaling.png

``benchmarks/results/scaling.{txt,json,png}`` come from the defaults of every option, with
stdout saved as the ``.txt``.

Each point is timed after a short warm-up fit on the same data (so the scored field is not
the zero field, whose solves are trivially cheap). Single process, ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def mixture_data(d, n, seed):
    """The stand-in generator of ``maf_datasets.synthetic_stand_in`` at dimension ``d``."""
    from maf_datasets import mixture_sinh

    return mixture_sinh(d, n, 0, seed)[0]


def measure(d, n, score_rows, warmup_seconds, seed):
    """Seconds for one flow-matching epoch and one likelihood epoch on n rows, and seconds
    per scored row, at dimension d (the default network and solvers)."""
    from sklearn.exceptions import ConvergenceWarning

    from skffjord import FFJORDDensity

    X = mixture_data(d, n, seed)
    model = FFJORDDensity(random_state=seed, max_iter=10**6, max_time=warmup_seconds)
    out = {"d": d, "n": n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X[: min(n, 20_000)])
        for training in ("flow_matching", "likelihood"):
            model.set_params(training=training, max_iter=1, max_time=None, warm_start=True)
            t0 = time.perf_counter()
            model.fit(X)
            out[f"{training}_epoch_seconds"] = time.perf_counter() - t0
    rows = X[: min(n, score_rows)]
    t0 = time.perf_counter()
    model.score_samples(rows)
    out["score_seconds_per_row"] = (time.perf_counter() - t0) / rows.shape[0]
    return out


KEYS = ("flow_matching_epoch_seconds", "likelihood_epoch_seconds", "score_seconds_per_row")


def slope(xs, ys):
    """Least-squares exponent of ``y ~ x^k`` over the points given."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv=None):
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", default="1000,10000,100000,1000000")
    parser.add_argument("--n-fixed-d", type=int, default=8, help="d of the sweep over n")
    parser.add_argument("--ds", default="2,4,8,16,32,64")
    parser.add_argument("--d-fixed-n", type=int, default=10_000, help="n of the sweep over d")
    parser.add_argument("--score-rows", type=int, default=20_000)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of warm-up fit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="scaling.json")
    parser.add_argument("--plot", default="scaling.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    over_n = []
    for n in (int(v) for v in args.ns.split(",")):
        over_n.append(measure(args.n_fixed_d, n, args.score_rows, args.warmup, args.seed))
        print(json.dumps(over_n[-1]), flush=True)
    over_d = []
    for d in (int(v) for v in args.ds.split(",")):
        over_d.append(measure(d, args.d_fixed_n, args.score_rows, args.warmup, args.seed))
        print(json.dumps(over_d[-1]), flush=True)

    def exponents(points, key):
        xs = [p[key] for p in points]
        return {k: slope(xs, [p[k] for p in points]) for k in KEYS}

    summary = {"over_n": exponents(over_n, "n"), "over_d": exponents(over_d, "d")}
    lines = [
        f"n sweep at d={args.n_fixed_d}; d sweep at n={args.d_fixed_n}; {args.threads} threads",
        "",
        "| sweep | value | s / flow-matching epoch | s / likelihood epoch | ms / scored row |",
        "|---|---|---|---|---|",
    ]
    for key, points in (("n", over_n), ("d", over_d)):
        for p in points:
            lines.append(
                f"| {key} | {p[key]} | {p[KEYS[0]]:.2f} | {p[KEYS[1]]:.2f} | "
                f"{1e3 * p[KEYS[2]]:.3f} |"
            )
    lines.append("")
    for key in ("n", "d"):
        e = summary[f"over_{key}"]
        lines.append(
            f"exponents against {key}: flow-matching epoch {e[KEYS[0]]:.2f}, likelihood epoch "
            f"{e[KEYS[1]]:.2f}, score per row {e[KEYS[2]]:.2f}"
        )
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as fh:
        json.dump(
            {"args": vars(args), "over_n": over_n, "over_d": over_d, "exponents": summary},
            fh,
            indent=2,
        )
    plot(over_n, over_d, summary, args.plot)
    return summary


def plot(over_n, over_d, summary, path):
    """Two log-log panels: cost against n and against d."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = ("s per flow-matching epoch", "s per likelihood epoch", "ms per scored row")
    for ax, points, key in ((axes[0], over_n, "n"), (axes[1], over_d, "d")):
        xs = [p[key] for p in points]
        e = summary[f"over_{key}"]
        for k, label, marker in zip(KEYS, labels, "os^", strict=True):
            scale = 1e3 if k == "score_seconds_per_row" else 1.0
            ax.loglog(
                xs,
                [scale * p[k] for p in points],
                marker=marker,
                label=f"{label} (~{key}^{e[k]:.2f})",
            )
        ax.set_xlabel(key)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.minorticks_off()
        ax.set_title(f"cost against {key}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
