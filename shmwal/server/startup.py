"""Start-up of the broker process, in order: lock, sweep, recover, listen.

* ``take_lock``: ``broker.lock`` (flock: released by the kernel however the
  broker dies, so a killed broker never blocks the next one).
* ``sweep_previous_run``: what a broker killed on this directory left behind
  (its socket, its semaphores).
* ``recover_topics``: every topic made consistent (server/recovery.py) and
  adopted: its blocks marked live in the allocator, its state registered.
  A meta file that cannot be used is rebuilt from the block files.
* ``listen``: ``broker.sock``, 0600, for this user only.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket

import posix_ipc

from ..blocks import layout as L
from ..blocks.allocator import BlockAllocator
from ..blocks.files import BlockFiles
from ..blocks import migrate
from ..blocks.meta import TopicMeta, boot_hash
from ..errors import BrokerAlreadyRunning, ShmwalError
from ..ipc import names
from ..ipc.names import socket_address
from .recovery import rebuild_meta, recover_topic
from .registry import Registry

log = logging.getLogger("shmwal.broker")

LISTEN_BACKLOG = 256


def take_lock(root: str) -> int:
    """Hold ``broker.lock`` for the life of this process; its descriptor (close it last)."""
    fd = os.open(os.path.join(root, "broker.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BrokerAlreadyRunning(f"a broker already runs on {root}") from None
    return fd


def sweep_previous_run(root: str, prefix: str) -> None:
    """Remove what a broker killed on this directory left behind.

    Its semaphores are found by their name prefix (derived from this
    directory) in /dev/shm, and by broker.run where that is readable; a
    damaged broker.run must not stop a broker from starting.
    """
    stale = set()
    try:
        with open(os.path.join(root, "broker.run"), "rb") as f:
            previous = json.load(f)
        if isinstance(previous, dict) and isinstance(previous.get("semaphores"), list):
            stale.update(n for n in previous["semaphores"] if isinstance(n, str) and n.startswith(prefix + "_"))
    except (OSError, ValueError):
        pass
    try:
        shm_prefix = "sem." + prefix.lstrip("/") + "_"
        stale.update("/" + n[4:] for n in os.listdir("/dev/shm") if n.startswith(shm_prefix))
    except OSError:
        pass
    for name in stale:
        try:
            posix_ipc.unlink_semaphore(name)
        except posix_ipc.ExistentialError:
            pass
    try:
        os.unlink(os.path.join(root, "broker.sock"))
    except FileNotFoundError:
        pass


def next_file_id(blocks_dir: str) -> int:
    """The id for the next new block file: above every file on disk."""
    return max((file_id + 1 for file_id in BlockAllocator(blocks_dir, 1, 1).existing_files()), default=1)


def recover_topics(registry: Registry, allocator: BlockAllocator, files: BlockFiles, should_stop=None) -> None:
    """Recover and adopt every topic under ``topics/``; delete block files no chain refers to."""
    current_boot = boot_hash()
    damaged = []
    for name in sorted(os.listdir(registry.topics_dir)):
        tdir = os.path.join(registry.topics_dir, name)
        try:
            names.check_name(name)
        except ShmwalError:
            log.warning("ignoring %s: not a topic name", tdir)
            continue
        try:
            os.unlink(os.path.join(tdir, "meta.new"))  # a topic whose creation was cut short
        except FileNotFoundError:
            pass
        path = os.path.join(tdir, "meta")
        try:
            os.unlink(path + migrate.UPGRADE_SUFFIX)   # an upgrade cut short: the old file is whole
        except FileNotFoundError:
            pass
        if migrate.needs_upgrade(path):
            # Failing here fails the start (e.g. ENOSPC): skipping the topic would
            # leave its block files unreferenced, and those are deleted below.
            migrate.upgrade_v2(path)
        try:
            meta = TopicMeta(path, name)
        except (OSError, ValueError) as exc:
            log.error("topic %s: meta file unusable (%s); rebuilding it from the block files", name, exc)
            damaged.append((name, path, {}))
            continue
        problem = adopt_topic(meta, current_boot, registry, allocator, files, should_stop)
        if problem is not None:
            log.error("topic %s: meta file damaged (%s); rebuilding it from the block files", name, problem)
            groups = {g: meta.get(L.group_slot_at(slot) + L.G_CURSOR) for g, slot in meta.group_names().items()}
            meta.close()
            damaged.append((name, path, groups))
    for name, path, groups in damaged:   # after the healthy ones: their topic ids are taken by then
        meta = rebuild_meta(path, name, registry.next_topic_id, allocator.directory, files, groups)
        if meta is None:
            log.error("topic %s: no block names it; nothing to recover", name)
            continue
        problem = adopt_topic(meta, current_boot, registry, allocator, files, should_stop)
        if problem is not None:
            log.error("topic %s: the rebuilt meta file is unusable too (%s)", name, problem)
    # Files no chain refers to hold nothing anyone can read (their blocks were never handed out).
    for file_id in allocator.existing_files():
        if file_id not in allocator.live:
            log.info("deleting unreferenced block file %d", file_id)
            files.remove(file_id)
    unclaimed = allocator.release_unclaimed()
    if unclaimed:
        log.info("releasing %d bytes of block files that no chain holds", unclaimed)


def adopt_topic(meta: TopicMeta, current_boot: int, registry: Registry, allocator: BlockAllocator,
                files: BlockFiles, should_stop=None) -> str | None:
    """Bring one topic's meta file into this broker: mutexes, tail, blocks, semaphore.

    Returns what is wrong with the meta file if it cannot be used (then nothing was adopted).
    """
    if meta.get(L.H_BOOT) != current_boot:
        meta.reinit_mutexes()
    report = recover_topic(meta, files, should_stop)
    if report["problem"] is not None:
        return report["problem"]
    if report["truncated_from"] is not None or report["damaged"]:
        log.warning("topic %s recovered: %s", meta.name, report)
    for index in range(meta.get(L.H_FIRST_BLOCK), meta.get(L.H_ALLOCATED_BLOCKS)):
        file_id, file_offset, capacity, _first = meta.chain(index)
        if capacity:   # 0: a slot whose writing was cut short
            allocator.adopt(file_id, file_offset, capacity)
    registry.adopt(meta)
    return None


def listen(root: str) -> tuple[socket.socket, int]:
    """(the listening socket, a descriptor of ``root`` that the socket's address goes through)."""
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        address = socket_address(root, dir_fd)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)
        try:
            listener.bind(address)
        finally:
            os.umask(old_umask)
        os.chmod(os.path.join(root, "broker.sock"), 0o600)
        listener.listen(LISTEN_BACKLOG)
        listener.setblocking(False)
    except BaseException:
        os.close(dir_fd)
        raise
    return listener, dir_fd
