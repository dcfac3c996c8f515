"""Cost of one function evaluation with each trace, side by side, at the default widths.

For each d: the field alone, the field with the closed-form exact trace, the field with the
exact trace from d batched vector-Jacobian products (what zuko's exact CNF and FFJORD's
reference code compute), and the field with one Hutchinson product. Float64, a batch of
2,000 rows at random times, a field with random weights; milliseconds per evaluation (best of
five repeats of ten) and the ratio to the closed form.

    python benchmarks/trace_cost.py
"""

from __future__ import annotations

import argparse
import time


def best_ms(fn, repeats=5, number=10):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return 1e3 * min(times)


def main(argv=None):
    import torch

    from skffjord._divergence import exact_trace, hutchinson_trace
    from skffjord._dynamics import VectorField, auto_hidden_layer_sizes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ds", default="6,8,21,43,63")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)

    print(
        "| d | hidden | field ms | + closed-form trace ms | + d VJPs (exact) ms | "
        "+ 1 VJP (Hutchinson) ms | exact by VJPs ÷ closed form |"
    )
    print("|---|---|---|---|---|---|---|")
    for d in (int(v) for v in args.ds.split(",")):
        hidden = auto_hidden_layer_sizes(d)
        field = VectorField(d, hidden, "softplus", generator=gen).double()
        with torch.no_grad():
            field.layers[-1].linear.weight.normal_(0, 0.1, generator=gen)
        z = torch.randn(args.rows, d, dtype=torch.float64, generator=gen)
        t = torch.rand(args.rows, 1, dtype=torch.float64, generator=gen)
        probe = torch.randn(args.rows, d, dtype=torch.float64, generator=gen)

        def plain(field=field, z=z, t=t):
            with torch.no_grad():
                field(t, z)

        def closed(field=field, z=z, t=t):
            with torch.no_grad():
                field.forward_with_trace(t, z)

        def by_vjps(field=field, z=z, t=t):
            x = z.detach().requires_grad_(True)
            exact_trace(field(t, x), x, create_graph=False)

        def hutchinson(field=field, z=z, t=t, probe=probe):
            x = z.detach().requires_grad_(True)
            hutchinson_trace(field(t, x), x, probe, create_graph=False)

        ms = [best_ms(f) for f in (plain, closed, by_vjps, hutchinson)]
        print(
            f"| {d} | {hidden[0]}×2 | {ms[0]:.2f} | {ms[1]:.2f} | {ms[2]:.2f} | {ms[3]:.2f} | "
            f"{ms[2] / ms[1]:.1f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
