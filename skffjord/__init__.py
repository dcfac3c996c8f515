"""skffjord: FFJORD continuous normalizing flows as scikit-learn density estimators and
outlier detectors."""

from . import datasets
from ._discrete import find_discrete_features
from ._estimator import FFJORDDensity
from ._model_file import ModelFileError, load_model
from ._ode import SolverError, SolverWarning
from ._outlier import FFJORDOutlierDetector
from ._parquet import parquet_memmap
from ._utils import DeviceWarning

__version__ = "0.1.0"

# Public exceptions and warnings are shown (in tracebacks, reprs, docs) under the name users
# import them by, not the private module that defines them.
for _public in (SolverError, SolverWarning, DeviceWarning, ModelFileError):
    _public.__module__ = __name__
del _public

__all__ = [
    "DeviceWarning",
    "FFJORDDensity",
    "FFJORDOutlierDetector",
    "ModelFileError",
    "SolverError",
    "SolverWarning",
    "__version__",
    "datasets",
    "find_discrete_features",
    "load_model",
    "parquet_memmap",
]
