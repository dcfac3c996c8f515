"""Issue-4 targets from the JSON files of ``peers.py`` runs, one line per dataset.

For every file: test NLL of FFJORDDensity's defaults against zuko's CNFs (exact and
Hutchinson) and NSF, the score-throughput ratio against zuko's exact CNF, and the training
function evaluations per solve against our own maximum-likelihood run with regularisation off
(``ffjord_likelihood``), with the test NLL gap to it. Differences are ours minus theirs (nats,
negative = ours better).

    python benchmarks/summarize.py results/*.json
"""

from __future__ import annotations

import argparse
import json


def _by_model(path):
    with open(path) as fh:
        data = json.load(fh)
    results = {r["model"]: r for r in data["results"] if "error" not in r}
    return data["args"], results


def summarize(paths):
    lines = [
        "| dataset | ours − zuko CNF exact | ours − zuko CNF Hutchinson | ours − zuko NSF | "
        "rows/s ours ÷ zuko CNF exact | NFE/solve ours ÷ likelihood run | "
        "ours − likelihood run |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        args, r = _by_model(path)
        ours = r.get("ffjord_default")
        if ours is None:
            continue
        if args.get("synthetic"):
            label = f"{args['dataset']} (synthetic stand-in)"
        elif args["dataset"] == "bsds300" and args.get("bsds300_source") == "images":
            label = "bsds300 (patches of the real images)"
        else:
            label = f"{args['dataset']} (real)"

        def gap(name, ours=ours, r=r):
            other = r.get(name)
            if other is None:
                return "n/a"
            return f"{ours['test_nll'] - other['test_nll']:+.2f}"

        exact = r.get("zuko_cnf_exact")
        speed = f"{ours['score_rows_per_s'] / exact['score_rows_per_s']:.1f}×" if exact else "n/a"
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
    args = parser.parse_args(argv)
    print(summarize(args.paths))


if __name__ == "__main__":
    main()
