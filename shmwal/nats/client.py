"""``shmwal.connect("nats://...")``: the Client API on a NATS JetStream cluster.

What maps onto what (API.md "Beyond one machine"; ``shmwal/nats/__init__.py``
lists what holds and what does not):

* a topic is a stream with one subject (``names.py``); an offset is the stream
  sequence minus one. JetStream numbers a stream 1, 2, 3, ... and a message
  dropped as a duplicate takes no number, so offsets stay gapless.
* a group is a durable pull consumer with explicit acks. A read pulls from it;
  StrictlyAtOnce claims the entries (below) and acknowledges them before the read
  returns; AtLeastOnce acknowledges without waiting for the server's answer.
* ``batch_append`` sends the whole batch in one flush, every entry with a
  ``Nats-Msg-Id`` and every entry after the first with
  ``Nats-Expected-Last-Msg-Id`` of the one before it; see ``_send_batch``.
* ``seek`` deletes the group's consumer and makes it again with a start
  sequence: entries a reader of the group holds unacknowledged at that moment
  are forgotten with the old consumer.

Why claims (StrictlyAtOnce). nats-server 2.9 answers an ``AckSync`` as soon as
the consumer leader has *proposed* the ack to its raft group, not once a
quorum holds it (``consumer.go`` ``processAck`` → ``updateAcks`` → ``propose``;
the reply is sent right after). A consumer leader killed in that window comes
back through a new leader that never saw the ack and delivers the entry again.
A publish, unlike an ack, is answered only after its raft entry is committed
and applied, and its ``Nats-Msg-Id`` dedup check runs at apply time in log
order on every replica. So a strict read claims its entries in the claims
stream before it returns them: one write a read, however many entries, that
adds them to its group's claim state (``claims.py``: a versioned state whose
next version only one reader can store). An entry found claimed already (its
earlier delivery was claimed, then its ack lost with a leader) is dropped. The
claims stream keeps ids for ``claims_window`` seconds: an entry redelivered
later than that (its reader died between claim and ack, and no reader of the
group pulled for the whole window) would be delivered twice.

Threads: every coroutine runs on this client's own loop thread
(``loop.LoopThread``); state below is touched only there, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import time
import uuid

from ..entry import Entry, Payloads
from ..errors import (BatchTooLarge, BrokerUnavailable, ClientClosed, EntryTooLarge,
                      ShmwalError, Unsupported)
from ..client.append import batch_list
from ..client.facade import check_start
from ..ipc.names import check_name
from ..options import AtLeastOnce, StrictlyAtOnce
from ..blocks import layout as L
from . import names
from .claims import ClaimLog, decode as decode_claims
from .loop import LoopThread

HEADER_ROOM = 512          # bytes of a message's payload limit kept for our headers
ACK_WAIT = 30.0            # seconds before JetStream redelivers an unacknowledged entry
CLAIMS_WINDOW = 300.0      # seconds a StrictlyAtOnce claim is remembered
CLAIMS_KEPT_PAST_WINDOW = 30.0   # seconds (see _ensure_claims)
DEDUP_WINDOW = 120.0       # seconds a topic's stream remembers message ids (retried appends)
ATTEMPT = 2.0              # seconds one request waits before it is sent again
GRACE = 1.0                # seconds past a pull's expiry that we wait for the server's word
RETRY_PAUSE = 0.05
CATCH_UP = 2.0             # seconds a timeout=0 read waits for entries the stream has and its consumer not yet
PEEK_AHEAD = 100           # direct gets in flight at once while peeking
ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014
ERR_WRONG_LAST_MSG_ID = 10070
ERR_TOO_BIG = 10054
ERR_NO_MESSAGE = 10037
TRANSIENT_CODES = {503, 408}


class BatchInterleaved(ShmwalError):
    """Another writer's entry landed inside a batch (``.offsets``: where each entry is).

    Every entry of the batch is stored exactly once and in order, but not
    contiguously: JetStream 2.9 has no atomic batch, and refuses the rest of a
    chained batch once a foreign entry broke the chain; the rest is then sent
    again after it. Only concurrent writers of one topic can cause this.
    """

    def __init__(self, topic: str, offsets: list[int]):
        super().__init__(f"a concurrent writer's entry landed inside a batch to {topic!r}; "
                         f"its entries are at offsets {offsets[:4]}{'...' if len(offsets) > 4 else ''}")
        self.topic = topic
        self.offsets = offsets


class _Transient(Exception):
    """A request that may succeed when sent again (no leader yet, lost reply)."""


class _ApiError(Exception):
    def __init__(self, err: dict):
        super().__init__(err.get("description", "JetStream error"))
        self.code = err.get("code")
        self.err_code = err.get("err_code")


def is_nats_url(address) -> bool:
    return isinstance(address, str) and address.startswith(("nats://", "tls://"))


def parse_servers(url: str) -> list[str]:
    """``nats://a:1,b:2`` -> ``["nats://a:1", "nats://b:2"]``."""
    scheme, _, rest = url.partition("://")
    hosts = [h.strip() for h in rest.split(",") if h.strip()]
    if not hosts:
        raise ValueError(f"no server in {url!r}")
    return [f"{scheme}://{h}" for h in hosts]


class _Topic:
    __slots__ = ("name", "stream", "subject")

    def __init__(self, ns: str, topic: str):
        self.name = topic
        self.stream = names.stream_name(ns, topic)
        self.subject = names.subject(ns, topic)


class _Inbox:
    """What the server sends to one subscription, in arrival order, for whoever awaits it.

    nats-py's ``sub.next_msg`` starts a task, a timer task and a uuid for every message:
    a third of a 1,000-entry read's time went there. A callback subscription hands
    each message over without a task (its one task drains nats-py's queue in a loop),
    and ``get`` does not suspend while messages are waiting."""

    __slots__ = ("msgs", "waiter")

    def __init__(self):
        self.msgs = collections.deque()
        self.waiter = None

    async def deliver(self, msg) -> None:
        self.msgs.append(msg)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float):
        """The next message, or None if none came within ``timeout`` seconds."""
        if not self.msgs:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait((self.waiter,), timeout=timeout)
            finally:
                self.waiter = None
            if not self.msgs:
                return None
        return self.msgs.popleft()


