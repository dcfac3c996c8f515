"""Scoring time against the page faults taken while scoring, one process at a time.

Fits the defaults briefly on a synthetic stand-in (NOT the real dataset) and pickles the
model, or loads a pickled model, then scores the 2,000 test rows three times and prints the
seconds and the minor page faults (``getrusage``) of each. The C allocator may hand large
blocks back to the system and take them again, so scoring time varies from one process to
the next with the number of faults. To compare two versions of the code on the same model,
run it under each one's ``PYTHONPATH`` in turn:

    python benchmarks/scoring_faults.py --dataset power --fit-seconds 240 --model power.pkl
    for i in 1 2 3 4; do
      PYTHONPATH=old python benchmarks/scoring_faults.py --model power.pkl
      PYTHONPATH=new python benchmarks/scoring_faults.py --model power.pkl
    done
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    import torch
    from maf_datasets import SHAPES, synthetic_stand_in

    import skffjord
    from skffjord import FFJORDDensity

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="power", choices=list(SHAPES))
    parser.add_argument("--fit-seconds", type=float, default=240.0)
    parser.add_argument("--model", required=True, help="pickle to load, or to write after a fit")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if os.path.exists(args.model):
        with open(args.model, "rb") as fh:
            model, test = pickle.load(fh)
    else:
        train, test = synthetic_stand_in(args.dataset, 50_000, 2_000, 0)
        model = FFJORDDensity(
            random_state=0, max_time=args.fit_seconds, early_stopping=True, max_iter=10**6
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(train)
        with open(args.model, "wb") as fh:
            pickle.dump((model, test), fh)
    model.score_samples(test[:200])  # warm-up
    line = [f"skffjord from {Path(skffjord.__file__).parent}:"]
    for _ in range(3):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        model.score_samples(test)
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        line.append(f"{seconds:.3f} s ({faults} faults)")
    print(" ".join(line), flush=True)


if __name__ == "__main__":
    main()
