"""Every name a user gives us, checked before it becomes a path or an IPC name.

Topic and group names go into paths (``topics/<topic>/``), so they are
validated here and nowhere else; keys are sanitised as API.md says; IPC
object names are derived from a hash of the broker's directory, never from
user text.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex

from ..errors import InvalidTopic

MAX_NAME = 255
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")
_KEY_BAD = re.compile(r"[^A-Za-z0-9._-]")


def check_name(name, what: str = "topic") -> str:
    """Return ``name`` if it is a valid topic or group name, else raise InvalidTopic."""
    if type(name) is not str:
        raise InvalidTopic(f"{what} must be a str, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name) or name[0] == ".":
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise InvalidTopic(
            f"invalid {what} {shown!r}: 1 to 255 characters from [A-Za-z0-9._-], not starting with '.'"
        )
    return name


def sanitize_key(key) -> str:
    """API.md: characters outside [A-Za-z0-9._-] become '_'; empty or all '_' -> ns_<hash>."""
    if key is None:
        return "default"
    if not isinstance(key, str):
        raise TypeError(f"key must be a str or None, not {type(key).__name__}")
    clean = _KEY_BAD.sub("_", key)
    if not clean.strip("_") or clean in (".", ".."):
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"ns_{digest}"
    # A leading dot would hide the directory and '..' must never be a component.
    if clean.startswith("."):
        clean = "_" + clean[1:]
    return clean[:MAX_NAME]


def resolve_data_dir(data_dir) -> str:
    """None -> $SHMWAL_DATA_DIR, else ./shmwal_data; always an absolute, normalised path."""
    if data_dir is None:
        data_dir = os.environ.get("SHMWAL_DATA_DIR") or "shmwal_data"
    return os.path.abspath(os.fspath(data_dir))


def namespace_dir(data_dir, key) -> str:
    return os.path.join(resolve_data_dir(data_dir), sanitize_key(key))


def broker_ran(root: str) -> bool:
    """Whether a broker ever ran (or is being started) in namespace ``root``.

    Every broker creates ``broker.lock`` first (``Broker.start`` even before it
    spawns the process) and none removes it: without it there is no broker
    data, and nothing a client could wait for.
    """
    return os.path.exists(os.path.join(root, "broker.lock"))


def no_broker_message(given, key, data_dir: str, *, ever_ran: bool, waited: float = 0.0, error=None) -> str:
    """Why ``connect`` found no broker, naming the directory as the user gave it, and how to start one."""
    if given is None:
        shown = os.environ.get("SHMWAL_DATA_DIR") or "shmwal_data"
        origin = " ($SHMWAL_DATA_DIR)" if os.environ.get("SHMWAL_DATA_DIR") else " (the default data directory)"
    else:
        shown, origin = os.fspath(given), ""
        if isinstance(shown, bytes):
            shown = os.fsdecode(shown)
    if not os.path.isabs(shown):
        origin += f" (= {data_dir})"
    where = f"{shown}{origin}" + (f", key {key!r}" if key is not None else "")
    command = f"shmwal broker --data-dir {shlex.quote(shown)}" + (f" --key {shlex.quote(str(key))}" if key is not None else "")
    handle = f"shmwal.Broker({shown!r}" + (f", key={key!r}" if key is not None else "") + ").start()"
    how = f"start one with `{command}` or `{handle}`"
    if not ever_ran:
        return f"no shmwal broker data in {where}: no broker has run there; {how}"
    detail = f" ({error})" if error else ""
    return f"no broker answers on {where} within {waited:g} s{detail}; if none runs, {how}"


def ipc_prefix(root: str) -> str:
    """A short, fixed-shape prefix for the POSIX IPC objects of the broker at ``root``.

    Derived from the real path so that two brokers never share objects and a
    new broker finds the ones a killed predecessor left behind.
    """
    digest = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return f"/shmwal_{os.getuid()}_{digest}"


def socket_address(root: str, dir_fd: int | None = None) -> str:
    """The control socket's address; long paths go through /proc/self/fd (sun_path is 108 bytes)."""
    path = os.path.join(root, "broker.sock")
    if len(path.encode()) < 100 or dir_fd is None:
        return path
    return f"/proc/self/fd/{dir_fd}/broker.sock"
