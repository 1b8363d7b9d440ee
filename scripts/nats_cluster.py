#!/usr/bin/env python3
"""Run a local JetStream cluster on 127.0.0.1 until Ctrl-C (SIGINT) or SIGTERM.

    python scripts/nats_cluster.py [--nodes 3]
    # prints: nats://127.0.0.1:PORT,127.0.0.1:PORT,127.0.0.1:PORT
    python -c "import shmwal; c = shmwal.connect('nats://...'); print(c.append('t', b'x'))"

Free loopback ports, one config file and store folder per node in a private temporary
directory (shmwal/nats/cluster.py); every node is stopped and the directory removed on
the way out. Needs nats-server (apt-get install nats-server).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

sys.path.insert(0, __file__.rsplit("/scripts/", 1)[0])

from shmwal.nats.cluster import Cluster, ClusterUnavailable  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="how many nats-server nodes (default 3)")
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster = Cluster(args.nodes).start()
    except ClusterUnavailable as exc:
        print(f"nats_cluster: {exc}", file=sys.stderr)
        return 1
    try:
        print(cluster.url, flush=True)
        print(f"store and logs: {cluster.root} (removed at exit)", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            dead = [n.name for n in cluster.nodes if n.process.poll() is not None]
            if dead:
                print(f"nats_cluster: node(s) {dead} exited", file=sys.stderr)
                return 1
    finally:
        cluster.stop(graceful=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
