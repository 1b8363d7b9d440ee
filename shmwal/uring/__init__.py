"""io_uring batch reads through ctypes (Linux, x86-64).

``abi`` mirrors ``linux/io_uring.h`` (structs and constants only); ``ring``
holds the logic (``Ring``, ``ReadArena``, ``probe``); ``residency`` answers
"is this range in the page cache?" (mincore), for tests and scripts/bench_uring.py:
``io="auto"`` does not ask it, it reads through the mapping (client/facade.py
``_make_fetcher`` says why).
"""

from .residency import resident_fraction
from .ring import ReadArena, Ring, ShortRead, disabled_by_env, probe

__all__ = ["Ring", "ReadArena", "ShortRead", "probe", "disabled_by_env", "resident_fraction"]
