"""Deprecated alias of :mod:`pairmine.datasets` (the datasets for external trainers)."""

import warnings

from pairmine.datasets import *  # noqa: F403  # the public names, unchanged
from pairmine.datasets import __all__  # noqa: F401

warnings.warn("pairmine.data is deprecated: import pairmine.datasets instead",
              DeprecationWarning, stacklevel=2)
