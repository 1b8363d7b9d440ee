"""Checking the ``timeout`` every blocking call takes (API.md: ``None`` waits as long as it takes).

One rule for every call, compiled path or not: ``None``, ``math.inf`` and any
number too large to mean a real deadline (``10**400`` is a valid Python int)
wait for ever; a negative number, ``-inf`` and NaN are a ``ValueError``; a
bool or a non-number is a ``TypeError``.  What comes back is ``None`` (for
ever) or a finite ``float``, so no caller meets an int that no C double or
``time.monotonic() + t`` can hold (``10**400`` raised OverflowError there).
"""

from __future__ import annotations

import math

# Longer than any process lives (about 31 years): "for ever". Finite floats below
# it keep their meaning; monotonic() + FOREVER still fits a double exactly enough.
FOREVER = 1e9


def check_timeout(timeout, name: str = "timeout") -> float | None:
    """``None`` (wait for ever) or a finite float >= 0; ValueError/TypeError for anything else."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be None or a number, not {type(timeout).__name__}")
    # Compared before any conversion: float(10**400) itself overflows.
    if timeout != timeout:   # NaN (an int never is)
        raise ValueError(f"{name} must be None or >= 0, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"{name} must be None or >= 0, got {timeout!r}")
    if timeout >= FOREVER:
        return None
    return float(timeout)


def seconds_or_inf(timeout: float | None) -> float:
    """A checked timeout as a number of seconds (``math.inf`` for ever)."""
    return math.inf if timeout is None else timeout
