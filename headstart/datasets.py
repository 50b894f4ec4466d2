"""The old name of :mod:`headstart.data.datasets`: importing it gives that very module."""

import sys

from headstart.data import datasets as _datasets

sys.modules[__name__] = _datasets
