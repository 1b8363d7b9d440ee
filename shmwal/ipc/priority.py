"""Threads that work ahead only with CPU to spare (the populate and spares threads).

At normal priority such a thread took CPU from the very appenders it works for
(4 producers on 2 cores: 0.83x one producer's rate against 0.92x with populating on
the appender's path), so each one lowers its own priority (Linux: nice is per thread).
"""

from __future__ import annotations

import os
import threading

BACKGROUND_NICE = 19


def lower_this_thread() -> None:
    """Give the calling thread the lowest priority; where that is refused, it keeps its own."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:
        pass
