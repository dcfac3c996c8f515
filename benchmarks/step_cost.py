"""Cost of one likelihood training step, with and without RNODE's penalties, side by side.

One step = the default training solve (``TRAINING_FIXED_STEPS`` RK4 steps, closed-form exact
trace) of a batch of 512 rows, the loss's backward pass and an Adam update, at the default
width for each d, on a field with random weights. Five settings: no penalties; both
penalties with the Jacobian penalty's product as a vector-Jacobian product
(``|eps^T J|^2``, whose backward pass differentiates the VJP again); both penalties with the
product pushed forward through the linearised network (``|J eps|^2``) at every row; the same
at a random share of the rows, weighted up (``JACOBIAN_PENALTY_SHARE``, the package's
setting); and that again under bfloat16 autocast (``solver={'dtype': 'bfloat16'}``). Median
milliseconds of 20 steps after 3 warm-up steps, 2 threads.

    python benchmarks/step_cost.py
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None):
    import torch

    import skffjord._cnf_block as flow_module
    from skffjord._divergence import hutchinson_trace
    from skffjord._dynamics import VectorField, auto_hidden_layer_sizes
    from skffjord._flow import FFJORDFlow, TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ds", default="6,8,21,43,63")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pushed_forward = VectorField.forward_with_trace

    def by_vjp(self, t, z, v=None, rows=None):
        if v is None:
            return pushed_forward(self, t, z)
        f, trace = pushed_forward(self, t, z)
        _, vjp = hutchinson_trace(f, z, v, create_graph=torch.is_grad_enabled())
        return f, trace, vjp

    share = flow_module.JACOBIAN_PENALTY_SHARE
    bf16 = torch.bfloat16
    settings = {
        "no penalties": (0.0, pushed_forward, share, None),
        "penalties, VJP": (0.01, by_vjp, 1.0, None),
        "penalties, pushed forward, every row": (0.01, pushed_forward, 1.0, None),
        f"penalties, pushed forward, {share:g} of the rows": (0.01, pushed_forward, share, None),
        "the same, bfloat16 autocast": (0.01, pushed_forward, share, bf16),
    }
    print(
        "| d | hidden | " + " | ".join(f"{name} ms" for name in settings)
        + " | VJP ÷ pushed | every row ÷ share | float32 ÷ bfloat16 |"
    )  # fmt: skip
    print("|---|---|" + "---|" * (len(settings) + 3))
    for d in (int(v) for v in args.ds.split(",")):
        hidden = auto_hidden_layer_sizes(d)
        row = []
        for reg, product, rows_share, autocast in settings.values():
            VectorField.forward_with_trace = product
            flow_module.JACOBIAN_PENALTY_SHARE = rows_share
            gen = torch.Generator().manual_seed(0)
            zeros, ones = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
            flow = FFJORDFlow(d, hidden, "softplus", 1, 1.0, zeros, ones, generator=gen).float()
            with torch.no_grad():
                flow.blocks[0].field.layers[-1].linear.weight.normal_(0, 0.05, generator=gen)
            optimizer = torch.optim.Adam(flow.parameters(), 1e-3)
            config = TrainConfig(
                method="rk4", trace_estimator="exact", kinetic_energy_reg=reg, jacobian_reg=reg
            )
            x = torch.randn(args.batch, d, generator=gen)
            times = []
            for _ in range(args.steps + 3):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=bf16, enabled=autocast is not None):
                    logp, penalty, _ = flow.train_log_prob(x, config, gen)
                optimizer.zero_grad()
                (penalty.mean() - logp.mean()).backward()
                optimizer.step()
                times.append(time.perf_counter() - t0)
            row.append(1e3 * statistics.median(times[3:]))
        VectorField.forward_with_trace = pushed_forward
        flow_module.JACOBIAN_PENALTY_SHARE = share
        print(
            f"| {d} | {hidden[0]}×2 | " + " | ".join(f"{ms:.1f}" for ms in row)
            + f" | {row[1] / row[2]:.2f}× | {row[2] / row[3]:.2f}× | {row[3] / row[4]:.2f}× |",
            flush=True,
        )  # fmt: skip


if __name__ == "__main__":
    main()
