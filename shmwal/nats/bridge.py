"""``shmwal bridge``: mirror a local topic into a JetStream stream, exactly once, in order.

The bridge reads the local topic through a group of its own (``bridge-<topic>``)
and writes each entry to the stream with the message id ``<bridge id>:<local
offset>``, where the bridge id is a hash of the data directory, key and topic
(the same on every restart). One round:

1. peek a batch at the group's cursor (``checkpoint=False``: the cursor stays);
2. ``batch_append`` it with those ids (chained: see ``NatsClient._send_batch``);
3. ``seek`` the cursor past the batch.

Killed between 2 and 3, the next bridge peeks the same entries again and sends
them with the same ids: JetStream answers "duplicate" for those it has, and
stores the rest behind them. Killed inside 2, the stream holds a prefix of the
batch, and the same holds. Killed inside 1 or 3, nothing was sent, or the
cursor moved as far as the stream holds. So the stream holds every local entry
once, in local order, whatever instant the bridge dies at.

The dedup window would bound that (a bridge that stays dead longer than the
stream's window re-sends as new), so a starting bridge does not lean on it:
the stream's last message id names the last local offset it holds, and the
cursor starts after it. The bridge is the stream's only writer: another writer
of the same stream breaks the chain (``BatchInterleaved``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading

from ..ipc.names import check_name, resolve_data_dir, sanitize_key

MAX_BYTES = 1 << 20      # one peek (and one remote batch): at most this much payload
WAIT = 0.5               # a peek waits this long for entries, then looks at the stop flag
RETRY_AFTER = 0.5        # seconds before a round that found either side unavailable runs again


def bridge_group(topic: str) -> str:
    group = f"bridge-{topic}"
    if len(group) > 255:
        group = "bridge-" + hashlib.sha256(topic.encode()).hexdigest()[:32]
    return check_name(group, "group")


def bridge_id(data_dir, key, topic: str) -> str:
    """Stable across restarts of a bridge of the same local topic; never the same for another."""
    where = f"{os.path.realpath(resolve_data_dir(data_dir))}\0{sanitize_key(key)}\0{topic}"
    return "b" + hashlib.sha256(where.encode()).hexdigest()[:24]


class Bridge:
    """Mirror ``topic`` of the local broker at ``data_dir``/``key`` into ``url``'s JetStream."""

    def __init__(self, data_dir, topic: str, url: str, *, key=None, remote_topic: str | None = None,
                 remote_key=None, group: str | None = None, max_bytes: int = MAX_BYTES,
                 timeout: float = 10.0, **remote_options):
        import shmwal
        self.topic = check_name(topic)
        self.remote_topic = check_name(remote_topic or topic)
        self.group = check_name(group, "group") if group else bridge_group(topic)
        self.max_bytes = max_bytes
        self.id = bridge_id(data_dir, key, topic)
        self.stopping = threading.Event()
        self.sent = 0
        self.local = shmwal.connect(data_dir, key=key, timeout=timeout)
        try:
            self.remote = shmwal.connect(url, key=remote_key, timeout=timeout, **remote_options)
        except BaseException:
            self.local.close()
            raise

    def resume(self) -> int:
        """Put the cursor after the last entry the stream holds from this bridge; its offset."""
        cursor = self.local.position(self.topic, group=self.group)
        last = self.remote.last_msg_id(self.remote_topic)
        prefix = self.id + ":"
        if last is not None and last.startswith(prefix):
            cursor = max(cursor, int(last[len(prefix):]) + 1)
        self.local.seek(self.topic, cursor, group=self.group)   # also makes the group
        return cursor

    def step(self, wait: float = WAIT) -> int:
        """One round (module docstring); how many entries it sent."""
        entries = self.local.batch_read(self.topic, self.max_bytes, group=self.group,
                                        checkpoint=False, timeout=wait)
        if not entries:
            return 0
        self.remote.batch_append(self.remote_topic, [e.data for e in entries],
                                 msg_ids=[f"{self.id}:{e.offset}" for e in entries])
        self.local.seek(self.topic, entries[-1].offset + 1, group=self.group)
        self.sent += len(entries)
        return len(entries)

    def run(self) -> None:
        from ..errors import BrokerUnavailable
        self.resume()
        while not self.stopping.is_set():
            try:
                self.step()
            except BrokerUnavailable:
                # The local broker restarting, or the cluster electing a leader: the round
                # is sent again (same ids) once both answer.
                self.stopping.wait(RETRY_AFTER)

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.local.close()
        self.remote.close()

    def __enter__(self) -> "Bridge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_bridge(args) -> int:
    """``shmwal bridge``: runs until SIGINT or SIGTERM, then stops after the round under way."""
    bridge = Bridge(args.data_dir, args.topic, args.to, key=args.key, remote_topic=args.remote_topic,
                    remote_key=args.remote_key, max_bytes=args.max_bytes)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: bridge.stop())
    try:
        bridge.run()
    finally:
        bridge.close()
    return 0
