"""Summarise ``real_tables.py`` output: one table per variant and the targets it meets.

For every table and variant: each model's held-out mean log-likelihood (mean over the seeds
run, higher is better) with the test set's twice standard error, the spread over seeds
(max - min), fit seconds and scoring rows/s; then FFJORDDensity's margin over the best
classical model (Gaussian, GaussianMixture, KernelDensity) and over the better of zuko's NSF
and MAF. Markdown on stdout; with ``--rst`` also a reStructuredText page for the
documentation (``docs/benchmark_results.rst``).

    python benchmarks/summarize_real_tables.py benchmarks/results/real_tables.jsonl \\
        --rst docs/benchmark_results.rst
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

CLASSICAL = ("gaussian", "gmm", "kde")
FLOWS = ("nsf", "maf")
#: ``ffjord_bounds`` (the declared bounds of a table's documentation) is shown where run;
#: the margins and targets count ``ffjord``, the defaults.
ORDER = ("ffjord", "gaussian", "gmm", "kde", "nsf", "maf", "ffjord_bounds")


def load(paths: list[str]) -> dict:
    """``{(table, variant): {model: [records]}}``; a later record of the same seed wins."""
    runs: dict = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                runs[(r["table"], r["variant"])][r["model"]][r["seed"]] = r
    return {k: {m: list(s.values()) for m, s in v.items()} for k, v in runs.items()}


def _stat(records: list[dict]) -> dict:
    lls = np.array([r["test_ll"] for r in records], dtype=float)
    return {
        "mean": float(lls.mean()),
        "spread": float(lls.max() - lls.min()) if len(lls) > 1 else math.nan,
        "se2": float(np.mean([r.get("test_ll_2se", math.nan) for r in records])),
        "fit": float(np.mean([r.get("fit_seconds", math.nan) for r in records])),
        "rows": float(np.min([r.get("score_rows_per_s", math.nan) for r in records])),
        "seeds": len(records),
        "error": next((r["error"] for r in records if "error" in r), None),
    }


def rows_for(runs: dict) -> list[dict]:
    """One summary row per table and variant."""
    out = []
    for (table, variant), models in sorted(runs.items()):
        first = next(iter(next(iter(models.values()))))
        stats = {m: _stat(rs) for m, rs in models.items()}
        row = {"table": table, "variant": variant, "n": first["n_train"], "d": first["d"]}
        row["stats"] = stats
        classical = [stats[m]["mean"] for m in CLASSICAL if m in stats]
        flows = [stats[m]["mean"] for m in FLOWS if m in stats]
        ours = stats.get("ffjord")
        row["vs_classical"] = ours["mean"] - max(classical) if ours and classical else math.nan
        row["vs_flows"] = ours["mean"] - max(flows) if ours and flows else math.nan
        row["vs_gaussian"] = (
            ours["mean"] - stats["gaussian"]["mean"] if ours and "gaussian" in stats else math.nan
        )
        out.append(row)
    return out


def _fmt(x: float, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    lines = []
    for variant in sorted({r["variant"] for r in rows}):
        lines += [
            f"### {variant}",
            "",
            "| table | n_train x d | " + " | ".join(ORDER) + " | ours - best classical "
            "| ours - best of NSF/MAF | ours: spread over seeds (2 s.e.) | ours: fit s, rows/s |",
            "|---" * (len(ORDER) + 6) + "|",
        ]
        for r in (r for r in rows if r["variant"] == variant):
            s = r["stats"]
            cells = [_fmt(s[m]["mean"]) if m in s else "" for m in ORDER]
            ours = s.get("ffjord", {})
            lines.append(
                f"| {r['table']} | {r['n']} x {r['d']} | "
                + " | ".join(cells)
                + f" | {_fmt(r['vs_classical'])} | {_fmt(r['vs_flows'])} "
                f"| {_fmt(ours.get('spread'))} ({_fmt(ours.get('se2'))}) "
                f"| {_fmt(ours.get('fit'), 0)}, {_fmt(ours.get('rows'), 0)} |"
            )
        lines.append("")
    return "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """The quality targets, counted over the tables run."""
    lines = []
    deq = [r for r in rows if r["variant"] == "dequantized" and "ffjord" in r["stats"]]
    raw = [r for r in rows if r["variant"] == "raw" and "ffjord" in r["stats"]]
    if deq:
        ok = sum(r["vs_classical"] >= 0 for r in deq)
        lines.append(f"- dequantized: at or above the best classical model on {ok} of {len(deq)}")
        flows = [r for r in deq if not math.isnan(r["vs_flows"])]
        if flows:
            ahead = sum(r["vs_flows"] >= 0 for r in flows)
            near = sum(r["vs_flows"] >= -1 for r in flows)
            lines.append(
                f"- dequantized: at or above the better of NSF/MAF on {ahead} of {len(flows)}, "
                f"within 1 nat on {near} of {len(flows)}"
            )
    if raw:
        ok = sum(r["vs_gaussian"] >= 0 for r in raw)
        lines.append(f"- raw: at or above the full-covariance Gaussian on {ok} of {len(raw)}")
    both = deq + raw
    seeds = [r for r in both if r["stats"]["ffjord"]["seeds"] > 1]
    if seeds:
        ok = sum(r["stats"]["ffjord"]["spread"] < r["stats"]["ffjord"]["se2"] for r in seeds)
        lines.append(f"- spread over seeds below the test set's 2 s.e. on {ok} of {len(seeds)}")
    if both:
        ok = sum(r["stats"]["ffjord"]["rows"] >= 1000 for r in both)
        lines.append(f"- score_samples at least 1,000 rows/s on {ok} of {len(both)}")
    return "\n".join(lines)


def rst(rows: list[dict], command: str) -> str:
    """The documentation page: the same tables as reStructuredText list-tables."""
    out = [
        ".. This file is written by benchmarks/summarize_real_tables.py; do not edit.",
        "",
        "Current results on real tables",
        "------------------------------",
        "",
        "Held-out mean log-likelihood in nats per row in each table's own units (higher is "
        "better), mean over the seeds run. Regenerate with::",
        "",
        f"   {command}",
        "",
    ]
    for line in targets(rows).splitlines():
        out.append(line)
    out.append("")
    for variant in sorted({r["variant"] for r in rows}):
        out += [
            f".. list-table:: {variant}",
            "   :header-rows: 1",
            "",
            "   * - table",
            "     - n x d",
            *[f"     - {m}" for m in ORDER],
            "     - ours - best classical",
            "     - ours - best flow",
            "     - spread (2 s.e.)",
            "     - rows/s",
        ]
        for r in (r for r in rows if r["variant"] == variant):
            s = r["stats"]
            ours = s.get("ffjord", {})
            cells = [
                r["table"],
                f"{r['n']} x {r['d']}",
                *[_fmt(s[m]["mean"]) if m in s else "" for m in ORDER],
                _fmt(r["vs_classical"]),
                _fmt(r["vs_flows"]),
                f"{_fmt(ours.get('spread'))} ({_fmt(ours.get('se2'))})",
                _fmt(ours.get("rows"), 0),
            ]
            out.append(f"   * - {cells[0]}")
            out += [f"     - {c}" for c in cells[1:]]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", nargs="+", help="real_tables.py output files")
    parser.add_argument("--rst", help="also write this reStructuredText page")
    parser.add_argument(
        "--command",
        default="python benchmarks/real_tables.py --out benchmarks/results/real_tables.jsonl",
        help="the command quoted on the page",
    )
    args = parser.parse_args(argv)
    rows = rows_for(load(args.jsonl))
    print(markdown(rows))
    print(targets(rows))
    if args.rst:
        Path(args.rst).write_text(rst(rows, args.command) + "\n")


if __name__ == "__main__":
    main()
