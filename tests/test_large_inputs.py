"""Scoring arrays and frames of more rows than one block: a memory-mapped file is read block
by block, and the scores and the rows named in warnings are those of the whole array."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from skffjord import FFJORDDensity, SolverWarning
from skffjord._inference import SCORED_BLOCK

from .conftest import TINY


@pytest.fixture(scope="module")
def model():
    X = np.random.default_rng(0).normal(size=(300, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = FFJORDDensity(**TINY, random_state=0).fit(X)
    return fitted.set_params(eval_solver={"dtype": "float64"})


@pytest.fixture(scope="module")
def many_rows(tmp_path_factory):
    n = SCORED_BLOCK + 1500
    rows = np.random.default_rng(1).normal(size=(n, 2))
    path = tmp_path_factory.mktemp("rows") / "rows.npy"
    np.save(path, rows)
    return path


def test_a_memory_mapped_file_scores_as_the_array_in_memory(model, many_rows):
    mapped = np.load(many_rows, mmap_mode="r")
    scores = model.score_samples(mapped)
    expected = model._fitted_flow().log_density(np.array(mapped))
    np.testing.assert_array_equal(scores, expected)
    assert scores.shape == (len(mapped),) and np.isfinite(scores).all()


def test_a_failed_row_is_named_by_its_place_in_the_whole_array(model, many_rows):
    rows = np.load(many_rows)
    rows[SCORED_BLOCK + 7] = 1e100  # beyond float32: the float32 solve cannot start
    single = model.set_params(eval_solver=None)
    try:
        with pytest.warns(SolverWarning, match=f"row {SCORED_BLOCK + 7} of X"):
            scores = single.score_samples(rows)
    finally:
        model.set_params(eval_solver={"dtype": "float64"})
    assert np.isneginf(scores[SCORED_BLOCK + 7])
    assert np.isfinite(np.delete(scores, SCORED_BLOCK + 7)).all()


def test_a_large_frame_scores_block_by_block_with_its_names(model, many_rows):
    rows = np.load(many_rows)[: SCORED_BLOCK + 10]
    frame = pd.DataFrame(rows, columns=["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        named = FFJORDDensity(**TINY, random_state=0).fit(frame.iloc[:300])
    named.set_params(eval_solver={"dtype": "float64"})
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*feature names.*")  # none from a block
        scores = named.score_samples(frame)
    np.testing.assert_array_equal(scores[-20:], named.score_samples(frame.iloc[-20:]))
    with pytest.raises(ValueError, match="feature names"):
        named.score_samples(frame.rename(columns={"a": "c"}))


def test_many_samples_are_drawn_block_by_block_as_one_stream(model):
    many = model.sample(SCORED_BLOCK + 10, random_state=3)
    first_block = model.sample(SCORED_BLOCK, random_state=3)
    np.testing.assert_array_equal(many[:SCORED_BLOCK], first_block)
    assert many.shape == (SCORED_BLOCK + 10, 2) and np.isfinite(many).all()
    # the draws after the first block are fresh ones, not the first block again
    assert not np.isin(many[SCORED_BLOCK:, 0], first_block[:, 0]).any()
