"""io_uring batch reads through ctypes (Linux, x86-64).

``abi`` mirrors ``linux/io_uring.h`` (structs and constants only); ``ring``
holds the logic (``Ring``, ``ReadArena``, ``probe``); ``residency`` answers
"is this range in the page cache?" so ``io="auto"`` can pick uring for cold
data and mmap for warm data.
"""

from .residency import resident_fraction
from .ring import ReadArena, Ring, ShortRead, disabled_by_env, probe

__all__ = ["Ring", "ReadArena", "ShortRead", "probe", "disabled_by_env", "resident_fraction"]
