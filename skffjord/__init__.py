"""skffjord: FFJORD continuous normalizing flows as scikit-learn density estimators and
outlier detectors."""

from . import datasets
from ._estimator import FFJORDDensity
from ._ode import SolverError
from ._outlier import FFJORDOutlierDetector
from ._preprocessing import find_discrete_features
from ._utils import DeviceWarning

__version__ = "0.1.0"

# Public exceptions and warnings are shown (in tracebacks, reprs, docs) under the name users
# import them by, not the private module that defines them.
SolverError.__module__ = DeviceWarning.__module__ = __name__

__all__ = [
    "DeviceWarning",
    "FFJORDDensity",
    "FFJORDOutlierDetector",
    "SolverError",
    "__version__",
    "datasets",
    "find_discrete_features",
]
