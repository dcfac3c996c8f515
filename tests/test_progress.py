"""The progress display of a fit: one tqdm bar for the whole fit, whose description names the
phase under way and whose figures are named by the loss they are, closed once however the
fit ends; nothing at all with ``verbose=0``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tqdm.auto

from skffjord import FFJORDDensity
from skffjord._flow import FFJORDFlow
from skffjord._progress import ProgressDisplay

from .conftest import TINY


class _RecordingBar(tqdm.auto.tqdm):
    """A tqdm bar that records its descriptions, its figures and how often it was closed;
    every bar made is kept in ``made``."""

    made: list[_RecordingBar] = []

    def __init__(self, *args, **kwargs):
        self.descriptions = [kwargs.get("desc")]
        self.postfixes = []
        self.n_closed = 0
        self.made.append(self)
        super().__init__(*args, **kwargs)

    def set_description_str(self, desc=None, refresh=True):
        self.descriptions.append(desc)
        super().set_description_str(desc, refresh)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        self.postfixes.append((self.descriptions[-1], dict(ordered_dict or {}, **kwargs)))
        super().set_postfix(ordered_dict, refresh, **kwargs)

    def close(self):
        self.n_closed += 1
        super().close()


@pytest.fixture
def bars(monkeypatch):
    """The bars made while the test runs (``tqdm.auto.tqdm`` records them)."""
    made = []
    monkeypatch.setattr(_RecordingBar, "made", made)
    monkeypatch.setattr(tqdm.auto, "tqdm", _RecordingBar)
    return made


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(200, 2))


def _fit(X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FFJORDDensity(**{**TINY, "training": "hybrid", "max_iter": 4, **params}).fit(X)


def _figures(bar, phase):
    """The figures the bar showed while its description named ``phase``."""
    return [figures for desc, figures in bar.postfixes if desc == f"FFJORD fit [{phase}]"]


def test_a_hybrid_fit_shows_one_bar_naming_its_phases_and_losses(X, bars, capsys):
    model = _fit(X, verbose=1)
    err = capsys.readouterr().err
    assert len(bars) == 1
    (bar,) = bars
    assert bar.n_closed == 1
    named = [d for d in bar.descriptions if d and "[" in d]
    assert named.index("FFJORD fit [flow matching]") < named.index("FFJORD fit [likelihood]")
    assert "FFJORD fit [flow matching]" in err and "FFJORD fit [likelihood]" in err
    # every epoch of both phases counts on the one bar, whose total is the fit's epochs
    assert bar.n == bar.total == model.n_iter_ == len(model.history_) == 4
    matching, likelihood = _figures(bar, "flow matching"), _figures(bar, "likelihood")
    assert [set(f) for f in matching] == [{"fm_loss"}] * 3
    assert [set(f) for f in likelihood] == [{"nll", "nfe"}]
    # the values shown are the history's
    shown = [float(f["fm_loss"]) for f in matching] + [float(likelihood[0]["nll"])]
    np.testing.assert_allclose(shown, model.loss_curve_, atol=1e-4)
    assert "fm_loss=" in err and "nll=" in err and "loss=" not in err.replace("fm_loss=", "")


def test_with_early_stopping_the_bar_shows_the_validation_figures(X, bars):
    model = _fit(X, verbose=1, early_stopping=True, validation_fraction=0.2)
    (bar,) = bars
    assert bar.n_closed == 1
    matching, likelihood = _figures(bar, "flow matching"), _figures(bar, "likelihood")
    assert matching and likelihood
    assert all(set(f) == {"fm_loss", "valid_fm_loss"} for f in matching)
    assert all(set(f) == {"nll", "valid_ll", "nfe"} for f in likelihood)
    history = model.history_
    shown = [-float(f["valid_fm_loss"]) for f in matching]
    shown += [float(f["valid_ll"]) for f in likelihood]
    np.testing.assert_allclose(shown, [r["valid_score"] for r in history], atol=1e-4)
    assert [r["phase"] for r in history] == ["flow_matching"] * len(matching) + [
        "likelihood"
    ] * len(likelihood)


def test_verbose_0_writes_nothing_and_makes_no_bar(X, bars, capfd):
    _fit(X, verbose=0)
    assert capfd.readouterr().err == ""
    assert bars == []


def test_verbose_2_writes_one_line_per_epoch_above_the_bar(X, bars, capsys):
    model = _fit(X, verbose=2)
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(bars) == 1
    assert len(epochs) == len(model.history_) == 4
    assert epochs[0].startswith("epoch 1/4 [flow matching] fm_loss=")
    assert epochs[-1].startswith("epoch 4/4 [likelihood] nll=")


def test_a_fit_bounded_by_time_only_counts_epochs_without_a_total(X, bars):
    model = _fit(X, verbose=1, max_iter=None, max_time=0.3)
    (bar,) = bars
    assert bar.total is None
    assert bar.n == len(model.history_) > 0
    assert bar.n_closed == 1


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_fit_that_raises_mid_training_closes_its_bar_once(X, bars, monkeypatch, error):
    original = FFJORDFlow.train_log_prob
    calls = {"n": 0}

    def raising_on_call_3(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise error("stopped")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FFJORDFlow, "train_log_prob", raising_on_call_3)
    if error is KeyboardInterrupt:  # the fit keeps the weights so far and returns
        model = _fit(X, verbose=1, max_iter=8)
        assert model.stop_reason_ == "interrupted"
    else:
        with pytest.raises(RuntimeError, match="stopped"):
            _fit(X, verbose=1, max_iter=8)
    assert calls["n"] == 3
    (bar,) = bars
    assert bar.n_closed == 1
    assert "FFJORD fit [likelihood]" in bar.descriptions  # it raised in the second phase


def test_a_phase_cut_short_leaves_the_total_to_the_epochs_still_planned(bars):
    display = ProgressDisplay(1, 10)
    record = {"train_loss": 1.0, "valid_score": -1.0, "nfe": 0, "learning_rate": 1e-3}
    display.phase("flow matching")
    for _ in range(3):
        display.epoch(record, "flow_matching", validated=False)
    display.skip(5)  # planned 8 flow-matching epochs, ran 3
    display.phase("likelihood")
    (bar,) = bars
    assert (bar.n, bar.total) == (3, 5)
    assert bar.postfix in (None, "")  # the flow-matching figures are gone
    display.close()
    display.close()
    assert bar.n_closed == 1


def test_a_silent_display_makes_no_bar(bars):
    display = ProgressDisplay(0, 10)
    display.phase("likelihood")
    display.epoch({"train_loss": 1.0, "nfe": 3}, "likelihood", validated=False)
    display.skip(2)
    display.close()
    assert bars == []
    assert display.n_epochs == 1
