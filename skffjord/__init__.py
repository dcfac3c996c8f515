"""skffjord: FFJORD continuous normalizing flows as a scikit-learn density estimator."""

from . import datasets
from ._estimator import FFJORDDensity
from ._ode import SolverError
from ._utils import DeviceWarning

__version__ = "0.1.0"

__all__ = ["DeviceWarning", "FFJORDDensity", "SolverError", "__version__", "datasets"]
