"""Access (issue 3, item 8): everything a broker makes is private to its user; other uids are refused.

* The data directory, the namespace, block and meta files, the socket, the
  run, lock and log files are 0600/0700 (no group or other bit) -- even when
  the broker is started under umask 0 and the data directory existed as 0755;
  the broker's semaphores in /dev/shm have no group or other bit either.
* A client of another uid cannot use the broker.  Run as root, the test forks
  children that drop to uid 65534:
  - fully (setuid): it cannot even reach the socket; ``connect`` must raise
    BrokerUnavailable;
  - with only the effective uid dropped and the filesystem uid kept at 0
    (seteuid + setfsuid): the socket is reachable, SO_PEERCRED reports uid
    65534, and the broker must close the connection without answering (the
    child's ``connect`` raises BrokerUnavailable), and say so in its log.
  A root child doing the same gets its answer: the refusal is by uid.
"""

from __future__ import annotations

import ctypes
import os
import socket
import stat

import numpy as np
import pytest

import shmwal
from shmwal.ipc import control
from conftest import ipc_leftovers
from drill_helpers import broker_log, private_mode

NOBODY = 65534
_libc = ctypes.CDLL(None, use_errno=True)


def _all_paths(top):
    yield top
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            yield os.path.join(dirpath, n)


@pytest.mark.timeout(60)
def test_everything_the_broker_makes_is_private(start_broker, data_dir):
    os.makedirs(data_dir, mode=0o755)
    os.chmod(data_dir, 0o755)
    old = os.umask(0)
    try:
        broker = start_broker()
        with shmwal.connect(data_dir) as client:
            for topic in ("t1", "t2"):
                client.batch_append(topic, [os.urandom(3000) for _ in range(60)])   # several blocks and files
                client.append(topic, np.zeros(200_000, dtype=np.uint8))              # a block file of its own
                client.read_next(topic, group="g")
            kinds = {}
            for path in _all_paths(data_dir):
                st = os.stat(path, follow_symlinks=False)
                kinds.setdefault(stat.S_IFMT(st.st_mode), []).append(path)
                assert private_mode(path) == 0, f"{path} is {oct(st.st_mode & 0o777)}: group/other may access it"
                assert st.st_uid == os.getuid()
            names = {os.path.basename(p) for ps in kinds.values() for p in ps}
            for required in ("broker.sock", "broker.run", "broker.lock", "meta", "blocks", "topics"):
                assert required in names, f"no {required} found under {data_dir}: the check would be void"
            assert any(n.endswith("broker.log") for n in names), "no broker log found: the check would be void"
            assert kinds.get(stat.S_IFSOCK), "the control socket was not found"
            assert sum(p.endswith(".blk") for p in kinds[stat.S_IFREG]) >= 3
            sems = ipc_leftovers(broker.root)
            assert len(sems) >= 2, f"expected a semaphore per topic in /dev/shm, found {sems}"
            for name in sems:
                st = os.stat(os.path.join("/dev/shm", name))
                assert st.st_mode & 0o077 == 0, f"/dev/shm/{name} is {oct(st.st_mode & 0o777)}"
                assert st.st_uid == os.getuid()
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- other uids

def _in_child(fn):
    """Run ``fn`` in a forked child; return what it wrote to the pipe (the child is always reaped)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = fn()
        except BaseException as exc:
            out = f"child error {type(exc).__name__}: {exc}"
        os.write(w, out.encode()[:4000])
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return b"".join(chunks).decode()


def _connect_outcome(data_dir):
    try:
        client = shmwal.connect(data_dir, timeout=1.0)
    except shmwal.BrokerUnavailable:
        return "BrokerUnavailable"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        client.append("from-another-uid", b"x")
        return "connected and appended"
    except Exception as exc:
        return f"connected, then {type(exc).__name__}"


def _raw_exchange(address):
    """Connect to the control socket, say hello; return 'reply', 'closed' (EOF, reset or EPIPE) or an error."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(address)
    except OSError as exc:
        return f"connect failed: {exc.strerror}"
    try:
        s.sendall(control.encode({"op": "hello", "pid": os.getpid()}))
        data = s.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return f"error {exc.strerror}"
    finally:
        s.close()
    return "closed" if not data else "reply"


def _drop_euid_keep_fs_access():
    os.setegid(NOBODY)
    os.seteuid(NOBODY)          # what SO_PEERCRED reports
    _libc.setfsuid(0)           # filesystem checks still as root (real uid 0 allows it)
    _libc.setfsgid(0)
    assert os.geteuid() == NOBODY
    return _libc.setfsuid(-1) == 0   # setfsuid(-1) fails and returns the current fsuid


@pytest.mark.timeout(60)
def test_a_client_of_another_uid_is_refused(broker, data_dir):
    if os.getuid() != 0:
        pytest.skip("needs root to run a child as another uid")
    sock_path = os.path.join(broker.root, "broker.sock")
    with shmwal.connect(data_dir) as client:
        client.append("mine", b"x")

    # 1. Fully another user: it cannot connect (it cannot even reach the path).
    def as_nobody():
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        return _connect_outcome(data_dir)
    assert _in_child(as_nobody) == "BrokerUnavailable"

    # 2. Another effective uid that can reach the socket: refused by peer credentials.
    def as_nobody_with_fs_access():
        if not _drop_euid_keep_fs_access():
            return "no fsuid"
        return _raw_exchange(sock_path) + "|" + _connect_outcome(data_dir)
    outcome = _in_child(as_nobody_with_fs_access)
    if outcome == "no fsuid" or outcome.startswith("connect failed"):
        pytest.skip(f"could not reach the socket as euid {NOBODY} with fsuid 0 ({outcome}): "
                    f"peer-credential refusal not exercised")
    raw, api = outcome.split("|")
    assert raw == "closed", f"the broker answered a client of uid {NOBODY}: {raw}"
    assert api == "BrokerUnavailable", f"a client of uid {NOBODY}: {api}"

    # The same exchange as root is answered: the refusal above is by uid.
    assert _in_child(lambda: _raw_exchange(sock_path)) == "reply"
    log = broker_log(broker.root)
    refusals = [line for line in log.splitlines() if "refused" in line and str(NOBODY) in line]
    assert refusals, f"the broker log does not record the refusal of uid {NOBODY}"
    with shmwal.connect(data_dir) as client:
        assert client.topics() == ["mine"], "another uid's append landed"
