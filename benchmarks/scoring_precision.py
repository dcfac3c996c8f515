"""Scoring speed and accuracy against the precision and tolerance of the evaluation solver.

Fits FFJORDDensity with its defaults for ``--budget`` seconds on a synthetic stand-in, then
scores the test rows with each (dtype, atol, rtol) setting: rows/s (best of ``--repeats``
passes), the batched function evaluations of the per-row solver (those of the slowest row)
and the error against the same model scored in float64 at atol = rtol = 1e-10.

    python benchmarks/scoring_precision.py --dataset power --budget 120
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

SETTINGS = (
    ("float64", 1e-6, 1e-6),
    ("float64", 1e-6, 1e-5),
    ("float32", 1e-6, 1e-6),
    ("float32", 1e-6, 1e-5),
    ("float32", 1e-5, 1e-5),
)


def main(argv=None):
    import torch
    from maf_datasets import synthetic_stand_in
    from sklearn.exceptions import ConvergenceWarning

    from skffjord import FFJORDDensity

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="power")
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    train, test = synthetic_stand_in(args.dataset, args.n_train, args.n_test, args.seed)
    model = FFJORDDensity(
        early_stopping=True, max_iter=10**6, max_time=args.budget, random_state=args.seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train)

    def score(dtype, atol, rtol):
        model.set_params(eval_dtype=dtype, eval_atol=atol, eval_rtol=rtol)
        return model.score_samples(test)

    reference = score("float64", 1e-10, 1e-10)
    flow = model.flow_
    u = flow.standardize(torch.as_tensor(test))
    rows = []
    for dtype, atol, rtol in SETTINGS:
        seconds = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            scores = score(dtype, atol, rtol)
            seconds.append(time.perf_counter() - t0)
        config = model._eval_config()
        blocks = flow._blocks_for(config)
        with torch.no_grad():
            _, _, nfe = blocks[0].forward_exact(u.to(config.dtype), config)
        error = np.abs(scores - reference)
        rows.append(
            dict(
                dtype=dtype,
                atol=atol,
                rtol=rtol,
                rows_per_s=len(test) / min(seconds),
                nfe=nfe,
                max_error=float(error.max()),
                mean_error=float(error.mean()),
                mean_log_likelihood=float(scores.mean()),
            )
        )
    print(
        f"{args.dataset} stand-in (synthetic), d={train.shape[1]}, fit {args.budget:.0f} s, "
        f"{len(test)} test rows, {args.threads} threads"
    )
    print("| dtype | atol / rtol | rows/s | NFE | max error | mean error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dtype']} | {r['atol']:g} / {r['rtol']:g} | {r['rows_per_s']:.0f} | "
            f"{r['nfe']} | {r['max_error']:.1e} | {r['mean_error']:.1e} |"
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