class _Pending:
    """The answers of one pipeline (``NatsClient._pipeline``) as they come in."""

    __slots__ = ("answers", "left", "done")

    def __init__(self, n: int):
        self.answers: list = [None] * n
        self.left = n
        self.done = asyncio.get_running_loop().create_future()

    def answer(self, i: int, answer) -> None:
        if self.answers[i] is None:
            self.left -= 1
        self.answers[i] = answer
        if not self.left and not self.done.done():
            self.done.set_result(None)


class _Reader:
    """One (topic, group) as this client reads it: its consumer and its reply inbox."""

    def __init__(self, topic: _Topic, group: str, durable: str, generation: str):
        self.topic = topic
        self.group = group
        self.durable = durable
        self.generation = generation
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{topic.stream}.{durable}"
        self.sub = None
        self.inbox = _Inbox()          # what pulls deliver to ``sub``
        self.lock = asyncio.Lock()     # one pull at a time: replies are told apart by order
        self.mean_size = None          # of the payloads read so far: sizes the next pull
        self.buffer = []               # delivered past a batch_read's cap: the next read's first
        self.buffered_at = 0.0


class NatsClient:
    """The shmwal Client API over NATS JetStream (see the module docstring)."""

    _loop = None
    _nc = None
    _closed = True

    def __init__(self, url: str, *, key=None, timeout: float = 5.0, io=None, consistency=None,
                 replicas: int | None = None, ack_wait: float = ACK_WAIT,
                 claims_window: float = CLAIMS_WINDOW, dedup_window: float = DEDUP_WINDOW,
                 claims: bool = True):
        if io not in (None, "auto"):
            raise Unsupported("io= chooses how a local client reads its mapped files; "
                              "a nats:// client reads over the network")
        from ..timeouts import check_timeout
        timeout = check_timeout(timeout)
        if consistency is None:
            consistency = StrictlyAtOnce()
        if not isinstance(consistency, (StrictlyAtOnce, AtLeastOnce)):
            raise TypeError("consistency must be StrictlyAtOnce() or AtLeastOnce(...)")
        self._url = url
        self._servers = parse_servers(url)
        self._key = key
        self._ns = names.namespace(key)
        self._timeout = 5.0 if timeout is None else float(timeout)
        self.consistency = consistency
        self._strict = isinstance(consistency, StrictlyAtOnce)
        self._claims = claims and self._strict
        self._replicas = replicas if replicas is not None else min(3, len(self._servers))
        self._ack_wait = ack_wait
        self._claims_window = claims_window
        self._dedup_window = dedup_window
        self._options = dict(key=key, timeout=timeout, consistency=consistency, replicas=replicas,
                             ack_wait=ack_wait, claims_window=claims_window,
                             dedup_window=dedup_window, claims=claims)
        self._id = uuid.uuid4().hex[:16]    # message ids of this client's appends
        self._counter = 0
        self._topics: dict[str, _Topic] = {}
        self._known_streams: set[str] = set()
        self._readers: dict[tuple, _Reader] = {}
        self._claims_ready = False
        self._claims_dedup = claims_window
        self._claim_logs: dict = {}       # claims subject -> ClaimLog
        self._pending: dict[int, _Pending] = {}   # pipelines awaiting answers, by number
        self._pipelines = 0
        self._pid = os.getpid()
        self._loop = LoopThread()
        self._closed = False
        try:
            self._loop.call(self._connect(), self._timeout + 1.0)
        except BaseException:
            self.close()
            raise

    # ================================================================== plumbing
    def _call(self, coro, timeout: float | None = None):
        if self._closed:
            coro.close()
            raise ClientClosed("this client was closed")
        if os.getpid() != self._pid:
            coro.close()
            raise ShmwalError("a nats:// client does not survive fork(); pickle it to a worker instead")
        # A safety net only: each step inside (a pull, a pipeline of claims, its retries)
        # keeps its own deadline of `timeout` (client) seconds.
        wait = None if timeout is None else timeout + 4 * self._timeout + GRACE
        return self._loop.call(coro, wait)

    async def _connect(self) -> None:
        import nats
        from nats.errors import NoServersError

        async def quiet(_exc):
            pass   # nats-py logs every failed reconnect; the calls say what went wrong

        try:
            self._nc = await nats.connect(
                servers=self._servers, connect_timeout=max(0.2, min(self._timeout, 2.0)),
                allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                error_cb=quiet, name=f"shmwal-{self._id}")
        except (NoServersError, OSError, asyncio.TimeoutError) as exc:
            raise BrokerUnavailable(f"no NATS server answers at {self._url}: {exc}") from None
        self._max_payload = self._nc.max_payload
        # One subscription for the answers of every pipeline, for the client's life
        # (nats-py subscribes it again after a reconnect): ``<prefix>.<pipeline>.<request>``.
        self._reply_prefix = self._nc.new_inbox()
        await self._nc.subscribe(self._reply_prefix + ".*.*", cb=self._on_answer)

    async def _on_answer(self, msg) -> None:
        _, pipeline, i = msg.subject.rsplit(".", 2)
        pending = self._pending.get(int(pipeline))
        if pending is not None:   # else a pipeline that gave up on it: dropped
            pending.answer(int(i), _answer(msg))

    async def _request(self, subject: str, payload: bytes, headers=None, timeout: float = ATTEMPT):
        """One JetStream API request or publish: its JSON answer, or _Transient/_ApiError."""
        from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
        from nats.errors import ConnectionClosedError, ConnectionReconnectingError
        try:
            msg = await self._nc.request(subject, payload, timeout=timeout, headers=headers)
        except (NoRespondersError, NatsTimeout, asyncio.TimeoutError, ConnectionReconnectingError) as exc:
            raise _Transient(str(exc) or type(exc).__name__) from None
        except ConnectionClosedError:
            raise BrokerUnavailable(f"the connection to {self._url} is closed") from None
        answer = json.loads(msg.data)
        err = answer.get("error")
        if err:
            if err.get("code") in TRANSIENT_CODES:
                raise _Transient(err.get("description", "unavailable"))
            raise _ApiError(err)
        return answer

    async def _pipeline(self, requests: list, timeout: float | None = None) -> list:
        """Send ``(subject, payload, headers)`` requests in this order, in one flush, and
        return each one's answer: a dict (JSON, or ``{}`` for an empty reply), an
        _ApiError, or a _Transient (no responder, or no reply within ``timeout``).
        A request made with ``_unanswered`` asks for no answer and counts as ``{}``.

        Order matters (a batch's chain, the acks of a read: ``_ack_requests``), and
        concurrent ``nc.request`` calls do not keep it; one reply subject per request,
        numbered, on the client's one answer subscription, does."""
        from nats.errors import ConnectionClosedError
        nc = self._nc
        self._pipelines += 1
        number = self._pipelines
        pending = _Pending(len(requests))
        self._pending[number] = pending   # before the first publish: it may yield
        try:
            try:
                for i, (subject, payload, headers) in enumerate(requests):
                    if headers is UNANSWERED:
                        await nc.publish(subject, payload)
                        pending.answer(i, {})
                    else:
                        await nc.publish(subject, payload, reply=f"{self._reply_prefix}.{number}.{i}",
                                         headers=headers)
            except ConnectionClosedError:
                raise BrokerUnavailable(f"the connection to {self._url} is closed") from None
            except Exception as exc:   # reconnecting, or a write that failed: send again later
                return [_Transient(repr(exc))] * len(requests)
            if pending.left:
                # Thousands of requests in one flush take a while to answer on a busy machine:
                # resending them all after a short wait would only add to the load.
                wait = timeout or max(ATTEMPT, min(self._timeout, ATTEMPT + len(requests) / 500))
                await asyncio.wait((pending.done,), timeout=wait)
        finally:
            del self._pending[number]
        return [_Transient("no reply") if a is None else a for a in pending.answers]

    async def _retrying(self, make, deadline: float):
        """``await make()`` until it stops raising _Transient or ``deadline`` passes."""
        pause = RETRY_PAUSE
        while True:
            try:
                return await make()
            except _Transient as exc:
                if time.monotonic() + pause >= deadline:
                    raise BrokerUnavailable(f"JetStream at {self._url} did not answer: {exc}") from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _deadline(self) -> float:
        return time.monotonic() + self._timeout

    def _topic(self, topic) -> _Topic:
        t = self._topics.get(topic) if type(topic) is str else None
        if t is None:
            t = _Topic(self._ns, check_name(topic))
            self._topics[topic] = t
        return t

    async def _api(self, what: str, body: dict | None, deadline: float):
        data = b"" if body is None else json.dumps(body).encode()
        return await self._retrying(lambda: self._request(f"$JS.API.{what}", data), deadline)

    async def _stream_info(self, t: _Topic, deadline: float):
        try:
            return await self._api(f"STREAM.INFO.{t.stream}", None, deadline)
        except _ApiError as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                return None
            raise ShmwalError(f"JetStream refused stream info of {t.name!r}: {exc}") from None

    async def _ensure_stream(self, t: _Topic, deadline: float) -> None:
        if t.stream in self._known_streams:
            return
        config = {
            "name": t.stream, "subjects": [t.subject], "description": t.name,
            "retention": "limits", "storage": "file", "discard": "old",
            "num_replicas": self._replicas, "duplicate_window": int(self._dedup_window * 1e9),
            "allow_direct": True,
        }
        try:
            await self._api(f"STREAM.CREATE.{t.stream}", config, deadline)
        except _ApiError as exc:
            # Made by another client with other options (replicas, dedup window): use it as it is.
            if await self._stream_info(t, deadline) is None:
                raise ShmwalError(f"JetStream refused to create the stream of {t.name!r}: {exc}") from None
        self._known_streams.add(t.stream)

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._id}.{self._counter}"

    # ================================================================== writing
    def append(self, topic, data, *, msg_id: str | None = None) -> int:
        """API.md ``append``. ``msg_id``: JetStream's dedup id (default: unique per call),
        so that a caller's own retry with the same id never writes twice."""
        t = self._topic(topic)
        payload = self._payload(data)
        return self._call(self._append(t, payload, msg_id or self._next_id()))

    async def _append(self, t: _Topic, payload: bytes, msg_id: str) -> int:
        deadline = self._deadline()
        await self._ensure_stream(t, deadline)
        headers = {"Nats-Msg-Id": msg_id}
        answer = await self._retrying(lambda: self._publish(t, payload, headers), deadline)
        return answer["seq"] - 1

    async def _publish(self, t: _Topic, payload: bytes, headers: dict):
        try:
            return await self._request(t.subject, payload, headers)
        except _ApiError as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                self._known_streams.discard(t.stream)
            if exc.err_code == ERR_TOO_BIG:
                raise EntryTooLarge(str(exc)) from None
            raise

    def _payload(self, data) -> bytes:
        if type(data) is not bytes:
            from ..client.append import as_payload
            data = as_payload(data).tobytes()
        self._check_size(len(data))
        return data

    def _check_size(self, n: int) -> None:
        limit = self._max_payload - HEADER_ROOM
        if n > limit:
            raise EntryTooLarge(f"an entry to NATS holds at most {limit} bytes (the server's "
                                f"max_payload less {HEADER_ROOM} for headers), got {n}")

    def batch_append(self, topic, items, *, msg_ids=None) -> range:
        """API.md ``batch_append`` (``shmwal/nats/__init__.py`` says what holds of "atomic").
        ``msg_ids``: one dedup id per entry (the bridge derives them from local offsets)."""
        t = self._topic(topic)
        items = batch_list(items)
        payloads = [self._payload(item) for item in items]
        if sum(map(len, payloads)) > L.MAX_BATCH_BYTES:
            raise BatchTooLarge(f"a batch holds at most {L.MAX_BATCH_BYTES} bytes")
        if msg_ids is None:
            msg_ids = [self._next_id() for _ in payloads]
        else:
            msg_ids = [str(m) for m in msg_ids]
            if len(msg_ids) != len(payloads):
                raise ValueError("msg_ids must give one id per entry")
        if not payloads:
            return self._call(self._empty_range(t))
        return self._call(self._send_batch(t, payloads, msg_ids))

    async def _empty_range(self, t: _Topic) -> range:
        info = await self._stream_info(t, self._deadline())
        n = 0 if info is None else info["state"]["last_seq"]
        return range(n, n)

    async def _send_batch(self, t: _Topic, payloads: list, ids: list) -> range:
        """Send a chained batch until every entry is stored (or known stored) once.

        Entry i > 0 carries ``Nats-Expected-Last-Msg-Id: ids[i-1]``: the stream
        stores it only right behind entry i-1, so no foreign entry lands inside a
        batch that succeeds. A retry re-sends the batch with the same ids: what
        was stored answers "duplicate" with its sequence (the dedup check runs
        before the expectation check), and the chain goes on behind it. A chain a
        foreign entry broke cannot be mended: the rest goes as a new chain, and
        BatchInterleaved says where everything went.
        """
        deadline = self._deadline()
        await self._ensure_stream(t, deadline)
        seqs: list[int | None] = [None] * len(payloads)
        chain_from = 0          # entries before it need no expectation header any more
        pause = RETRY_PAUSE
        while True:
            todo = [i for i in range(len(payloads)) if seqs[i] is None]
            if not todo:
                break
            first = todo[0]
            requests = []
            for i in todo:
                headers = {"Nats-Msg-Id": ids[i]}
                if i > chain_from:
                    headers["Nats-Expected-Last-Msg-Id"] = ids[i - 1]
                requests.append((t.subject, payloads[i], headers))
            results = await self._pipeline(requests)
            broken = False
            transient = None
            for i, result in zip(todo, results):
                if isinstance(result, dict):
                    seqs[i] = result["seq"]
                elif isinstance(result, _ApiError) and result.err_code == ERR_WRONG_LAST_MSG_ID:
                    if i == first:
                        broken = True   # the stream's last entry is not ours: the chain is cut
                elif isinstance(result, _Transient):
                    transient = result
                elif isinstance(result, _ApiError):
                    if result.err_code == ERR_TOO_BIG:
                        raise EntryTooLarge(str(result))
                    if result.err_code == ERR_STREAM_NOT_FOUND:
                        self._known_streams.discard(t.stream)
                    raise ShmwalError(f"JetStream refused an entry of a batch to {t.name!r}: {result}")
            if broken:
                chain_from = first  # a new chain starts here: no expectation on `first`
                headers = {"Nats-Msg-Id": ids[first]}
                answer = await self._retrying(lambda: self._publish(t, payloads[first], headers), deadline)
                seqs[first] = answer["seq"]
                continue
            if transient is not None or any(s is None for s in seqs):
                if time.monotonic() + pause >= deadline:
                    raise BrokerUnavailable(f"JetStream at {self._url} did not take a batch: {transient}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
        offsets = [s - 1 for s in seqs]
        if offsets[-1] - offsets[0] != len(offsets) - 1:
            raise BatchInterleaved(t.name, offsets)
        return range(offsets[0], offsets[-1] + 1)

    def reserve(self, topic, nbytes):
        raise Unsupported("reserve() writes in place into a mapped block; a nats:// client has "
                          "none: use append()")

    # ================================================================== reading
    def read_next(self, topic, *, group="default", checkpoint=True, timeout=0.0, zero_copy=False):
        entries = self._read(topic, group, 1, None, checkpoint, timeout, zero_copy)
        return entries[0] if entries else None

    def batch_read(self, topic, max_bytes, *, group="default", checkpoint=True, timeout=0.0,
                   zero_copy=False) -> list:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        return self._read(topic, group, L.MAX_READ_ENTRIES, max_bytes, checkpoint, timeout, zero_copy)

    def batch_read_payloads(self, topic, max_bytes, *, group="default", checkpoint=True,
                            timeout=0.0, zero_copy=False) -> Payloads:
        entries = self.batch_read(topic, max_bytes, group=group, checkpoint=checkpoint,
                                  timeout=timeout, zero_copy=zero_copy)
        if entries:
            return Payloads(entries[0].offset, [e.data for e in entries])
        return Payloads(self.position(topic, group=group), [])

    def _read(self, topic, group, max_count, max_bytes, checkpoint, timeout, zero_copy):
        from ..timeouts import check_timeout
        if zero_copy:
            raise Unsupported("zero_copy=True returns views into mapped blocks; entries from NATS "
                              "arrive over the network: read without zero_copy")
        timeout = check_timeout(timeout)
        t = self._topic(topic)
        check_name(group, "group")
        if checkpoint:
            coro = self._take(t, group, max_count, max_bytes, timeout)
        else:
            coro = self._peek(t, group, max_count, max_bytes, timeout)
        return self._call(coro, timeout)

    async def _wait_for_stream(self, t: _Topic, timeout) -> bool:
        """Whether the topic's stream exists, waiting up to ``timeout`` for it to appear."""
        if t.stream in self._known_streams:
            return True
        end = None if timeout is None else time.monotonic() + timeout
        pause = 0.02
        while True:
            if await self._stream_info(t, self._deadline()) is not None:
                self._known_streams.add(t.stream)
                return True
            now = time.monotonic()
            if end is not None and now >= end:
                return False
            await asyncio.sleep(pause if end is None else min(pause, end - now))
            pause = min(pause * 2, 0.25)

    async def _reader(self, t: _Topic, group: str, deadline: float, start=None) -> _Reader:
        reader = self._readers.get((t.name, group))
        if reader is None:
            info = await self._consumer(t, group, deadline, start)
            description = json.loads(info["config"].get("description") or "{}")
            reader = _Reader(t, group, info["name"], description.get("generation", ""))
            reader.sub = await self._nc.subscribe(self._nc.new_inbox(), cb=reader.inbox.deliver)
            self._readers[t.name, group] = reader
        return reader

    async def _consumer(self, t: _Topic, group: str, deadline: float, start=None, replace=False, made=None):
        """The group's consumer info, made if it is missing (``start``: where it begins);
        ``made`` (a list) gets True appended when this call made it."""
        durable = names.durable_name(group)
        if not replace:
            try:
                return await self._api(f"CONSUMER.INFO.{t.stream}.{durable}", None, deadline)
            except _ApiError as exc:
                if exc.err_code not in (ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND):
                    raise ShmwalError(f"JetStream refused consumer info of {group!r}: {exc}") from None
        config = {
            "durable_name": durable,
            "description": json.dumps({"group": group, "generation": uuid.uuid4().hex[:12]}),
            "ack_policy": "explicit", "ack_wait": int(self._ack_wait * 1e9), "max_deliver": -1,
            "max_ack_pending": -1, "replay_policy": "instant", "deliver_policy": "all",
        }
        if start == "latest":
            config["deliver_policy"] = "new"
        elif isinstance(start, int):
            config["deliver_policy"] = "by_start_sequence"
            config["opt_start_seq"] = start + 1
        if replace:
            try:
                await self._api(f"CONSUMER.DELETE.{t.stream}.{durable}", None, deadline)
            except _ApiError:
                pass   # already gone
        try:
            info = await self._api(f"CONSUMER.DURABLE.CREATE.{t.stream}.{durable}",
                                   {"stream_name": t.stream, "config": config}, deadline)
        except _ApiError as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                raise
            try:   # made at the same time by another client: use theirs
                return await self._api(f"CONSUMER.INFO.{t.stream}.{durable}", None, deadline)
            except _ApiError:
                raise ShmwalError(f"JetStream refused to make group {group!r}: {exc}") from None
        if made is not None:
            made.append(True)
        return info

    def _forget_reader(self, t: _Topic, group: str) -> None:
        reader = self._readers.pop((t.name, group), None)
        if reader is not None and reader.sub is not None:
            asyncio.ensure_future(_unsubscribe(reader.sub))

    async def _take(self, t: _Topic, group: str, max_count: int, max_bytes, timeout):
        if not await self._wait_for_stream(t, timeout):
            return []
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            deadline = self._deadline()
            reader = await self._reader(t, group, deadline)
            async with reader.lock:
                try:
                    msgs = await self._pull(reader, max_count, max_bytes, end)
                except _Transient:
                    self._forget_reader(t, group)   # consumer gone, or no leader yet: look again
                    if time.monotonic() >= deadline or (end is not None and time.monotonic() >= end):
                        if end is not None and time.monotonic() >= end:
                            return []
                        raise BrokerUnavailable(f"no JetStream consumer answers for {group!r}") from None
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                if not msgs:
                    return []
                if self._claims:
                    msgs = await self._claim(reader, msgs, deadline)
                elif self._strict:
                    await self._acknowledge(msgs, deadline)
                else:
                    for msg in msgs:
                        await self._nc.publish(msg.reply, b"+ACK")
                if msgs:
                    return [Entry(t.name, _stream_seq(m) - 1, m.data) for m in msgs]
            # Every entry of the pull had been claimed by an earlier delivery: pull again.
            if end is not None and time.monotonic() >= end:
                return []

    def _pull_size(self, reader: _Reader, max_count: int, max_bytes) -> int:
        if max_bytes is None or max_count == 1:
            return max_count
        mean = reader.mean_size
        if mean is None:
            return min(max_count, 16)
        return max(1, min(max_count, int(max_bytes / max(mean, 1.0)) + 1))

    async def _pull(self, reader: _Reader, max_count: int, max_bytes, end) -> list:
        """Messages for this reader, unacknowledged: at once if any are there, else the
        first to arrive before ``end`` (None: no limit) and what came with it; never
        more than ``max_count`` nor, past the first, more than ``max_bytes``."""
        msgs = self._buffered(reader)
        maybe_more = True
        if not msgs:
            n = self._pull_size(reader, max_count, max_bytes)
            if n == 1 and (end is None or end > time.monotonic()):
                # A waiting pull of one returns as soon as an entry is there, like a pull
                # that does not wait; a first pull that does not wait would only cost a
                # round trip when the reader has caught up. (A waiting pull of more waits
                # for all of them: batches look first, then wait for the first entry.)
                wait = 5.0 if end is None else min(5.0, end - time.monotonic())
                msgs = await self._pull_once(reader, 1, max(wait, 0.001))
            else:
                msgs = await self._pull_once(reader, n, None)
            maybe_more = len(msgs) == n
        if not msgs and end is not None and time.monotonic() >= end and await self._behind(reader):
            # The stream holds entries the group has not been given, but its consumer's
            # replica had not applied them yet (a publish is answered by the stream
            # leader; the consumer may lead on another node): they come within moments.
            end = time.monotonic() + min(self._timeout, CATCH_UP)
        while not msgs:
            now = time.monotonic()
            if end is not None and now >= end:
                return []
            wait = 5.0 if end is None else min(5.0, end - now)
            msgs = await self._pull_once(reader, 1, wait)
        if max_bytes is not None:
            # Pull on while everything so far fits and the server may hold more.
            total = sum(len(m.data) for m in msgs)
            while maybe_more and len(msgs) < max_count and total <= max_bytes:
                reader.mean_size = total / len(msgs)
                ask = min(max_count - len(msgs), self._pull_size(reader, max_count, max_bytes - total))
                more = await self._pull_once(reader, ask, None)
                msgs += more
                total += sum(len(m.data) for m in more)
                maybe_more = len(more) == ask
            reader.mean_size = total / len(msgs)
        keep = _fitting(msgs, max_count, max_bytes)
        if keep < len(msgs):
            # What is over the cap stays with this reader, unacknowledged, for its next read.
            # Not NAKed: nats-server 2.9 does not keep NAKed messages in order (a pull that
            # finds no waiting request re-queues the message it took at the back).
            reader.buffer = msgs[keep:]
            reader.buffered_at = time.monotonic()
        return msgs[:keep]

    async def _behind(self, reader: _Reader) -> bool:
        """Whether the stream's leader holds entries past what the group's consumer delivered."""
        deadline = self._deadline()
        try:
            info = await self._stream_info(reader.topic, deadline)
            consumer = await self._api(f"CONSUMER.INFO.{reader.topic.stream}.{reader.durable}", None, deadline)
        except _ApiError:
            return False
        if info is None:
            return False
        return info["state"]["last_seq"] > consumer["delivered"]["stream_seq"]

    def _buffered(self, reader: _Reader) -> list:
        msgs, reader.buffer = reader.buffer, []
        if msgs and time.monotonic() - reader.buffered_at > self._ack_wait / 2:
            return []   # about to be redelivered to another reader: let it go there
        return msgs

    async def _pull_once(self, reader: _Reader, batch: int, wait) -> list:
        request = {"batch": batch}
        if wait is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(max(wait, 0.001) * 1e9)
        await self._nc.publish(reader.next_subject, json.dumps(request).encode(), reply=reader.sub.subject)
        limit = time.monotonic() + (wait or 0.0) + max(GRACE, min(self._timeout, ATTEMPT))
        msgs = []
        while len(msgs) < batch:
            msg = await reader.inbox.get(max(0.001, limit - time.monotonic()))
            if msg is None:   # the server's answer was lost
                if msgs:
                    break
                raise _Transient("no answer to a pull")
            status = msg.headers.get("Status") if msg.headers else None
            if status is None:
                msgs.append(msg)
                continue
            if status in ("404", "408"):
                break
            if status == "100":
                continue   # heartbeat
            if msgs:
                break
            raise _Transient(f"pull answered {status} {msg.headers.get('Description', '')}")
        return msgs

    async def _claim(self, reader: _Reader, msgs: list, deadline: float) -> list:
        """Claim this read's entries in one write (``claims.py``), acknowledge them, and
        keep the ones no earlier delivery had claimed."""
        await self._ensure_claims(deadline)
        subject = names.claims_subject(self._ns, reader.topic.name, reader.group)
        log = self._claim_logs.setdefault(subject, ClaimLog())
        seqs = [_stream_seq(m) for m in msgs]
        acks = _ack_requests(msgs)
        settled = False
        while True:
            now = time.monotonic()
            if not log.fresh(now, self._claims_dedup):
                log.adopt(await self._newest_claims(subject, deadline), now)
            free = _first_of_each(seqs, log.unclaimed(seqs, reader.generation))
            if not settled and (log.generation not in (None, reader.generation) or not all(free)):
                # Claimed before: by another delivery of this consumer, or in a generation
                # of the group before another client's seek replaced its consumer (our
                # reader may still name the old one). Only the second is ours to take.
                await self._settle_generation(reader, deadline)
                settled = True
                free = _first_of_each(seqs, log.unclaimed(seqs, reader.generation))
            if not any(free):
                if acks:
                    await self._acknowledge(msgs, deadline)
                return []
            token = f"{self._id}.{time.monotonic_ns()}"
            version, payload, ranges = log.proposal([s for s, f in zip(seqs, free) if f],
                                                    reader.generation, token)
            request = (subject, payload, {"Nats-Msg-Id": f"{subject}.{version}"})
            answer = await self._settle_claim(request, acks, deadline)
            acks = []   # taken with the first attempt; the entries are claimed or lost, not re-read
            if not answer.get("duplicate") or await self._claim_owner(answer["seq"], deadline) == token:
                log.took(version, reader.generation, ranges, now)
                return [m for m, f in zip(msgs, free) if f]
            # Another reader stored this version first: claim again on top of the newest state.
            log.known_at = float("-inf")
            if time.monotonic() >= deadline:
                raise BrokerUnavailable("JetStream kept refusing a read's claim as outdated")

    async def _settle_generation(self, reader: _Reader, deadline: float) -> None:
        """The stored claims belong to another generation of the group's consumer: a seek
        replaced it. The consumer itself says which generation is current (ours may be the
        stale one); a state of an older one claims nothing of the new."""
        info = await self._api(f"CONSUMER.INFO.{reader.topic.stream}.{reader.durable}", None, deadline)
        reader.generation = json.loads(info["config"].get("description") or "{}").get("generation", "")

    async def _settle_claim(self, request: tuple, acks: list, deadline: float) -> dict:
        """Send a claim and the read's acks in one flush (an ack only matters once its
        claim is settled, and waiting for the claim first would double a read's round
        trips); send again whichever of them went unanswered, the claim with the same id."""
        answers = await self._pipeline([request] + acks)
        claim = answers[0]
        acks_late = bool(acks) and isinstance(answers[-1], _Transient)
        pause = RETRY_PAUSE
        while True:
            if isinstance(claim, _ApiError):
                raise ShmwalError(f"JetStream refused a read's claim: {claim}")
            if isinstance(claim, dict) and not acks_late:
                return claim
            if time.monotonic() + pause >= deadline:
                raise BrokerUnavailable("JetStream did not take a read's claim and acks")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
            # Acks go again all together: only the last one's answer says the others were taken.
            again = await self._pipeline(([] if isinstance(claim, dict) else [request])
                                         + (acks if acks_late else []))
            if not isinstance(claim, dict):
                claim = again[0]
            acks_late = acks_late and isinstance(again[-1], _Transient)

    async def _newest_claims(self, subject: str, deadline: float) -> dict | None:
        try:
            answer = await self._api(f"STREAM.MSG.GET.{names.CLAIMS_STREAM}", {"last_by_subj": subject}, deadline)
        except _ApiError as exc:
            if exc.err_code == ERR_NO_MESSAGE:
                return None
            raise ShmwalError(f"JetStream refused a group's claims: {exc}") from None
        try:
            return decode_claims(base64.b64decode(answer["message"].get("data") or b""))
        except ValueError:
            raise ShmwalError(f"the claims stream holds a message that is no claim state on {subject}") from None

    async def _claim_owner(self, seq: int, deadline: float) -> str | None:
        try:
            answer = await self._api(f"STREAM.MSG.GET.{names.CLAIMS_STREAM}", {"seq": seq}, deadline)
            return decode_claims(base64.b64decode(answer["message"].get("data") or b""))["t"]
        except (_ApiError, ValueError):
            return None

    async def _ensure_claims(self, deadline: float) -> None:
        if self._claims_ready:
            return
        name = names.CLAIMS_STREAM
        config = {
            "name": name, "subjects": [names.CLAIMS_SUBJECTS],
            "description": "shmwal StrictlyAtOnce claims", "retention": "limits",
            "storage": "file", "discard": "old", "num_replicas": self._replicas,
            # Kept past the window: a subject found empty then has no version id left to
            # collide with (claims.py numbers versions afresh for it).
            "max_age": int((self._claims_window + CLAIMS_KEPT_PAST_WINDOW) * 1e9),
            "duplicate_window": int(self._claims_window * 1e9),
        }
        try:
            info = await self._api(f"STREAM.CREATE.{name}", config, deadline)
        except _ApiError as exc:
            try:
                info = await self._api(f"STREAM.INFO.{name}", None, deadline)
            except _ApiError:
                raise ShmwalError(f"JetStream refused the claims stream: {exc}") from None
        # Made by another client, maybe with another window: the stream's own is what counts.
        self._claims_dedup = info["config"]["duplicate_window"] / 1e9
        self._claims_ready = True

    async def _acknowledge(self, msgs: list, deadline: float) -> None:
        """Acknowledge every message and wait for the server to have taken them all:
        JetStream processes acks apart from pulls, so the next pull or position could
        otherwise overtake them. One answer, the last ack's, says so (``_ack_requests``)."""
        requests = _ack_requests(msgs)
        pause = RETRY_PAUSE
        while isinstance((await self._pipeline(requests))[-1], _Transient):
            if time.monotonic() + pause >= deadline:
                raise BrokerUnavailable("JetStream did not take a read's acknowledgements")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)


    async def _peek(self, t: _Topic, group: str, max_count: int, max_bytes, timeout):
        """Entries from the group's position on, without moving it (direct gets)."""
        if not await self._wait_for_stream(t, timeout):
            return []
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            deadline = self._deadline()
            position = await self._position(t, group, deadline, create=True)
            out = []
            total = 0
            seq = position + 1
            full = False
            while not full and len(out) < max_count:
                # Gets go out PEEK_AHEAD at a time: one round trip each would make a
                # 2,000-entry peek take seconds.
                ahead = min(PEEK_AHEAD, max_count - len(out))
                answers = await asyncio.gather(*(self._get(t, seq + i, deadline) for i in range(ahead)))
                for data in answers:
                    if data is None or (out and max_bytes is not None and total + len(data) > max_bytes):
                        full = True   # past the end, or over the cap
                        break
                    total += len(data)
                    out.append(Entry(t.name, seq - 1, data))
                    seq += 1
            if out or (end is not None and time.monotonic() >= end):
                return out
            await asyncio.sleep(0.02)

    async def _get(self, t: _Topic, seq: int, deadline: float):
        """The payload at stream sequence ``seq``, or None past the end."""
        try:
            answer = await self._api(f"STREAM.MSG.GET.{t.stream}", {"seq": seq}, deadline)
        except _ApiError:
            return None
        return base64.b64decode(answer["message"].get("data") or b"")

    def leaders(self, topic, group=None) -> dict:
        """Which nodes lead the topic's stream and the group's consumer (``{"stream": name,
        "group": name}``): the node to kill to test a failover where it hurts."""
        t = self._topic(topic)
        return self._call(self._leaders(t, group))

    async def _leaders(self, t: _Topic, group) -> dict:
        deadline = self._deadline()
        out = {"stream": ((await self._stream_info(t, deadline)) or {}).get("cluster", {}).get("leader")}
        if group is not None:
            info = await self._api(f"CONSUMER.INFO.{t.stream}.{names.durable_name(group)}", None, deadline)
            out["group"] = info.get("cluster", {}).get("leader")
        return out

    def last_msg_id(self, topic) -> str | None:
        """The ``Nats-Msg-Id`` of the topic's last entry (None: no entry, or it had none).
        The bridge resumes from it."""
        t = self._topic(topic)
        return self._call(self._last_msg_id(t))

    async def _last_msg_id(self, t: _Topic):
        deadline = self._deadline()
        if await self._stream_info(t, deadline) is None:
            return None
        try:
            answer = await self._api(f"STREAM.MSG.GET.{t.stream}", {"last_by_subj": t.subject}, deadline)
        except _ApiError:
            return None
        raw = base64.b64decode(answer["message"].get("hdrs") or b"").decode("utf-8", "replace")
        for line in raw.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "nats-msg-id":
                return value.strip()
        return None

    def seek(self, topic, offset, *, group="default") -> None:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        t = self._topic(topic)
        check_name(group, "group")
        self._call(self._seek(t, group, max(0, offset)))

    async def _seek(self, t: _Topic, group: str, offset: int) -> None:
        deadline = self._deadline()
        await self._ensure_stream(t, deadline)
        info = await self._stream_info(t, deadline)
        state = info["state"]
        # Past the end waits at the end; before the oldest kept entry starts at the oldest.
        offset = max(min(offset, state["last_seq"]), state["first_seq"] - 1)
        self._forget_reader(t, group)
        await self._consumer(t, group, deadline, start=offset, replace=True)

    def position(self, topic, *, group="default") -> int:
        t = self._topic(topic)
        check_name(group, "group")
        return self._call(self._position(t, group, self._deadline(), create=False))

    async def _position(self, t: _Topic, group: str, deadline: float, create: bool) -> int:
        info = await self._stream_info(t, deadline)
        if info is None:
            return 0
        state = info["state"]
        durable = names.durable_name(group)
        try:
            consumer = await self._api(f"CONSUMER.INFO.{t.stream}.{durable}", None, deadline)
        except _ApiError:
            if not create:
                return state["first_seq"] - 1 if state["messages"] else state["last_seq"]
            consumer = await self._consumer(t, group, deadline)
        return _consumer_position(consumer, state)

    # ================================================================== groups
    def create_group(self, topic, group, *, start="earliest") -> bool:
        t = self._topic(topic)
        check_name(group, "group")
        start = check_start(start)   # the same errors as the local client's
        return self._call(self._create_group(t, group, start))

    async def _create_group(self, t: _Topic, group: str, start) -> bool:
        """True when this call made the group's consumer (of two clients making it at once,
        the one whose create JetStream refused says False)."""
        deadline = self._deadline()
        await self._ensure_stream(t, deadline)
        if start == "earliest":
            start = None
        made = []
        await self._consumer(t, group, deadline, start, made=made)
        if self._claims:
            await self._ensure_claims(deadline)   # made once per cluster: not on a first read's clock
        return bool(made)

    def groups(self, topic) -> list[str]:
        t = self._topic(topic)
        return self._call(self._groups(t))

    async def _groups(self, t: _Topic) -> list[str]:
        deadline = self._deadline()
        if await self._stream_info(t, deadline) is None:
            return []
        found = []
        offset = 0
        while True:
            answer = await self._api(f"CONSUMER.LIST.{t.stream}", {"offset": offset}, deadline)
            batch = answer.get("consumers") or []
            for consumer in batch:
                found.append(_group_of(consumer))
            offset += len(batch)
            if not batch or offset >= answer.get("total", 0):
                break
        return sorted(g for g in found if g)

    def delete_group(self, topic, group) -> bool:
        t = self._topic(topic)
        check_name(group, "group")
        return self._call(self._delete_group(t, group))

    async def _delete_group(self, t: _Topic, group: str) -> bool:
        """True when the group's consumer existed (and this call deleted it)."""
        self._forget_reader(t, group)
        try:
            await self._api(f"CONSUMER.DELETE.{t.stream}.{names.durable_name(group)}", None,
                            self._deadline())
        except _ApiError as exc:
            if exc.err_code not in (ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND):
                raise ShmwalError(f"JetStream refused to delete group {group!r}: {exc}") from None
            return False
        return True

    # ================================================================== introspection
    def topics(self) -> list[str]:
        return self._call(self._topics_list())

    async def _stream_infos(self, deadline: float) -> list[dict]:
        infos = []
        offset = 0
        prefix = names.stream_prefix(self._ns)
        while True:
            answer = await self._api("STREAM.LIST", {"offset": offset,
                                                     "subject": f"{names.SUBJECT_ROOT}.{self._ns}.t.>"},
                                     deadline)
            batch = answer.get("streams") or []
            # A stream with nothing in it yet was made for a group (seek, create_group) of a
            # topic nobody wrote: not a topic yet (API.md: "A topic exists from its first append").
            infos += [s for s in batch if s["config"]["name"].startswith(prefix) and s["state"]["last_seq"]]
            offset += len(batch)
            if not batch or offset >= answer.get("total", 0):
                return infos

    async def _topics_list(self) -> list[str]:
        infos = await self._stream_infos(self._deadline())
        return sorted(s["config"].get("description", "") for s in infos)

    def stats(self) -> dict:
        return self._call(self._stats())

    async def _stats(self) -> dict:
        deadline = self._deadline()
        out = {}
        for info in await self._stream_infos(deadline):
            state = info["state"]
            topic = info["config"].get("description", "")
            groups = {}
            stream = info["config"]["name"]
            answer = await self._api(f"CONSUMER.LIST.{stream}", {"offset": 0}, deadline)
            for consumer in answer.get("consumers") or []:
                position = _consumer_position(consumer, state)
                groups[_group_of(consumer)] = {
                    "position": position, "lag": max(0, state["last_seq"] - position), "skipped": 0}
            first = state["first_seq"] - 1 if state["messages"] else state["last_seq"]
            out[topic] = {
                "entries": state["messages"], "bytes": state["bytes"], "disk_bytes": state["bytes"],
                "first_offset": first, "next_offset": state["last_seq"], "files": 0, "blocks": 0,
                "replicas": info["config"].get("num_replicas", 1), "groups": groups,
            }
        return {"topics": out}

    # ================================================================== lifecycle
    def close(self) -> None:
        if self._closed and self._loop is None:
            return
        self._closed = True
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._nc is not None and os.getpid() == self._pid:
            try:
                loop.call(self._nc.close(), 5.0)
            except Exception:
                pass
        loop.stop()

    def __enter__(self) -> "NatsClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        return (_restore, (self._url, self._options))

    def __repr__(self) -> str:
        return f"<shmwal.NatsClient {self._url!r} {'closed' if self._closed else 'connected'}>"

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _restore(url, options) -> NatsClient:
    return NatsClient(url, **options)


