"""A fit's progress on stderr: one bar over the epochs of all its phases, naming the phase
under way and each figure it shows."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

__all__ = ["PHASE_NAMES", "ProgressDisplay", "epoch_postfix"]

#: The progress display's name of each training objective (``FitConfig.training``).
PHASE_NAMES = {"flow_matching": "flow matching", "likelihood": "likelihood"}


def epoch_postfix(record: dict, training: str, validated: bool) -> dict[str, str]:
    """The figures the progress display shows for an epoch, each named by what it is.

    Parameters
    ----------
    record : dict
        The history's record of the epoch (its ``train_loss``, ``valid_score`` and ``nfe``).
    training : str
        The epoch's objective: ``'flow_matching'`` or ``'likelihood'``.
    validated : bool
        Whether the epoch was scored on validation rows.

    Returns
    -------
    dict of str to str
        In flow matching ``fm_loss`` (the training regression loss) and, validated,
        ``valid_fm_loss`` (the same loss on the validation rows, the negated validation
        score); in likelihood training ``nll`` (training negative log-likelihood, nats per
        row), ``valid_ll`` when validated (validation mean log-likelihood) and ``nfe``
        (function evaluations per training solve). The values are the record's.
    """
    if training == "flow_matching":
        postfix = {"fm_loss": f"{record['train_loss']:.4f}"}
        if validated:
            postfix["valid_fm_loss"] = f"{-record['valid_score']:.4f}"
        return postfix
    postfix = {"nll": f"{record['train_loss']:.4f}"}
    if validated:
        postfix["valid_ll"] = f"{record['valid_score']:.4f}"
    postfix["nfe"] = f"{record['nfe']:.0f}"
    return postfix


class ProgressDisplay:
    """One fit's progress on stderr: a single tqdm bar over the epochs of all its phases.

    The bar's description names the phase under way (``FFJORD fit [flow matching]``), its
    postfix the last epoch's figures (:func:`epoch_postfix`). A context manager: leaving it
    closes the bar, also when the fit raises; :meth:`close` may be called more than once.

    Parameters
    ----------
    verbose : int
        0: nothing is shown and no bar is created; 1: the bar; 2 and more: the bar and,
        written above it, one line per epoch (its number, phase, figures, step size and the
        seconds since the display opened).
    total : int or None
        Epochs of the whole fit; ``None``: unknown (a fit bounded by ``max_time`` only),
        the bar counts the epochs done and the time elapsed.
    """

    description = "FFJORD fit"

    def __init__(self, verbose: int, total: int | None) -> None:
        self.verbose = int(verbose)
        self.start = time.perf_counter()
        self.n_epochs = 0
        self.bar: Any = None
        if self.verbose > 0:
            from tqdm.auto import tqdm  # looked up here: tqdm.auto picks the front end

            self.bar = tqdm(total=total, desc=self.description, unit="epoch")

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def phase(self, name: str) -> None:
        """Name the phase under way in the bar's description, and clear the figures shown.

        Parameters
        ----------
        name : str
            The phase, e.g. ``'starting model'`` or ``'likelihood'``.
        """
        if self.bar is not None:
            self.bar.refresh()  # the last phase's final figures, drawn once whatever the pace
            # then they go: their names belong to its loss
            self.bar.set_postfix_str("", refresh=False)
            self.bar.set_description_str(f"{self.description} [{name}]")

    def skip(self, n_epochs: int) -> None:
        """Drop epochs that a phase planned and did not run from the bar's total.

        Parameters
        ----------
        n_epochs : int
            Epochs dropped (a phase that stopped early, or was skipped); nothing changes
            without a bar, with an unknown total, or for ``n_epochs <= 0``.
        """
        if self.bar is None or self.bar.total is None or n_epochs <= 0:
            return
        self.bar.total = max(self.bar.total - n_epochs, self.bar.n)
        self.bar.refresh()

    def epoch(self, record: dict, training: str, validated: bool) -> None:
        """Count an epoch and show its figures.

        Parameters
        ----------
        record : dict
            The history's record of the epoch.
        training : str
            The epoch's objective: ``'flow_matching'`` or ``'likelihood'``.
        validated : bool
            Whether the epoch was scored on validation rows.
        """
        self.n_epochs += 1
        if self.bar is None:
            return
        postfix = epoch_postfix(record, training, validated)
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)
        if self.verbose >= 2:
            figures = " ".join(f"{k}={v}" for k, v in postfix.items())
            total = "" if self.bar.total is None else f"/{self.bar.total}"
            elapsed = time.perf_counter() - self.start
            self.bar.write(
                f"epoch {self.n_epochs}{total} [{PHASE_NAMES[training]}] {figures} "
                f"lr={record['learning_rate']:.3g} elapsed={elapsed:.2f}s",
                file=sys.stderr,
            )

    def close(self) -> None:
        """Close the bar (once; later calls do nothing)."""
        if self.bar is not None:
            bar, self.bar = self.bar, None
            bar.close()
