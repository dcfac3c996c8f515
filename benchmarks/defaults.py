"""FFJORDDensity configurations side by side, each fitted for the same wall-clock budget.

The documentation's comparisons of settings use it. Every configuration is fitted on the
same synthetic stand-in (``maf_datasets.synthetic_stand_in``: NOT the real dataset), then
scored on the same test rows.
Reported: test NLL ± 2 s.e. (nats, lower is better), fit seconds, optimizer steps and score
throughput. The configurations are JSON: ``{"name": {FFJORDDensity parameters}}``.

    python benchmarks/defaults.py --dataset power --budget 60 --configs \\
      '{"fm64": {"training": "flow_matching", "hidden_layer_sizes": [64, 64]},
        "fm256": {"training": "flow_matching", "hidden_layer_sizes": [256, 256]},
        "hybrid256": {"training": "hybrid", "hidden_layer_sizes": [256, 256]}}'
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _phases(history):
    """Epochs, optimizer steps, seconds and best validation score of each training phase."""
    phases, previous_time = {}, 0.0
    for h in history:
        p = phases.setdefault(
            h.get("phase", "likelihood"),
            {"epochs": 0, "steps": 0, "seconds": 0.0, "best_valid": float("-inf"), "gaps": []},
        )
        if not math.isnan(h.get("solver_gap", math.nan)):  # likelihood epochs only
            p["gaps"].append(round(h["solver_gap"], 3))
        p["epochs"] += 1
        p["steps"] += h["n_steps"]
        p["seconds"] += h["time"] - previous_time
        p["best_valid"] = max(p["best_valid"], h["valid_score"])  # NaN without validation
        previous_time = h["time"]
    return phases


def main(argv=None):
    import torch
    from maf_datasets import SHAPES, synthetic_stand_in, timed_fit_score

    from skffjord import FFJORDDensity

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="power", choices=list(SHAPES))
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", required=True, help="JSON: name -> parameters")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train, test = synthetic_stand_in(args.dataset, args.n_train, args.n_test, args.seed)
    results = {}
    for name, params in json.loads(args.configs).items():
        if "hidden_layer_sizes" in params and not isinstance(params["hidden_layer_sizes"], str):
            params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        model = FFJORDDensity(
            max_iter=10**6, max_time=args.budget, random_state=args.seed, **params
        )
        scores, fit_seconds, score_seconds = timed_fit_score(model, train, test)
        results[name] = {
            "test_nll": -float(scores.mean()),
            "test_nll_2se": float(2 * scores.std(ddof=1) / np.sqrt(scores.size)),
            "fit_seconds": fit_seconds,
            "steps": sum(h["n_steps"] for h in model.history_),
            "score_rows_per_s": scores.size / score_seconds,
            "phases": _phases(model.history_),
        }
        r = results[name]
        print(
            f"{args.dataset} {name}: test NLL {r['test_nll']:.3f} ± {r['test_nll_2se']:.3f} "
            f"fit {fit_seconds:.0f} s, {r['steps']} steps, "
            f"score {r['score_rows_per_s']:.0f} rows/s; "
            + "; ".join(
                f"{p}: {v['epochs']} epochs, {v['steps']} steps, {v['seconds']:.0f} s, "
                f"best valid {v['best_valid']:.3f}"
                + (f", solver gaps {v['gaps']}" if v["gaps"] else "")
                for p, v in r["phases"].items()
            ),
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
