"""What shmwal asks of the operating system, in one place.

* ``sync``     robust process-shared mutexes and atomic words (ctypes)
* ``names``    data directories, namespaces, IPC object names, the socket address
* ``control``  the control protocol's framing (length-prefixed JSON over a Unix socket)
* ``fsio``     atomic file writes and directory fsyncs (the one ``fsync_dir``)
* ``libc``     the C library, loaded once, and its one errno convention (``oserror``)
* ``priority`` threads that work ahead at the lowest priority (populate, spares)
"""
