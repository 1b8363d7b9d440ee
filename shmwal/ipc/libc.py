"""The C library for every ctypes call shmwal makes: loaded once, one errno convention.

``libc`` is ``CDLL(None, use_errno=True)``: ctypes saves errno right after each
call, so ``oserror(what)``, called right after a call that failed, reports that
call's errno and not one left by whatever ran since.  ``libc_with_gil`` is the
same library through ``PyDLL``: calls that must not release the GIL (ipc/sync.py
says which).  ``function`` gives a handle of its own per call: argtypes live on
the handle, and syscall(2) is used with several signatures.
"""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
libc_with_gil = ctypes.PyDLL(None)


def function(name: str, argtypes, restype=ctypes.c_int, lib=libc):
    f = lib[name]   # a new handle each time, unlike getattr
    f.argtypes = argtypes
    f.restype = restype
    return f


def oserror(what: str | None = None) -> OSError:
    """The OSError of the libc call that just failed (its errno), with ``what`` as a note."""
    err = ctypes.get_errno()
    exc = OSError(err, os.strerror(err))
    if what:
        exc.add_note(what)
    return exc