async def _unsubscribe(sub) -> None:
    try:
        await sub.unsubscribe()
    except Exception:
        pass


UNANSWERED = object()   # a pipeline request's headers: publish it without a reply subject


def _ack_requests(msgs: list) -> list:
    """Pipeline requests acknowledging ``msgs``, only the last one answered.

    Why one answer says all were taken: a consumer's leader queues the acks of one
    consumer in the order they arrive (one connection, one route: the order this
    client sent them), takes them off that queue one by one, and answers an ack
    after processing it (nats-server ``consumer.go``: ``pushAck`` → ``ackMsgs``
    → ``processInboundAcks`` → ``processAck`` → ``sendAckReply``). An answered ack
    costs the server a reply and this client a task-free but parsed message; a
    1,000-entry read made 1,000 of them, as many as its claims.

    Not AckAll (one ack for everything up to a sequence): it would also acknowledge
    what other readers of the group hold unreturned, and what this reader keeps past a
    batch_read's cap when a redelivery arrived behind newer entries; nor can a
    durable's ack policy be changed in place. The acks stay explicit, each its own.

    What an answer cannot say: a consumer leader lost between the acks (an election)
    may have dropped the unanswered ones while its successor answers the last, and
    those entries come again after ``ack_wait`` (with claims they are then dropped as
    claimed; without, they are returned again, as an ack answered and not replicated
    already could be)."""
    last = len(msgs) - 1
    return [(m.reply, b"+ACK", None if k == last else UNANSWERED) for k, m in enumerate(msgs)]


