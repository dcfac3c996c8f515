"""``python -m skffjord``: the ``skffjord`` command line (see ``python -m skffjord --help``)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
