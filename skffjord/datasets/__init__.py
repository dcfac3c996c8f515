"""The five tabular benchmarks of MAF (Papamakarios et al., 2017), with their standard splits.

Each ``fetch_*`` function works like scikit-learn's: it downloads what is missing into
``data_home`` (default: the ``SKFFJORD_DATA`` environment variable, else ``~/skffjord_data``),
verifies it, processes it exactly as the MAF loaders do, caches the processed splits and
returns a :class:`~sklearn.utils.Bunch` with ``train``, ``validation``, ``test``,
``feature_names`` and ``DESCR``.
"""

from ._bsds300 import fetch_bsds300
from ._data_home import DATA_HOME_ENV, clear_data_home, get_data_home
from ._exceptions import DataIntegrityError
from ._fetchers import fetch_dataset
from ._maf_tabular import fetch_gas, fetch_hepmass, fetch_miniboone, fetch_power
from ._specs import DATASETS

DataIntegrityError.__module__ = __name__  # shown under its public name

__all__ = [
    "DATASETS",
    "DATA_HOME_ENV",
    "DataIntegrityError",
    "clear_data_home",
    "fetch_bsds300",
    "fetch_dataset",
    "fetch_gas",
    "fetch_hepmass",
    "fetch_miniboone",
    "fetch_power",
    "get_data_home",
]
