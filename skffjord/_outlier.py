"""Outlier detection with an FFJORD density: low log-density means abnormal."""

from __future__ import annotations

import inspect
from numbers import Real
from typing import Any

import numpy as np
from sklearn.base import OutlierMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ._estimator import FFJORDDensity
from ._fitted import FITTED, restored_on_failure
from ._sample_weight import checked_sample_weight

__all__ = ["FFJORDOutlierDetector"]


class FFJORDOutlierDetector(OutlierMixin, FFJORDDensity):
    """Outlier detection by the log-density of an FFJORD continuous normalizing flow.

    The flow is fitted exactly as :class:`FFJORDDensity` (every model parameter has the
    same name, default and meaning); a row is then an outlier when its log-density is below
    the ``contamination`` quantile of the training rows' log-densities. The conventions are
    scikit-learn's (as in :class:`~sklearn.ensemble.IsolationForest` and
    :class:`~sklearn.neighbors.LocalOutlierFactor`), not PyOD's: lower scores are more
    abnormal.

    Parameters
    ----------
    contamination : float in (0, 0.5], default=0.1
        Expected share of outliers in the training data: the threshold ``offset_`` is the
        ``contamination`` quantile of the training rows' log-densities, so about that share
        of the training rows is predicted as outliers.
    **params
        Every parameter of :class:`FFJORDDensity` (``hidden_layer_sizes``, ``training``,
        ``max_time``, ``random_state``, ...), keyword-only, with the same defaults.

    Attributes
    ----------
    offset_ : float
        Threshold on :meth:`score_samples`: ``decision_function = score_samples - offset_``.
    flow_, n_features_in_, feature_names_in_, n_iter_, history_, loss_curve_, \
validation_scores_, best_validation_score_, best_loss_, device_, stop_reason_, \
world_size_
        As in :class:`FFJORDDensity`.

    See Also
    --------
    FFJORDDensity : The density estimator this detector is built on.
    sklearn.ensemble.IsolationForest : The same sign conventions.

    Examples
    --------
    >>> import numpy as np
    >>> from skffjord import FFJORDOutlierDetector
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 2))
    >>> detector = FFJORDOutlierDetector(contamination=0.05, max_iter=4, random_state=0)
    >>> detector.fit(X).predict([[0.0, 0.0], [6.0, 6.0]])
    array([ 1, -1])
    """

    _parameter_constraints: dict = {
        **FFJORDDensity._parameter_constraints,
        "contamination": [Interval(Real, 0, 0.5, closed="right")],
    }

    def __init__(self, *, contamination: float = 0.1, **params: Any) -> None:
        super().__init__(**params)
        self.contamination = contamination

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> FFJORDOutlierDetector:
        """Fit the flow, then set ``offset_`` from the training rows' log-densities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (may contain outliers; see ``contamination``).
        y : None
            Ignored; present for API consistency.
        sample_weight : array-like of shape (n_samples,), default=None
            Row weights of the likelihood (as in :meth:`FFJORDDensity.fit`) and of the
            quantile that sets ``offset_`` (an integer weight counts as repeated rows).

        Returns
        -------
        self : FFJORDOutlierDetector
            The fitted detector. If ``fit`` raises, a previously fitted detector is left
            untouched.
        """
        with restored_on_failure(self, (*FITTED, "offset_")):
            super().fit(X, y, sample_weight=sample_weight)
            scores = self.score_samples(X)
            weights = checked_sample_weight(sample_weight, scores)
            self.offset_ = _weighted_quantile(scores, weights, float(self.contamination))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-density minus ``offset_``: negative for outliers, positive for inliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "offset_")
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """``+1`` for inliers and ``-1`` for outliers (``decision_function < 0``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,), dtype int
        """
        decision = self.decision_function(X)
        return np.where(decision < 0, -1, 1)


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value whose weighted cumulative share exceeds ``q``.

    The values strictly below it carry a weight share of at most ``q`` (with unit weights,
    ``floor(q n)`` rows), and integer weights give the same threshold as repeated rows.
    """
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, q * cumulative[-1], side="right"))
    return float(values[order][min(index, len(values) - 1)])


def _signature() -> inspect.Signature:
    """``__init__``'s signature: ``contamination`` and then every FFJORDDensity parameter."""
    base = inspect.signature(FFJORDDensity.__init__)
    params = list(base.parameters.values())
    contamination = inspect.Parameter(
        "contamination", inspect.Parameter.KEYWORD_ONLY, default=0.1, annotation=float
    )
    return base.replace(parameters=[params[0], contamination, *params[1:]])


# scikit-learn reads the parameter names from the signature of __init__ (get_params, clone,
# repr): give it the full list so that the model parameters are declared once, in
# FFJORDDensity, and shared here rather than copied.
FFJORDOutlierDetector.__init__.__signature__ = _signature()