def _first_of_each(seqs: list, free: list) -> list:
    """``free`` with every repeat of a sequence marked taken: a read that pulled again
    after ``ack_wait`` may hold an entry twice (its redelivery), and returns it once."""
    if len(set(seqs)) == len(seqs):
        return free
    seen: set = set()
    out = []
    for seq, ok in zip(seqs, free):
        out.append(ok and seq not in seen)
        seen.add(seq)
    return out


def _fitting(msgs: list, max_count: int, max_bytes) -> int:
    """How many of ``msgs`` one read returns (API.md batch_read: while the payloads add up
    to at most ``max_bytes``, the first alone when larger)."""
    if max_bytes is None:
        return min(len(msgs), max_count)
    total = 0
    keep = 0
    for msg in msgs[:max_count]:
        size = len(msg.data)
        if keep and total + size > max_bytes:
            break
        total += size
        keep += 1
    return keep


def _answer(msg):
    """A reply as _pipeline reports it (see there)."""
    status = msg.headers.get("Status") if msg.headers else None
    if status:
        return _Transient(f"status {status}")   # 503: no responders (no leader yet)
    if not msg.data:
        return {}
    try:
        answer = json.loads(msg.data)
    except ValueError:
        return {}
    err = answer.get("error") if isinstance(answer, dict) else None
    if err:
        if err.get("code") in TRANSIENT_CODES:
            return _Transient(err.get("description", "unavailable"))
        return _ApiError(err)
    return answer


def _stream_seq(msg) -> int:
    """The stream sequence in a delivered message's ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``
    (nine tokens; servers with domains add three after ``ACK``)."""
    tokens = msg.reply.split(".")
    return int(tokens[-4])


def _group_of(consumer: dict) -> str:
    try:
        return json.loads(consumer["config"].get("description") or "{}").get("group", "")
    except ValueError:
        return ""


def _consumer_position(consumer: dict, state: dict) -> int:
    """The offset the group reads next: the end less what the consumer has not delivered
    and what it delivered unacknowledged (that comes back); never before the oldest kept
    entry. Exact for a group whose readers acknowledge in order."""
    position = state["last_seq"] - consumer.get("num_pending", 0) - consumer.get("num_ack_pending", 0)
    first = state["first_seq"] - 1 if state["messages"] else state["last_seq"]
    return max(position, first)
