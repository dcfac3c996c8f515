"""Write the committed model-file fixture: ``model_file_v1.safetensors`` and the scores its
model gives a few fixed rows, ``model_file_v1_scores.json``.

``tests/test_model_file.py`` loads the file and checks those scores, so a change to the
model-file layout that would break files already written shows up as a failing test. Run
this script only when the format version changes on purpose (then name the files after the
new version and keep the old ones, which must still load)::

    python tests/data/make_model_file_fixture.py

The model has two features and hidden layers (8,), with a bound on the first feature, a
sinh-arcsinh map and a two-component base, so that the file holds every part of a flow
(bounds map, per-feature map, mixture base). It scores with a fixed-step float64 solve,
whose results do not depend on the machine beyond rounding.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MODEL = HERE / "model_file_v1.safetensors"
SCORES = HERE / "model_file_v1_scores.json"
ROWS = [[0.5, -1.0], [1.0, 0.0], [2.5, 1.5], [0.1, 3.0], [4.0, -2.0]]


def main() -> None:
    from skffjord import FFJORDDensity, load_model

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.lognormal(size=300), rng.normal(size=300) * 1.5])
    model = FFJORDDensity(
        hidden_layer_sizes=(8,),
        training="likelihood",
        standardize="sinh_arcsinh",
        n_components=2,
        bounds=[(0, None), (None, None)],
        discrete_features=None,
        early_stopping=False,
        max_iter=3,
        solver={"method": "rk4", "options": {"step_size": 0.5}},
        eval_solver={"method": "rk4", "options": {"step_size": 0.125}, "dtype": "float64"},
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    model.save(MODEL)
    scores = load_model(MODEL).score_samples(np.array(ROWS))
    SCORES.write_text(json.dumps({"rows": ROWS, "scores": scores.tolist()}, indent=2) + "\n")
    print(f"wrote {MODEL.name} ({MODEL.stat().st_size} bytes) and {SCORES.name}")


if __name__ == "__main__":
    main()
