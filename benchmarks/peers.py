"""FFJORDDensity against its peers, side by side, at an equal wall-clock budget per model.

Every model trains in its own spawned process (same thread count, same splits, same budget),
so that peak memory is measured per model. Reported per model: test negative log-likelihood in
nats per row ± 2 standard errors (MAF convention: standardised data, lower is better), fit
seconds, optimizer steps, function evaluations per training solve (ours and zuko's CNF),
score throughput in rows/s and peak resident memory. Output: a markdown table on stdout, a JSON
file and a plot of validation NLL against wall time.

Models: FFJORDDensity with its defaults (one fit with ``max_time`` = budget and
``early_stopping=True``, so that it keeps its best-validation weights like the zuko runs) and
with ``training="likelihood"`` through dopri5 with regularisation off (FFJORD's recipe, trained
in ten warm-started slices; ``ffjord_flow_matching`` can be asked for with ``--models``);
zuko's CNF with
the exact trace (its default) and with the Hutchinson estimator; zuko's NSF and MAF; scikit-learn's
GaussianMixture (components chosen on validation) and KernelDensity (bandwidth chosen on
validation). Peers that are not installed are skipped with a message (``pip install .[bench]``).

    python benchmarks/peers.py --dataset miniboone --synthetic --budget 600 --out peers.json
    python benchmarks/peers.py --dataset bsds300 --bsds300-source images \\
        --images-dir /path/to/BSDS300/images --n-train 100000 --budget 600

Validation NLL is measured at about ten points during each fit, on at most ``--n-val`` rows;
that time is not charged to the budget. The best-validation weights are kept for the test.

Score throughput is timed twice: in each model's own process right after its fit (best of 3
passes), and, after all fits, in one more process that loads every fitted model and scores
the test rows with each in turn for ``--timing-rounds`` rounds (order rotated every round).
The table's ratio to ours is the median over rounds of the round's ratio: on a machine whose
speed drifts from minute to minute, passes seconds apart compare like with like, where
figures taken ten minutes apart in different processes need not.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import pickle
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = (
    "ffjord_default",
    "ffjord_likelihood",
    "zuko_cnf_exact",
    "zuko_cnf_hutchinson",
    "zuko_nsf",
    "zuko_maf",
    "gmm",
    "kde",
)


def load_splits(args):
    """Train/validation/test arrays (float64), standardised as in the MAF convention."""
    from maf_datasets import SHAPES, fetch_real, subsample, synthetic_stand_in

    rng = np.random.default_rng(args.seed)
    if args.synthetic:
        n_train = args.n_train or min(SHAPES[args.dataset][1], 50_000)
        n_val = args.n_val
        n_test = args.n_test or 5000
        train, rest = synthetic_stand_in(args.dataset, n_train, n_val + n_test, args.seed)
        return train, rest[:n_val], rest[n_val:], "synthetic stand-in (NOT the real dataset)"
    bunch, source = fetch_real(args.dataset, args)
    return (
        subsample(bunch.train, args.n_train, rng),
        subsample(bunch.validation, args.n_val, rng),
        subsample(bunch.test, args.n_test, rng),
        source,
    )


def _stderr2(values):
    values = np.asarray(values, dtype=float)
    return float(2 * values.std(ddof=1) / math.sqrt(values.size))


#: Timed passes over the test rows per model; the throughput is that of the fastest (timing
#: noise between identical passes can be large on a shared or throttled machine).
SCORE_REPEATS = 3


def _result(score_fn, test, *, fit_seconds, steps, nfe, curve, **extra):
    """Score the test rows (timed, best of ``SCORE_REPEATS``) and assemble one model's
    result."""
    seconds = []
    for _ in range(SCORE_REPEATS):
        t0 = time.perf_counter()
        scores = np.asarray(score_fn(test), dtype=float)
        seconds.append(time.perf_counter() - t0)
    return {
        "test_nll": -float(scores.mean()),
        "test_nll_2se": _stderr2(scores),
        "fit_seconds": fit_seconds,
        "steps": steps,
        "nfe_per_solve": nfe,
        "score_rows_per_s": len(scores) / min(seconds),
        "score_seconds_all": seconds,
        "curve": curve,
        **extra,
    }


# --------------------------------------------------------------------------- our estimator


def run_ffjord_single_fit(train, val, test, budget, seed, **params):
    """One fit within the budget, keeping its best-validation weights (``early_stopping``
    holds out 10% of the training rows). The validation curve is the likelihood phase's
    held-out log-likelihood; flow-matching epochs have no likelihood to plot."""
    from sklearn.exceptions import ConvergenceWarning

    from skffjord import FFJORDDensity

    model = FFJORDDensity(
        early_stopping=True, max_iter=10**6, max_time=budget, random_state=seed, **params
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train)
    spent = time.perf_counter() - t0
    likelihood = [h for h in model.history_ if h.get("phase", "likelihood") == "likelihood"]
    if model.training == "flow_matching":
        likelihood = []
    curve = [(h["time"], -h["valid_score"]) for h in likelihood]
    return _result(
        model.score_samples,
        test,
        _scorer=("ffjord", model),
        fit_seconds=spent,
        steps=sum(h["n_steps"] for h in model.history_),
        nfe=float(np.mean([h["nfe"] for h in likelihood])) if likelihood else None,
        curve=curve or [(spent, -float(model.score(val)))],
        params={k: str(v) for k, v in model.get_params().items()},
        stop_reason=model.stop_reason_,
        # the fixed map in front of the flow, and the candidates' held-out scores ('auto')
        standardize=getattr(model, "standardize_", None),
        standardize_scores=getattr(model, "standardize_scores_", None),
        # training minus evaluation solver, nats per row, after each likelihood epoch
        solver_gaps=[(h["time"], h.get("solver_gap")) for h in likelihood],
        # Adam's step size in each likelihood epoch (learning_rate='adaptive' lowers it)
        learning_rates=[(h["time"], h.get("learning_rate")) for h in likelihood],
    )


def run_ffjord(name, train, val, test, budget, seed):
    from sklearn.exceptions import ConvergenceWarning

    from skffjord import FFJORDDensity

    if name == "ffjord_default":
        return run_ffjord_single_fit(train, val, test, budget, seed)
    if name == "ffjord_flow_matching":
        return run_ffjord_single_fit(train, val, test, budget, seed, training="flow_matching")
    # FFJORD's own recipe: maximum likelihood through dopri5, regularisation off.
    params = dict(
        random_state=seed,
        max_iter=10**6,
        training="likelihood",
        solver={"method": "dopri5", "kinetic_energy_reg": 0.0, "jacobian_reg": 0.0},
    )
    model = FFJORDDensity(warm_start=True, **params)
    curve, spent, steps, nfe = [], 0.0, 0, []
    best, best_model = -math.inf, None
    slice_seconds = budget / 10
    while spent < budget - 1e-6:
        model.set_params(max_time=max(min(slice_seconds, budget - spent), 1e-3))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train)
        spent += time.perf_counter() - t0
        steps += sum(h["n_steps"] for h in model.history_)
        nfe += [h["nfe"] for h in model.history_]
        score = float(model.score(val))
        curve.append((spent, -score))
        if score > best:
            best, best_model = score, copy.deepcopy(model)
        if model.stop_reason_ not in ("max_time", "max_iter"):
            break
    return _result(
        best_model.score_samples,
        test,
        _scorer=("ffjord", best_model),
        fit_seconds=spent,
        steps=steps,
        nfe=float(np.mean(nfe)) if nfe else None,
        curve=curve,
        params={k: str(v) for k, v in model.get_params().items()},
    )


# --------------------------------------------------------------------------- zuko flows


def _zuko_flow(name, d):
    import zuko

    if name == "zuko_cnf_exact":
        return zuko.flows.CNF(d, hidden_features=(128, 128), exact=True)
    if name == "zuko_cnf_hutchinson":
        return zuko.flows.CNF(d, hidden_features=(128, 128), exact=False)
    if name == "zuko_nsf":
        return zuko.flows.NSF(d, transforms=5, hidden_features=(128, 128))
    return zuko.flows.MAF(d, transforms=5, hidden_features=(128, 128))


def _mean_log_prob(flow, x, batch=2048):
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch):
            out.append(flow().log_prob(x[start : start + batch]).double())
    return torch.cat(out).cpu().numpy()


def run_zuko(name, train, val, test, budget, seed, batch_size=512, lr=1e-3):
    import torch

    torch.manual_seed(seed)
    d = train.shape[1]
    flow = _zuko_flow(name, d)
    counter = {"calls": 0}
    if name.startswith("zuko_cnf"):
        flow.transform.ode.register_forward_hook(
            lambda *a: counter.__setitem__("calls", counter["calls"] + 1)
        )
    x_train = torch.as_tensor(train, dtype=torch.float32)
    x_val = torch.as_tensor(val, dtype=torch.float32)
    x_test = torch.as_tensor(test, dtype=torch.float32)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    spent, steps, curve, nfe = 0.0, 0, [], []
    best, best_state = -math.inf, copy.deepcopy(flow.state_dict())
    next_eval = budget / 10
    while spent < budget:
        order = torch.randperm(x_train.shape[0], generator=gen)
        for start in range(0, x_train.shape[0], batch_size):
            t0 = time.perf_counter()
            counter["calls"] = 0
            loss = -flow().log_prob(x_train[order[start : start + batch_size]]).mean()
            nfe.append(counter["calls"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            spent += time.perf_counter() - t0
            steps += 1
            if spent >= next_eval or spent >= budget:
                next_eval += budget / 10
                score = float(np.mean(_mean_log_prob(flow, x_val)))
                curve.append((spent, -score))
                if math.isfinite(score) and score > best:
                    best, best_state = score, copy.deepcopy(flow.state_dict())
            if spent >= budget:
                break
    flow.load_state_dict(best_state)
    return _result(
        lambda rows: _mean_log_prob(flow, rows),
        x_test,
        _scorer=("zuko", name, d, flow.state_dict()),
        fit_seconds=spent,
        steps=steps,
        nfe=float(np.mean(nfe)) if name.startswith("zuko_cnf") else None,
        curve=curve,
    )


# --------------------------------------------------------------------------- scikit-learn


def run_sklearn(name, train, val, test, budget, seed):
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import KernelDensity

    if name == "gmm":
        grid = [1, 2, 5, 10, 20, 50, 100]
        make = lambda k: GaussianMixture(k, covariance_type="full", random_state=seed)  # noqa: E731
    else:
        grid = list(np.geomspace(0.02, 2.0, 12))
        make = lambda h: KernelDensity(bandwidth=h)  # noqa: E731
    spent, curve = 0.0, []
    best, best_model = -math.inf, None
    for value in grid:
        if spent >= budget:
            break
        t0 = time.perf_counter()
        model = make(value).fit(train)
        spent += time.perf_counter() - t0
        score = float(model.score_samples(val).mean())
        curve.append((spent, -score))
        if score > best:
            best, best_model, chosen = score, model, value
    return _result(
        best_model.score_samples,
        test,
        _scorer=("sklearn", best_model),
        fit_seconds=spent,
        steps=len(curve),
        nfe=None,
        curve=curve,
        chosen=float(chosen),
    )


def _peak_rss_mib():
    """This process's peak resident memory. On Linux, VmHWM: getrusage's ru_maxrss survives
    exec and so would include the parent's peak at fork time."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # macOS: bytes, else KiB


