"""Type checks for values that come from users: an int that is not a bool, a finite number."""

from __future__ import annotations

import math
from typing import Any, TypeGuard

import numpy as np


def is_int(value: Any) -> TypeGuard[int]:
    """An integer (Python or numpy), but not a bool: ``True`` is an int to Python, never a count to a user."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A finite int or float (numpy floats included), but not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["is_int", "is_real"]
