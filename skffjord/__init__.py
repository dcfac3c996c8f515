"""skffjord: FFJORD continuous normalizing flows as scikit-learn density estimators and
outlier detectors."""

from . import datasets
from ._estimator import FFJORDDensity
from ._ode import SolverError
from ._outlier import FFJORDOutlierDetector
from ._utils import DeviceWarning

__version__ = "0.1.0"

__all__ = [
    "DeviceWarning",
    "FFJORDDensity",
    "FFJORDOutlierDetector",
    "SolverError",
    "__version__",
    "datasets",
]
