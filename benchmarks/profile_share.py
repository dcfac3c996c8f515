"""Where the time goes: the share of wall time spent inside the vector field's network.

A model with the default settings is fitted briefly on a synthetic stand-in (NOT the real
dataset); then three phases are timed with the network's forward (and closed-form trace)
calls wrapped by a timer:
- a flow-matching epoch (forward and backward of the regression loss);
- a likelihood epoch through the default training solver (rk4 with its default step count,
  RNODE's penalties on);
- ``score_samples`` (per-row dopri5, exact trace, float32 by default).
The remainder is solver bookkeeping, autograd outside the network, data handling and Python.
Backward passes are charged to the remainder, so the network share is a lower bound in the
training phases.

    python benchmarks/profile_share.py --dataset miniboone
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class _Timer:
    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            return out

        return timed


def main(argv=None):
    import torch
    from maf_datasets import SHAPES, synthetic_stand_in
    from sklearn.exceptions import ConvergenceWarning

    from skffjord import FFJORDDensity

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="miniboone", choices=list(SHAPES))
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=1_000)
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = synthetic_stand_in(args.dataset, args.n_train, args.n_test, 0)

    model = FFJORDDensity(random_state=0, max_iter=10**6, max_time=args.warmup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train)
    from skffjord._dynamics import VectorField

    field = model.flow_.blocks[0].field
    timer = _Timer()  # patched on the class: fits may copy the model
    # every entry to the network: the plain field (flow matching), the closed-form trace
    # with or without the Jacobian penalty's product (likelihood training, validation) and
    # the buffered scoring path; none of them calls another
    for name in ("forward", "forward_with_trace", "forward_with_trace_into"):
        setattr(VectorField, name, timer.wrap(getattr(VectorField, name)))

    def phase(name, run):
        timer.seconds = 0.0
        t0 = time.perf_counter()
        run()
        total = time.perf_counter() - t0
        print(
            f"{name}: {total:.2f} s, network {timer.seconds:.2f} s "
            f"({100 * timer.seconds / total:.0f}%)",
            flush=True,
        )

    def epoch(training):
        def run():
            model.set_params(training=training, warm_start=True, max_iter=1, max_time=None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(train)

        return run

    print(f"{args.dataset} stand-in, d={train.shape[1]}, n={train.shape[0]}, {field}")
    phase("flow-matching epoch", epoch("flow_matching"))
    phase("likelihood epoch (default rk4 steps)", epoch("likelihood"))
    phase(f"score_samples on {args.n_test} rows", lambda: model.score_samples(test))


if __name__ == "__main__":
    main()
