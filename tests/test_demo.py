"""The README's first command: the demo fits, scores three models and writes a picture."""

import numpy as np

from skffjord import demo


def test_demo_runs_and_reports_three_models(tmp_path, capsys):
    out = tmp_path / "density.png"
    scores = demo.main(["--n-samples", "300", "--max-time", "3", "--out", str(out)])
    assert len(scores) == 3 and all(np.isfinite(list(scores.values())))
    assert next(iter(scores)) == "FFJORDDensity"
    assert out.exists() and out.stat().st_size > 0
    assert "held-out mean log-likelihood" in capsys.readouterr().out