def _child(name, args, queue):
    import torch

    torch.set_num_threads(args.threads)
    train, val, test, source = load_splits(args)
    try:
        if name.startswith("ffjord"):
            result = run_ffjord(name, train, val, test, args.budget, args.seed)
        elif name.startswith("zuko"):
            result = run_zuko(name, train, val, test, args.budget, args.seed)
        else:
            result = run_sklearn(name, train, val, test, args.budget, args.seed)
        scorer = result.pop("_scorer")
        if args.scorer_dir is not None:  # for the interleaved timing after every fit
            path = Path(args.scorer_dir) / f"{name}.pkl"
            try:
                with open(path, "wb") as fh:
                    pickle.dump(scorer, fh)
                result["scorer_file"] = str(path)
            except Exception as exc:  # the model's own figures still stand
                result["scorer_error"] = f"{type(exc).__name__}: {exc}"
        result["peak_rss_mib"] = _peak_rss_mib()
        result.update(model=name, source=source, d=train.shape[1], n_train=train.shape[0])
        queue.put(result)
    except Exception as exc:  # report, do not crash the whole run
        queue.put({"model": name, "error": f"{type(exc).__name__}: {exc}"})


def _score_function(scorer, test):
    """The timed call for a saved scorer: the same call the fit's own timing made."""
    kind = scorer[0]
    if kind == "zuko":
        import torch

        _, name, d, state = scorer
        flow = _zuko_flow(name, d)
        flow.load_state_dict(state)
        x_test = torch.as_tensor(test, dtype=torch.float32)
        return lambda: _mean_log_prob(flow, x_test)
    model = scorer[1]
    return lambda: np.asarray(model.score_samples(test), dtype=float)


