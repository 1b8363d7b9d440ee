"""The client side: everything a producer or consumer process runs.

* ``facade``    ``connect`` / ``Client``: control requests to the broker, topic and group handles
* ``append``    appends: records written behind the published end, then published
* ``read``      group reads: cursor, hint, decode, wait
* ``populate``  faulting a writer's next block in, mostly on a thread
* ``hot``       the compiled hot path (``shmwal/_native/hot.c``), if built
"""

from .facade import Client, connect

__all__ = ["Client", "connect"]
