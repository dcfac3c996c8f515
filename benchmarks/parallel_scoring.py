"""Scoring in k processes against one process with k threads.

``score_samples`` solves each row with its own step size, so rows can be scored in any
split. This measures whether k worker processes (joblib's loky backend, one PyTorch thread
each, the fitted model sent to each) score faster than one process with k threads, for k
from 1 to ``--max-workers``. Reported per k: rows per second of both, their ratio, and the
largest difference between the split scores and the serial ones (0 with
``eval_solver={'dtype': 'float64'}``; float32 scores move by rounding with their batch-mates).
Data: the synthetic stand-in of ``maf_datasets.py`` at ``--dim`` (a scale test).

    python benchmarks/parallel_scoring.py --out benchmarks/results/parallel_scoring.json

Run it alone on the machine: the comparison is of how the cores are used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _score_part(model, rows: np.ndarray) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    return model.score_samples(rows)


def _threads(model, rows: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    import torch

    torch.set_num_threads(k)
    t0 = time.perf_counter()
    scores = model.score_samples(rows)
    return time.perf_counter() - t0, scores


def _processes(model, rows: np.ndarray, k: int, pool) -> tuple[float, np.ndarray]:
    from joblib import delayed

    parts = np.array_split(rows, k)
    t0 = time.perf_counter()
    scores = np.concatenate(pool(delayed(_score_part)(model, part) for part in parts))
    return time.perf_counter() - t0, scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=8, help="columns of the synthetic data")
    parser.add_argument("--rows", type=int, default=8000, help="rows scored")
    parser.add_argument("--fit-seconds", type=float, default=30.0, help="fit budget")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--eval-dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=3, help="timings per point (best)")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)

    import torch
    from joblib import Parallel
    from maf_datasets import mixture_sinh

    from skffjord import FFJORDDensity

    X = mixture_sinh(args.dim, 20_000 + args.rows, 0, 0)[0]
    train, rows = X[:20_000], X[20_000:]
    torch.set_num_threads(args.max_workers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FFJORDDensity(
            max_time=args.fit_seconds, random_state=0, eval_solver={"dtype": args.eval_dtype}
        ).fit(train)
    _, serial = _threads(model, rows, 1)
    results = []
    for k in range(1, args.max_workers + 1):
        threads = min(_threads(model, rows, k)[0] for _ in range(args.repeats))
        with Parallel(n_jobs=k, backend="loky") as pool:
            _processes(model, rows[: 64 * k], k, pool)  # start the workers
            runs = [_processes(model, rows, k, pool) for _ in range(args.repeats)]
        seconds = min(r[0] for r in runs)
        split = runs[0][1]
        results.append(
            {
                "k": k,
                "threads_rows_per_s": len(rows) / threads,
                "processes_rows_per_s": len(rows) / seconds,
                "processes_over_threads": threads / seconds,
                "max_abs_difference_from_serial": float(np.max(np.abs(split - serial))),
            }
        )
        r = results[-1]
        print(
            f"k={k}: {k} threads {r['threads_rows_per_s']:.0f} rows/s, {k} processes "
            f"{r['processes_rows_per_s']:.0f} rows/s (x{r['processes_over_threads']:.2f}), "
            f"max |split - serial| {r['max_abs_difference_from_serial']:.2e}",
            flush=True,
        )
    report = {
        "dim": args.dim,
        "rows": args.rows,
        "eval_dtype": args.eval_dtype,
        "cpu_count": os.cpu_count(),
        "fit_epochs": model.n_iter_,
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