def _timing_child(args, files, queue):
    """Score the test rows with every fitted model in turn, ``args.timing_rounds`` rounds,
    the order rotated each round, so that every model's passes are spread over the same
    stretch of time: a machine whose speed drifts between passes then
    slows all models alike, and each round's ratios compare passes seconds apart."""
    import torch

    torch.set_num_threads(args.threads)
    try:
        _, _, test, _ = load_splits(args)
        calls, nll = {}, {}
        for name, path in files.items():
            with open(path, "rb") as fh:
                calls[name] = _score_function(pickle.load(fh), test)
            nll[name] = -float(calls[name]().mean())  # untimed warm-up, and a check of the model
        names = list(files)
        seconds = {name: [] for name in names}
        for r in range(args.timing_rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                calls[name]()
                seconds[name].append(time.perf_counter() - t0)
        queue.put({"seconds": seconds, "test_nll": nll, "n_test": int(test.shape[0])})
    except Exception as exc:  # report; the models' own figures still stand
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _receive(proc, queue):
    """The child's report, or ``None`` when it died without one (killed, out of memory)."""
    from queue import Empty

    while True:
        try:
            return queue.get(timeout=5)
        except Empty:
            if not proc.is_alive():
                try:  # it may have reported just before it exited
                    return queue.get(timeout=1)
                except Empty:
                    return None


def _interleaved_timing(args, results, ctx):
    """Run :func:`_timing_child` on the saved models and add its figures to ``results``:
    ``score_rows_per_s_interleaved`` (median over rounds), ``score_seconds_interleaved`` and,
    with ``ffjord_default`` among them, ``rows_per_s_vs_ours_interleaved`` (median over rounds
    of the round's ratio)."""
    files = {r["model"]: r["scorer_file"] for r in results if "scorer_file" in r}
    if not files or args.timing_rounds < 1:
        return
    queue = ctx.Queue()
    proc = ctx.Process(target=_timing_child, args=(args, files, queue))
    proc.start()
    timing = _receive(proc, queue)
    proc.join()
    if timing is None or "error" in timing:
        why = "no report" if timing is None else timing["error"]
        print(f"interleaved timing failed: {why} (exit code {proc.exitcode})", flush=True)
        return
    n = timing["n_test"]
    ours = timing["seconds"].get("ffjord_default")
    for r in results:
        secs = timing["seconds"].get(r["model"])
        if secs is None:
            continue
        r["score_seconds_interleaved"] = secs
        r["score_rows_per_s_interleaved"] = float(np.median([n / s for s in secs]))
        r["test_nll_timing_process"] = timing["test_nll"][r["model"]]
        if ours is not None:  # rows/s of the model over rows/s of ours, round by round
            r["rows_per_s_vs_ours_interleaved"] = float(
                np.median([o / s for o, s in zip(ours, secs, strict=True)])
            )


def main(argv=None):
    from maf_datasets import SHAPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="miniboone", choices=list(SHAPES))
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--bsds300-source", default="maf", choices=["maf", "images"])
    parser.add_argument("--images-dir", default=None)
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-val", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of fitting per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="peers.json")
    parser.add_argument("--plot", default="peers_validation.png")
    parser.add_argument(
        "--timing-rounds",
        type=int,
        default=5,
        help="rounds of interleaved scoring of every fitted model after all fits (0: off)",
    )
    args = parser.parse_args(argv)

    names = [m for m in args.models.split(",") if m]
    try:
        import zuko  # noqa: F401
    except ImportError:
        skipped = [m for m in names if m.startswith("zuko")]
        print(f"zuko is not installed: skipping {skipped} (pip install .[bench])")
        names = [m for m in names if not m.startswith("zuko")]
    ctx = mp.get_context("spawn")
    results = []
    with tempfile.TemporaryDirectory(prefix="peers_scorers_") as scorer_dir:
        args.scorer_dir = scorer_dir if args.timing_rounds > 0 else None
        for name in names:
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(name, args, queue))
            proc.start()
            result = _receive(proc, queue)
            proc.join()
            if result is None:
                result = {"model": name, "error": f"no report (exit code {proc.exitcode})"}
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
        _interleaved_timing(args, [r for r in results if "error" not in r], ctx)
    args.scorer_dir = None
    for r in results:
        r.pop("scorer_file", None)

    ok = [r for r in results if "error" not in r]
    reference = next((r for r in ok if r["model"] == "ffjord_default"), None)
    first = ok[0] if ok else {"source": "?", "d": "?", "n_train": "?"}
    lines = [
        f"dataset: {args.dataset} ({first['source']}), d={first['d']}, "
        f"n_train={first['n_train']}, budget {args.budget:.0f} s per model, "
        f"{args.threads} threads",
        "",
        "| model | test NLL ± 2 s.e. | fit s | steps | NFE/solve | score rows/s, own process "
        "(best of 3) | score rows/s, interleaved (median) | peak MiB | rows/s vs ours "
        "(interleaved) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ok:
        interleaved = r.get("score_rows_per_s_interleaved")
        ratio = r.get("rows_per_s_vs_ours_interleaved")
        if ratio is None and reference is not None:  # no interleaved timing: the own figures
            ratio = r["score_rows_per_s"] / reference["score_rows_per_s"]
        nfe = "" if r["nfe_per_solve"] is None else f"{r['nfe_per_solve']:.0f}"
        lines.append(
            f"| {r['model']} | {r['test_nll']:.3f} ± {r['test_nll_2se']:.3f} | "
            f"{r['fit_seconds']:.0f} | {r['steps']} | {nfe} | {r['score_rows_per_s']:.0f} | "
            f"{'' if interleaved is None else f'{interleaved:.0f}'} | "
            f"{r['peak_rss_mib']:.0f} | {'' if ratio is None else f'{ratio:.2f}'} |"
        )
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} | | | | | | | |")
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "results": results, "table": table}, fh, indent=2)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in ok:
            xs, ys = zip(*r["curve"], strict=True)
            ax.plot(xs, ys, marker="o", label=r["model"])
        ax.set_xlabel("fit wall time (s)")
        ax.set_ylabel("validation NLL (nats)")
        ax.set_title(f"{args.dataset}: validation NLL against wall time")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    except ImportError:
        print("matplotlib is not installed: no plot")
    return results


if __name__ == "__main__":
    main()
