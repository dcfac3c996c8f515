"""Peak memory of fitting, scoring and sampling against the number of rows, from a file.

For each n, a fresh process memory-maps an ``n x d`` float32 ``.npy`` file (the synthetic
stand-in of ``maf_datasets.py``), fits ``FFJORDDensity`` on it (``--fit-iter`` epochs, at
most ``--fit-time`` seconds in all), scores all its rows and draws as many samples.
Reported per n: the peak growth of the process's anonymous memory (``RssAnon``: what the
process allocated, not the file's pages, which the kernel can drop) during the fit, and
during scoring and sampling beyond the arrays they return, with their seconds. Linux only
(``/proc/self/status``).

    python benchmarks/memory.py --rows 10000,100000,1000000,10000000 --fit-time 120 \
        --out benchmarks/results/memory.json --plot benchmarks/results/memory.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _anonymous_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class _PeakMemory:
    """The largest growth of anonymous memory over the ``with`` block, polled every 5 ms."""

    def __enter__(self) -> _PeakMemory:
        self.start = self.peak = _anonymous_bytes()
        self._running = True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while self._running:
            self.peak = max(self.peak, _anonymous_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _anonymous_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def _one(path: Path, fit_iter: int, fit_time: float | None, threads: int) -> dict:
    """Fit and score the memory-mapped file ``path`` in this process."""
    import warnings

    import torch

    from skffjord import FFJORDDensity

    torch.set_num_threads(threads)
    X = np.load(path, mmap_mode="r")
    model = FFJORDDensity(max_iter=fit_iter, max_time=fit_time, random_state=0)
    out = {"n": int(X.shape[0]), "d": int(X.shape[1]), "fit_time_limit": fit_time}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _PeakMemory() as fit_memory:
            t0 = time.perf_counter()
            model.fit(X)
            out["fit_seconds"] = time.perf_counter() - t0
    out["fit_steps"] = int(sum(r["n_steps"] for r in model.history_))
    with _PeakMemory() as score_memory:
        t0 = time.perf_counter()
        scores = model.score_samples(X)
        out["score_seconds"] = time.perf_counter() - t0
    with _PeakMemory() as sample_memory:
        t0 = time.perf_counter()
        samples = model.sample(len(X), random_state=0)
        out["sample_seconds"] = time.perf_counter() - t0
    out["sample_peak_mib"] = (sample_memory.growth - samples.nbytes) / 2**20
    out["samples_mib"] = samples.nbytes / 2**20
    del samples
    out["fit_peak_mib"] = fit_memory.growth / 2**20
    out["score_peak_mib"] = (score_memory.growth - scores.nbytes) / 2**20
    out["scores_mib"] = scores.nbytes / 2**20
    out["file_mib"] = X.nbytes / 2**20
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,100000,1000000", help="comma-separated n")
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--fit-iter", type=int, default=1, help="epochs of each fit")
    parser.add_argument("--fit-time", type=float, help="max_time of each fit (seconds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/skffjord-memory"))
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--plot", type=Path, help="PNG file to write")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child's file
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(_one(args.one, args.fit_iter, args.fit_time, args.threads)))
        return

    from maf_datasets import mixture_sinh

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in (int(v) for v in args.rows.split(",")):
        path = args.workdir / f"rows_{n}x{args.dim}.npy"
        if not path.exists():
            np.save(path, mixture_sinh(args.dim, n, 0, 0)[0].astype(np.float32))
        child = [sys.executable, __file__, "--one", str(path), "--fit-iter", str(args.fit_iter)]
        child += ["--threads", str(args.threads)]
        if args.fit_time is not None:
            child += ["--fit-time", str(args.fit_time)]
        line = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(line.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"n={n}: file {r['file_mib']:.0f} MiB; fit +{r['fit_peak_mib']:.0f} MiB in "
            f"{r['fit_seconds']:.1f} s; score +{r['score_peak_mib']:.0f} MiB beyond the "
            f"{r['scores_mib']:.1f} MiB of scores in {r['score_seconds']:.1f} s; sample "
            f"+{r['sample_peak_mib']:.0f} MiB beyond the {r['samples_mib']:.0f} MiB of samples "
            f"in {r['sample_seconds']:.1f} s",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)


def plot(results: list[dict], path: Path) -> None:
    """Draw memory and seconds against rows from ``results`` into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] for r in results]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].loglog(n, [r["fit_peak_mib"] for r in results], "o-", label="fit")
    ax[0].loglog(n, [max(r["score_peak_mib"], 1) for r in results], "s-", label="score*")
    ax[0].loglog(n, [max(r["sample_peak_mib"], 1) for r in results], "^-", label="sample*")
    ax[0].loglog(n, [r["file_mib"] for r in results], ":", label="the file")
    ax[0].set(xlabel="rows", ylabel="peak memory growth (MiB)")
    ax[0].set_title("* beyond the array returned (at least 1)", fontsize=9)
    ax[0].legend()
    ax[1].loglog(n, [r["fit_seconds"] for r in results], "o-", label="fit")
    ax[1].loglog(n, [r["score_seconds"] for r in results], "s-", label="score")
    ax[1].loglog(n, [r["sample_seconds"] for r in results], "^-", label="sample")
    ax[1].set(xlabel="rows", ylabel="seconds")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
