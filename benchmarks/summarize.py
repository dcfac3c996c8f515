"""Issue-4 targets from the JSON files of ``peers.py`` runs, one line per dataset.

For every file: test NLL of FFJORDDensity's defaults against zuko's CNFs (exact and
Hutchinson) and NSF, the score-throughput ratio against zuko's exact CNF, and the training
function evaluations per solve against our own maximum-likelihood run with regularisation off
(``ffjord_likelihood``), with the test NLL gap to it. Differences are ours minus theirs (nats,
negative = ours better).

    python benchmarks/summarize.py results/*.json

Files of the same dataset, split and budget (equal ``args`` apart from the model list and
the output names) are merged, later files replacing earlier ones model by model: a rerun of
one model after a change to it is compared with the peers' runs on the same rows. Files
whose splits differ are never merged (splits are identified by the arguments only: merge
files of the same code version of ``maf_datasets.py``). ``--table`` prints the merged test
NLL of every model with the file each came from; ``--plot`` draws the merged validation
curves, one panel per dataset.
"""

from __future__ import annotations

import argparse
import json
import math

_PER_RUN = ("models", "out", "plot", "timing_rounds", "scorer_dir")


def _by_model(path):
    with open(path) as fh:
        data = json.load(fh)
    results = {r["model"]: r for r in data["results"] if "error" not in r}
    return data["args"], results


def merged(paths):
    """``[(args, {model: result, ...}, {model: path})]``, one entry per distinct split."""
    runs = []
    for path in paths:
        args, results = _by_model(path)
        key = {k: v for k, v in args.items() if k not in _PER_RUN}
        for run_key, _, models, sources in runs:
            if run_key == key:
                models.update(results)
                sources.update(dict.fromkeys(results, path))
                break
        else:
            runs.append((key, args, dict(results), dict.fromkeys(results, path)))
    return [(args, models, sources) for _, args, models, sources in runs]


def _label(args):
    if args.get("synthetic"):
        return f"{args['dataset']} (synthetic stand-in)"
    if args["dataset"] == "bsds300" and args.get("bsds300_source") == "images":
        return "bsds300 (patches of the real images)"
    return f"{args['dataset']} (real)"


def nll_table(paths):
    """Test NLL ± 2 s.e. of every model, one row per dataset (merged runs)."""
    runs = merged(paths)
    names = []
    for _, models, _ in runs:
        names += [m for m in models if m not in names]
    lines = ["| dataset | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for args, models, _ in runs:
        cells = [
            f"{models[m]['test_nll']:.3f} ± {models[m]['test_nll_2se']:.3f}" if m in models else ""
            for m in names
        ]
        lines.append(f"| {_label(args)} | " + " | ".join(cells) + " |")
    lines.append("")
    for args, _, sources in runs:
        for model, path in sources.items():
            lines.append(f"- {_label(args)}, {model}: {path}")
    return "\n".join(lines)


def plot_curves(paths, out):
    """Validation NLL against wall time of every model, one panel per dataset (merged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = merged(paths)
    ncols = min(3, len(runs))
    nrows = -(-len(runs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.set_visible(False)
    for ax, (args, models, _) in zip(axes.flat, runs, strict=False):
        values = []
        for name, result in models.items():
            curve = [(t, v) for t, v in result.get("curve") or [] if math.isfinite(v)]
            if curve:
                t, v = zip(*curve, strict=True)
                ax.plot(t, v, marker="." if len(t) < 30 else None, label=name)
                values += list(v)
        if values:  # clip the early, very high values so the ends are readable
            lo, hi = min(values), sorted(values)[int(0.9 * (len(values) - 1))]
            ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
        ax.set(title=_label(args), xlabel="wall time (s)", ylabel="validation NLL (nats)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def summarize(paths):
    lines = [
        "| dataset | ours − zuko CNF exact | ours − zuko CNF Hutchinson | ours − zuko NSF | "
        "rows/s ours ÷ zuko CNF exact | NFE/solve ours ÷ likelihood run | "
        "ours − likelihood run |",
        "|---|---|---|---|---|---|---|",
    ]
    for args, r, sources in merged(paths):
        ours = r.get("ffjord_default")
        if ours is None:
            continue
        label = _label(args)

        def gap(name, ours=ours, r=r):
            other = r.get(name)
            if other is None:
                return "n/a"
            return f"{ours['test_nll'] - other['test_nll']:+.2f}"

        exact = r.get("zuko_cnf_exact")
        speed = "n/a"
        same_run = exact and sources.get("zuko_cnf_exact") == sources.get("ffjord_default")
        if same_run and exact.get("rows_per_s_vs_ours_interleaved"):  # timed side by side
            speed = f"{1 / exact['rows_per_s_vs_ours_interleaved']:.1f}×"
        elif exact:
            speed = f"{ours['score_rows_per_s'] / exact['score_rows_per_s']:.1f}×"
        base = r.get("ffjord_likelihood")
        nfe = "n/a"
        if base and ours.get("nfe_per_solve") and base.get("nfe_per_solve"):
            nfe = f"{ours['nfe_per_solve'] / base['nfe_per_solve']:.2f}"
        lines.append(
            f"| {label} | {gap('zuko_cnf_exact')} | {gap('zuko_cnf_hutchinson')} | "
            f"{gap('zuko_nsf')} | {speed} | {nfe} | {gap('ffjord_likelihood')} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--table", action="store_true", help="also print every model's NLL")
    parser.add_argument("--plot", default=None, help="write the merged validation curves here")
    args = parser.parse_args(argv)
    print(summarize(args.paths))
    if args.table:
        print()
        print(nll_table(args.paths))
    if args.plot:
        plot_curves(args.paths, args.plot)


if __name__ == "__main__":
    main()
