"""Thread settings: what a second intra-op thread buys in each phase of a default fit.

For each d, on the synthetic stand-in of that shape (10,000 training rows), with the
estimator's defaults: milliseconds per flow-matching optimizer step and per likelihood step
(from ``history_``: the median over epochs 2 to 11 of flow matching and 2 to 3 of
likelihood training, each phase fitted on its own), and ``score_samples``
throughput on 2,000 test rows of one fitted model (best of three passes), each at 1 and at
2 intra-op threads (``torch.set_num_threads``). Run it with nothing else on the machine.

    python benchmarks/threads.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DATASETS = ("power", "gas", "hepmass", "miniboone", "bsds300")


def _fit(model, train):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(train)


def _ms_per_step(model, train) -> float:
    """Median milliseconds per optimizer step over the epochs after the first (warm-up)."""
    _fit(model, train)
    ends = [0.0] + [h["time"] for h in model.history_]
    per_step = [
        (ends[i + 1] - ends[i]) / h["n_steps"] for i, h in enumerate(model.history_) if i > 0
    ]
    return 1e3 * statistics.median(per_step)


def _rows_per_s(model, test) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        model.score_samples(test)
        best = min(best, time.perf_counter() - t0)
    return len(test) / best


def main(argv=None) -> None:
    import torch
    from maf_datasets import synthetic_stand_in

    from skffjord import FFJORDDensity

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args(argv)
    counts = [int(v) for v in args.threads.split(",")]

    cols = ["flow-matching step ms", "likelihood step ms", "score rows/s"]
    head = " | ".join(f"{c} ({n} thr)" for c in cols for n in counts)
    print(f"| dataset | d | {head} | 2nd thread: FM, likelihood, scoring |")
    print("|---|---|" + "---|" * (len(cols) * len(counts) + 1))
    for name in args.datasets.split(","):
        train, test = synthetic_stand_in(name, args.n_train, 2000, 0)
        fm, lik, rate = {}, {}, {}
        for n in counts:
            torch.set_num_threads(n)
            fm[n] = _ms_per_step(
                FFJORDDensity(training="flow_matching", max_iter=11, random_state=0), train
            )
            lik[n] = _ms_per_step(
                FFJORDDensity(training="likelihood", max_iter=3, random_state=0), train
            )
        torch.set_num_threads(max(counts))
        model = _fit(FFJORDDensity(max_iter=20, random_state=0), train)
        for n in counts:
            torch.set_num_threads(n)
            rate[n] = _rows_per_s(model, test)
        cells = [f"{m[n]:.1f}" for m in (fm, lik) for n in counts]
        cells += [f"{rate[n]:,.0f}" for n in counts]
        lo, hi = min(counts), max(counts)
        gains = f"{fm[lo] / fm[hi]:.2f}×, {lik[lo] / lik[hi]:.2f}×, {rate[hi] / rate[lo]:.2f}×"
        print(f"| {name} | {train.shape[1]} | " + " | ".join(cells) + f" | {gains} |", flush=True)


if __name__ == "__main__":
    main()
