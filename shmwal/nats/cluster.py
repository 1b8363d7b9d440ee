"""A local JetStream cluster for tests and benchmarks: N nats-server processes on 127.0.0.1.

Each node gets free client, route and monitoring ports on the loopback only, its
own config file and store folder under one private temporary directory, and is
ready when its ``/healthz`` says ok. ``stop()`` ends every node (SIGTERM, then
SIGKILL after a bound) and removes the directory, so nothing outlives it.
``scripts/nats_cluster.py`` runs one from the command line.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

HOST = "127.0.0.1"
READY_WITHIN = 20.0      # seconds for every node to answer /healthz ok
STOP_WITHIN = 5.0        # seconds a node gets to exit on SIGTERM before SIGKILL


class ClusterUnavailable(RuntimeError):
    """nats-server is not installed, or the cluster did not come up (the message says why)."""


def server_binary() -> str | None:
    found = shutil.which("nats-server")
    if found is None and os.path.exists("/usr/sbin/nats-server"):
        found = "/usr/sbin/nats-server"   # Debian's package puts it in sbin
    return found


def _die_with_parent() -> None:
    """In the forked child: SIGKILL it when the thread that started it dies, so a test run or
    benchmark killed outright leaves no nats-server behind (its own session keeps a Ctrl-C
    meant for pytest from killing the nodes before their fixture stops them). Start a
    cluster from a thread that outlives it, the main thread for one."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def scratch_parent(room: int = 2 << 30) -> str | None:
    """/dev/shm where it has ``room`` bytes free, else None (the temp dir).

    A test cluster holds hundreds of small replicated streams, ~30 files each: removing
    them from ext4 here took 30 s at the end of a session, from tmpfs a fraction of one."""
    try:
        return "/dev/shm" if shutil.disk_usage("/dev/shm").free >= room else None
    except OSError:
        return None


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel had free on the loopback (all held until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


DIR_PREFIX = "shmwal-nats-"


def sweep_orphans(parent: str | None = None) -> list[str]:
    """Remove the store folders of clusters whose starter died (SIGKILL, no ``stop()``).

    A folder is named after the pid that made it; its nodes died with that process
    (``_die_with_parent``), so once the pid is gone nothing uses it. Only folders of this
    user are touched. Returns the folders removed."""
    parent = parent or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(DIR_PREFIX):
            continue
        pid_text = name[len(DIR_PREFIX):].split("-", 1)[0]
        path = os.path.join(parent, name)
        try:
            if not pid_text.isdigit() or os.lstat(path).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Node:
    def __init__(self, name: str, root: str, client: int, route: int, http: int):
        self.name = name
        self.client_port = client
        self.route_port = route
        self.http_port = http
        self.config = os.path.join(root, f"{name}.conf")
        self.store = os.path.join(root, name)
        self.log = os.path.join(root, f"{name}.log")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.client_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/healthz", timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False


class Cluster:
    """``Cluster(3).start()``; ``.url`` for ``shmwal.connect``; ``.kill(i)``, ``.restart(i)``, ``.stop()``."""

    def __init__(self, nodes: int = 3, *, max_payload: int = 8 << 20, binary: str | None = None,
                 parent: str | None = None):
        """``parent``: where the private directory goes (default: the temp dir)."""
        self.binary = binary or server_binary()
        if self.binary is None:
            raise ClusterUnavailable("nats-server is not installed (apt-get install nats-server)")
        sweep_orphans(parent)
        self.root = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=parent)
        os.chmod(self.root, 0o700)
        ports = free_ports(3 * nodes)
        self.nodes = [Node(f"n{i}", self.root, *ports[3 * i:3 * i + 3]) for i in range(nodes)]
        for node in self.nodes:
            self._write_config(node, max_payload)

    def _write_config(self, node: Node, max_payload: int) -> None:
        routes = ", ".join(f"nats-route://{HOST}:{n.route_port}" for n in self.nodes if n is not node)
        cluster = ""
        if len(self.nodes) > 1:
            cluster = (f"cluster {{\n  name: shmwal\n  listen: {HOST}:{node.route_port}\n"
                       f"  routes: [{routes}]\n}}\n")
        text = (f"server_name: {node.name}\nlisten: {HOST}:{node.client_port}\n"
                f"http: {HOST}:{node.http_port}\nmax_payload: {max_payload}\n"
                f"jetstream {{\n  store_dir: \"{node.store}\"\n  max_memory_store: 256MB\n"
                f"  max_file_store: 8GB\n}}\n{cluster}")
        fd = os.open(node.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    @property
    def url(self) -> str:
        return "nats://" + ",".join(f"{HOST}:{n.client_port}" for n in self.nodes)

    def start(self) -> "Cluster":
        try:
            for node in self.nodes:
                self._launch(node)
            self.wait_ready([n for n in self.nodes])
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, node: Node) -> None:
        log = open(node.log, "ab")
        try:
            node.process = subprocess.Popen([self.binary, "-c", node.config], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        finally:
            log.close()

    def wait_ready(self, nodes, within: float = READY_WITHIN) -> None:
        deadline = time.monotonic() + within
        for node in nodes:
            while not node.healthy():
                if node.process.poll() is not None:
                    raise ClusterUnavailable(f"nats-server {node.name} exited: {self.tail(node)}")
                if time.monotonic() > deadline:
                    raise ClusterUnavailable(f"nats-server {node.name} not healthy within {within} s: "
                                             f"{self.tail(node)}")
                time.sleep(0.05)

    def tail(self, node: Node, lines: int = 5) -> str:
        try:
            with open(node.log, "rb") as f:
                return b" | ".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    def kill(self, index: int) -> None:
        """SIGKILL one node (it keeps its store folder, for ``restart``)."""
        process = self.nodes[index].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(STOP_WITHIN)

    def restart(self, index: int) -> None:
        node = self.nodes[index]
        self.kill(index)
        self._launch(node)
        self.wait_ready([node])

    @property
    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes if n.process is not None and n.process.poll() is None]

    def stop(self, graceful: bool = False) -> None:
        """End every node and remove the directory. The store goes with it, so by default
        nodes are SIGKILLed: a graceful JetStream shutdown of a test cluster holding
        hundreds of replicated streams took over 30 s here, for nothing kept."""
        running = [n.process for n in self.nodes if n.process is not None and n.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + STOP_WITHIN
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_WITHIN)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
