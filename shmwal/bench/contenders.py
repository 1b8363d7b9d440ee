"""The contenders: how each one sends, receives and ends a run.

Each contender has three parts, because they live in different processes:

* ``Contender`` (parent): a name, what it can run, and ``open(spec)`` giving a ``Session``.
* ``Session`` (parent): owns the run's resources (a queue, a socket directory, a broker),
  sends the end-of-run baton, and tears everything down in ``close()``.
* ``session.channel`` (passed to every child, so it pickles): ``sender(i)`` / ``receiver(i)``
  open the child's end.  A sender has ``send(buf)``, or ``send_many(bufs)`` and ``batch``
  when batched, ``finish()`` after the last message and ``close()``.  A receiver has a
  blocking ``recv()`` (or ``recv_many()``), ``on_token(msg) -> bool`` (True: this consumer
  is done) and ``close()``.

How a run ends, exactly (so that the consumers stop only when nothing more can come):

* Shared FIFO (multiprocessing.Queue, faster-fifo, shmwal): once every producer process
  has exited, the parent puts one *baton* token behind all the data. The consumer that
  takes it puts it back (so the next consumer finds it too) and stops. Because the queue
  is one FIFO, whoever sees the baton knows all data before it was handed out. Separate
  shmwal groups each see the baton and don't pass it on.
* zmq PUSH/PULL is no single FIFO: each producer->consumer pipe is. So each producer, after
  its data, sends *end tokens* on its own socket until every consumer has acknowledged one
  (in a shared byte array); a consumer stops once it holds one token from every producer.

Senders may reuse one buffer for every message: each contender copies synchronously,
except ``multiprocessing.Queue``, whose feeder thread pickles later, so it gets a copy.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import time
import uuid
from operator import itemgetter

from . import messages

# Blocking receives wait this long at most; the parent kills a run long before (--timeout).
FOREVER = 3600.0
BATCH = 1000                       # messages per batched send (issue: batches of 1,000)
FASTER_FIFO_BYTES = 32 * 2**20     # faster-fifo's ring buffer (its default, 1 MB, starves 64 KiB)
# Batched consumers take at most this many bytes a call (but at least one message), unless
# --read-batch-bytes says otherwise for shmwal. Bigger budgets used to lose: a batch of many
# megabytes of bytes objects made glibc hand the memory back to the kernel after each batch and
# fault it in again for the next (64 KiB entries: 1 MiB batches 11.9 GB/s, 8 MiB 2.2 GB/s,
# 64 MiB 1.9 GB/s); shmwal/client/heap.py keeps it now.
READ_BATCH_BYTES = 2**20
RESERVE_MIN_SIZE = 16 * 1024   # reserve rows run from this size: zero copies matter for large messages


BENCH_EXTRA = "pip install 'shmwal[bench]'"


def _missing(module: str, install: str = BENCH_EXTRA) -> str | None:
    """Why a peer's module cannot be imported, saying how to install it; None if it can."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc}): {install}"
    return None


class Contender:
    name = "?"
    family = "peer"          # "peer" | "shmwal"
    batched = False          # send_many/recv_many instead of send/recv
    pubsub = False           # can run separate groups (each consumer gets every message)
    objects = False          # send_obj/recv_obj: takes Python objects ("objects" scenario)
    objects_only = False     # takes nothing else

    @property
    def producer_batched(self) -> bool:
        """Whether producers send_many (as their consumers recv_many, but for one shmwal row)."""
        return self.batched

    def unavailable(self) -> str | None:
        """Why this contender cannot run on this machine, or None."""
        return None

    def unsupported(self, spec) -> str | None:
        """Why this contender has no row for ``spec`` (shown as n/a), or None."""
        if spec.kind == "objects" and not self.objects:
            return "bytes, not Python objects"
        if spec.kind != "objects" and self.objects_only:
            return "Python objects only"
        if spec.separate_groups and not self.pubsub:
            return "no consumer groups"
        if spec.kind == "latency" and self.batched:
            return "latency is measured per message"
        return None

    def open(self, spec, ctx, workdir: str):
        raise NotImplementedError


class BatonSession:
    """Parent side of a shared-FIFO contender: put the baton after the producers exited."""

    def __init__(self, channel):
        self.channel = channel

    def send_baton(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- multiprocessing.Queue

class MPQueueContender(Contender):
    name = "mp.Queue"
    objects = True

    def open(self, spec, ctx, workdir):
        return MPQueueSession(ctx.Queue())


class MPQueueSession(BatonSession):
    def __init__(self, q):
        super().__init__(MPQueueChannel(q))
        self.q = q

    def send_baton(self):
        self.q.put(messages.token())

    def close(self):
        # Never wait for the feeder thread: after a killed run the pipe may be full for good.
        self.q.cancel_join_thread()
        self.q.close()


class MPQueueChannel:
    def __init__(self, q):
        self.q = q

    def sender(self, producer):
        return MPQueueSender(self.q)

    def receiver(self, consumer):
        return MPQueueReceiver(self.q)


class MPQueueSender:
    def __init__(self, q):
        self.q = q

    def send(self, buf):
        # put() only queues a reference for the feeder thread: the buffer is reused, so copy.
        self.q.put(bytes(buf))

    def send_obj(self, obj):
        # The same for objects (bench/objects.py restamps one): a shallow copy of a dict,
        # a copy of an array (1 MiB: ~0.1 ms, a tenth of what the queue takes to move it).
        self.q.put(obj.copy())

    def finish(self):
        # Flush the feeder thread before the process reports done: the baton must come after.
        self.q.close()
        self.q.join_thread()

    def close(self):
        pass


class MPQueueReceiver:
    def __init__(self, q):
        self.q = q
        self.recv = q.get          # blocking get(): no poll() system call per message
        self.recv_obj = q.get

    def on_token(self, msg) -> bool:
        self.q.put(msg)            # pass the baton on
        return True

    def close(self):
        self.q.close()
        self.q.join_thread()       # the baton we put back must reach the pipe before we exit


# ---------------------------------------------------------------- faster-fifo

class FasterFifoContender(Contender):
    def __init__(self, batched=False):
        self.batched = batched
        self.objects = not batched   # put()/get() pickle objects synchronously
        self.name = "faster-fifo batch" if batched else "faster-fifo"

    def unavailable(self):
        return _missing("faster_fifo")

    def open(self, spec, ctx, workdir):
        import faster_fifo

        # A batch must fit the ring whole (put_many is all-or-nothing): a quarter of it
        # leaves room for the producer to fill the next batch while the consumer drains.
        batch = max(1, min(BATCH, FASTER_FIFO_BYTES // 4 // (spec.size + 64)))
        recv_batch = max(1, min(batch, READ_BATCH_BYTES // spec.size))
        return FasterFifoSession(faster_fifo.Queue(max_size_bytes=FASTER_FIFO_BYTES), batch, recv_batch)


class FasterFifoSession(BatonSession):
    def __init__(self, q, batch, recv_batch):
        super().__init__(FasterFifoChannel(q, batch, recv_batch))
        self.q = q

    def send_baton(self):
        self.q.put(messages.token(), timeout=FOREVER)


class FasterFifoChannel:
    def __init__(self, q, batch, recv_batch):
        self.q = q
        self.batch = batch
        self.recv_batch = recv_batch

    def sender(self, producer):
        return FasterFifoEnd(self.q, self.batch)

    def receiver(self, consumer):
        return FasterFifoEnd(self.q, self.recv_batch)


class FasterFifoEnd:
    """Both ends: put()/get() pickle synchronously, so reusing the buffer is safe."""

    def __init__(self, q, batch):
        self.q = q
        self.batch = batch

    def send(self, buf):
        self.q.put(buf, timeout=FOREVER)

    send_obj = send

    def send_many(self, bufs):
        # The harness hands out views of one buffer (workers._send_batched); put_many
        # pickles each message, and a memoryview does not pickle.
        self.q.put_many([bytes(b) for b in bufs], timeout=FOREVER)

    def recv(self):
        return self.q.get(timeout=FOREVER)

    recv_obj = recv

    def recv_many(self):
        return self.q.get_many(timeout=FOREVER, max_messages_to_get=self.batch)

    def on_token(self, msg) -> bool:
        self.q.put(msg, timeout=FOREVER)
        return True

    def finish(self):
        pass

    def close(self):
        pass


# ---------------------------------------------------------------- end tokens (zmq, iceoryx2)

class EndTokens:
    """How a run ends where there is no one FIFO (module docstring): producer p sends end
    tokens until every consumer has acknowledged one; a consumer is done once it holds one
    from every producer. ``acks[p * consumers + c]`` goes 0 -> 1 once, written by consumer
    c alone and read by producer p: a shared byte array, no lock."""

    def __init__(self, ctx, producers, consumers):
        self.producers, self.consumers = producers, consumers
        self.acks = ctx.RawArray("b", producers * consumers)

    def all_acked(self, producer) -> bool:
        n = self.consumers
        return all(self.acks[producer * n:(producer + 1) * n])


class EndTokenChannel:
    """A channel whose runs end with EndTokens, and whose children's ends are
    ``Sender(channel, producer)`` and ``Receiver(channel, consumer)``."""

    Sender = Receiver = None

    def __init__(self, ends: EndTokens):
        self.ends = ends

    def sender(self, producer):
        return self.Sender(self, producer)

    def receiver(self, consumer):
        return self.Receiver(self, consumer)


class EndTokenReceiver:
    """``on_token``: acknowledge the token, True once every producer's has come."""

    def __init__(self, channel, consumer):
        self.channel, self.consumer = channel, consumer
        self.ended = set()

    def on_token(self, msg) -> bool:
        producer = messages.token_arg(msg)
        ends = self.channel.ends
        ends.acks[producer * ends.consumers + self.consumer] = 1
        self.ended.add(producer)
        return len(self.ended) == ends.producers


# ---------------------------------------------------------------- pyzmq ipc PUSH/PULL

class ZmqContender(Contender):
    name = "zmq ipc"

    def unavailable(self):
        return _missing("zmq")

    def open(self, spec, ctx, workdir):
        return ZmqSession(spec, ctx, workdir)


class ZmqSession:
    def __init__(self, spec, ctx, workdir):
        # Each consumer binds its own PULL; each producer's PUSH connects to all of them
        # (zmq load-balances across connected PULLs, the work-queue pattern).
        self.dir = tempfile.mkdtemp(prefix="zmq-", dir=workdir)
        endpoints = [f"ipc://{self.dir}/c{i}" for i in range(spec.consumers)]
        self.channel = ZmqChannel(endpoints, EndTokens(ctx, spec.producers, spec.consumers))

    def send_baton(self):
        pass  # producers end their own pipes (module docstring)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class ZmqSender:
    def __init__(self, channel, producer):
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        self.zmq = zmq
        self.channel, self.producer = channel, producer
        self.ctx = zmq.Context()   # per process: a zmq context must not cross a fork
        self.sock = self.ctx.socket(zmq.PUSH)
        # Wait until every consumer is connected, so no reconnect delay (100 ms) lands
        # inside the timed part. Consumers bound before producers started.
        monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        for endpoint in channel.endpoints:
            self.sock.connect(endpoint)
        for _ in channel.endpoints:
            if not monitor.poll(10_000):
                raise TimeoutError("zmq PUSH did not connect to every consumer")
            recv_monitor_message(monitor)
        self.sock.disable_monitor()
        monitor.close()
        self.send = self.sock.send

    def finish(self):
        end = messages.token(self.producer)
        # Round-robin sends each token to the next pipe with room; repeat until every
        # consumer has seen one (a consumer that is done closes its pipe and drops out).
        while not self.channel.ends.all_acked(self.producer):
            try:
                self.sock.send(end, self.zmq.NOBLOCK)
            except self.zmq.Again:
                pass
            time.sleep(0.0005)
        # Every consumer got a token behind all our data, so all of it arrived. What is
        # still queued is spare tokens, held for pipes whose consumer has gone (a connecting
        # socket waits for its peer to come back): drop them, or close() would wait forever.
        self.sock.setsockopt(self.zmq.LINGER, 0)

    def close(self):
        self.sock.close()
        self.ctx.term()


class ZmqReceiver(EndTokenReceiver):
    def __init__(self, channel, consumer):
        import zmq

        super().__init__(channel, consumer)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(channel.endpoints[consumer])
        self.recv = self.sock.recv

    def close(self):
        self.sock.close()
        self.ctx.term()


class ZmqChannel(EndTokenChannel):
    Sender, Receiver = ZmqSender, ZmqReceiver

    def __init__(self, endpoints, ends):
        super().__init__(ends)
        self.endpoints = endpoints


# ---------------------------------------------------------------- iceoryx2

ICEORYX_BUFFER_BYTES = 16 * 2**20  # per subscriber: samples its queue holds (blocking backpressure beyond)


class IceoryxContender(Contender):
    """iceoryx2 publish-subscribe with a slice payload: the publisher loans a sample from its
    shared-memory pool, copies the message into it and sends it; the subscriber reads it in
    place. Nothing is dropped: no safe overflow, RetryUntilDelivered backpressure, and each
    producer waits until every subscriber is connected before its first message and until
    every consumer took its end token before it goes (its samples live in its own data
    segment). Subscribers sleep on an event service the producers notify after each send.

    Producers also keep the messages in flight below a subscriber's queue (credits, below):
    iceoryx2 0.10 sometimes drops a sample at the moment a subscriber's queue fills despite
    RetryUntilDelivered (send() then reports fewer receivers than are connected; seen about
    one tiny race in six on a loaded machine), so the harness never lets a queue fill."""

    name = "iceoryx2"
    pubsub = True

    def unavailable(self):
        return _missing("iceoryx2")

    def unsupported(self, spec):
        if spec.consumers > 1 and not spec.separate_groups:
            return "no work queue (every subscriber gets every message)"
        return super().unsupported(spec)

    def open(self, spec, ctx, workdir):
        return IceoryxSession(spec, ctx, workdir)


class IceoryxSession:
    def __init__(self, spec, ctx, workdir):
        # A root directory and file prefix of its own: nothing is shared with other runs
        # or other iceoryx2 users, and close() removes all of it, after killed runs too.
        # In the temp dir, not workdir: its listeners are Unix sockets under this root,
        # and a socket path holds at most 107 bytes.
        self.dir = tempfile.mkdtemp(prefix="iox2sb-")
        self.prefix = f"iox2sb{uuid.uuid4().hex[:10]}_"
        ends = EndTokens(ctx, spec.producers, spec.consumers)
        credits = Credits(ctx, spec.producers, spec.consumers, IceoryxChannel.queue_for(spec.size, spec.producers))
        self.channel = IceoryxChannel(self.dir, self.prefix, spec.size, spec.producers, spec.consumers, ends, credits)

    def send_baton(self):
        pass  # producers end their own streams (IceoryxSender.finish)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        for name in os.listdir("/dev/shm"):
            if name.startswith(self.prefix):
                try:
                    os.unlink(os.path.join("/dev/shm", name))
                except OSError:
                    pass


class Credits:
    """Bounds the messages any subscriber has not taken yet below its queue's length.

    Shared counters, each written by one process: ``sent[p]`` by producer p, ``taken[c]`` by
    consumer c (every consumer gets every message: one consumer or separate groups). They
    are published every ``every`` messages, and a consumer publishes its exact count before
    it sleeps, so a waiting producer is always released. A producer's own count is exact and
    the others' lag by less than ``every`` each; with at most ``every`` sends between two
    checks, in flight <= limit + (P-1)(every-1) + every < queue."""

    def __init__(self, ctx, producers, consumers, queue):
        self.every = max(1, queue // (4 * producers))
        self.limit = queue - producers * self.every
        self.sent = ctx.RawArray("q", producers)
        self.taken = ctx.RawArray("q", consumers)

    def wait_for_room(self, producer, sent):
        """Called by producer ``producer`` after each ``every``-th message, ``sent`` in all."""
        self.sent[producer] = sent
        shared_sent, taken = self.sent, self.taken
        deadline = time.monotonic() + FOREVER
        while sum(shared_sent) - min(taken) > self.limit:
            if time.monotonic() > deadline:
                raise TimeoutError("iceoryx2: a subscriber took nothing for an hour")
            time.sleep(0.00002)


class IceoryxSender:
    def __init__(self, channel, producer):
        import ctypes

        self.channel, self.producer = channel, producer
        iox2, self.node, self.data, self.event = channel.open()
        self.publisher = (self.data.publisher_builder().initial_max_slice_len(channel.size)
                          .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create())
        self.notifier = self.event.notifier_builder().create()
        # The handshake: every subscriber connected before the first message (consumers
        # exist before producers start, runner.py).
        deadline = time.monotonic() + 10
        while self.data.dynamic_config.number_of_subscribers < channel.consumers:
            if time.monotonic() > deadline:
                raise TimeoutError("iceoryx2: not every subscriber connected")
            time.sleep(0.001)
        self.publisher.update_connections()
        self._memmove = ctypes.memmove
        self._char = ctypes.c_char
        self._addressof = ctypes.addressof
        self._source = None     # (buffer, ctypes view of it): the harness reuses one buffer
        self._sent = 0
        self._every = channel.credits.every

    def _address(self, buf) -> int:
        held = self._source
        if held is None or held[0] is not buf:
            if isinstance(buf, bytes):
                held = (buf, buf)
            else:
                held = (buf, (self._char * len(buf)).from_buffer(buf))
            self._source = held
        view = held[1]
        return view if isinstance(view, bytes) else self._addressof(view)

    def send(self, buf):
        n = len(buf)
        sample = self.publisher.loan_slice_uninit(n)
        self._memmove(sample.payload_ptr, self._address(buf), n)
        receivers = sample.assume_init().send()
        if receivers != self.channel.consumers:
            raise RuntimeError(f"iceoryx2 delivered a sample to {receivers} of "
                               f"{self.channel.consumers} subscribers")
        self.notifier.notify()
        self._sent += 1
        if self._sent % self._every == 0:
            self.channel.credits.wait_for_room(self.producer, self._sent)

    def finish(self):
        self.send(messages.token(self.producer))
        # Our samples live in our data segment: stay until every consumer has taken our token.
        deadline = time.monotonic() + FOREVER
        while not self.channel.ends.all_acked(self.producer) and time.monotonic() < deadline:
            time.sleep(0.0005)

    def close(self):
        self._source = None
        self.publisher = self.notifier = self.data = self.event = self.node = None


class IceoryxReceiver(EndTokenReceiver):
    views = True   # data are views into the current sample: the harness copies what it keeps

    def __init__(self, channel, consumer):
        super().__init__(channel, consumer)
        iox2, self.node, self.data, self.event = channel.open()
        self.subscriber = self.data.subscriber_builder().create()
        self.listener = self.event.listener_builder().create()
        self._slice = iox2.Duration.from_millis(100)
        self._sample = None    # the sample the last message returned is a view of
        self._taken = 0
        self._every = channel.credits.every
        self._published = channel.credits.taken

    def recv(self):
        receive, wait = self.subscriber.receive, self.listener.timed_wait
        while True:
            sample = receive()
            if sample is not None:
                self._sample = sample   # holds the previous one until now (2 borrowed at most)
                self._taken += 1
                if self._taken % self._every == 0:
                    self._published[self.consumer] = self._taken
                return sample.payload().as_memory_view()
            self._published[self.consumer] = self._taken   # a waiting producer must see all of it
            wait(self._slice)   # woken by the producer's notify; the timeout only bounds a miss

    def close(self):
        self._sample = None
        self.subscriber = self.listener = self.data = self.event = self.node = None


class IceoryxChannel(EndTokenChannel):
    Sender, Receiver = IceoryxSender, IceoryxReceiver

    def __init__(self, root, prefix, size, producers, consumers, ends, credits):
        super().__init__(ends)
        self.root, self.prefix = root, prefix
        self.size = size
        self.producers, self.consumers = producers, consumers
        self.credits = credits

    @staticmethod
    def queue_for(size, producers) -> int:
        """A subscriber's queue length: ICEORYX_BUFFER_BYTES of samples, and room for credits."""
        return max(8 * producers, min(1024, ICEORYX_BUFFER_BYTES // size))

    def open(self):
        """(iceoryx2 module, node, pub/sub service, event service) in this process."""
        import ctypes

        import iceoryx2 as iox2

        config = iox2.config.default()
        config.global_cfg.prefix = iox2.FileName.new(self.prefix)
        config.global_cfg.root_path = iox2.Path.new(self.root + "/")
        node = iox2.NodeBuilder.new().config(config).create(iox2.ServiceType.Ipc)
        queue = self.queue_for(self.size, self.producers)
        data = (node.service_builder(iox2.ServiceName.new("bench/data"))
                .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                .enable_safe_overflow(False).history_size(0).subscriber_max_buffer_size(queue)
                .subscriber_max_borrowed_samples(2)
                .max_publishers(max(2, self.producers)).max_subscribers(max(2, self.consumers))
                .open_or_create())
        event = node.service_builder(iox2.ServiceName.new("bench/data-ready")).event().open_or_create()
        return iox2, node, data, event


# ---------------------------------------------------------------- shmwal

TOPIC = "bench"
_entry_data = itemgetter(2)   # Entry.data, without a Python frame per message


def _shmwal_missing() -> str | None:
    try:
        import shmwal
    except ImportError as exc:
        return f"shmwal not importable: {exc}"
    needed = ("Broker", "connect", "Client", "NoFsync", "FsyncEvery", "AtLeastOnce", "StrictlyAtOnce")
    absent = [name for name in needed if not hasattr(shmwal, name)]
    return f"shmwal lacks {', '.join(absent)}" if absent else None


def shmwal_consistency(text: str):
    """'strict' or 'at-least-once[:N]', as the broker's command line spells them."""
    from ..options import parse_consistency

    return parse_consistency(text)


class ShmwalContender(Contender):
    family = "shmwal"
    pubsub = True

    def __init__(self, fsync_ms: int | None, batched=False, zero_copy=False, consistency="strict",
                 payloads=False, reserve=False, read_bytes=None, entry_writes=False):
        self.fsync_ms = fsync_ms            # None: NoFsync()
        self.batched = batched or (zero_copy and not reserve) or payloads
        # entry_writes: producers append one entry a call while consumers batch_read, so that
        # the row compares the read side alone with "entry" (read_next), the same producer.
        self.entry_writes = entry_writes
        self.zero_copy = zero_copy
        self.payloads = payloads            # batch_read_payloads: the data without an Entry each
        self.reserve = reserve              # producers fill client.reserve slots, consumers read zero-copy
        self.consistency = consistency
        self.read_bytes = read_bytes        # batch_read's max_bytes (None: READ_BATCH_BYTES rules)
        self.retention_bytes = None         # the broker's Retention(bytes=...) (None: its default)
        if reserve:
            mode = "reserve zero-copy batch" if batched else "reserve zero-copy"
        elif entry_writes:
            mode = "append+batch_read"
        else:
            mode = "zero-copy" if zero_copy else ("payloads" if payloads else ("batch" if batched else "entry"))
        durability = "nofsync" if fsync_ms is None else f"fsync{fsync_ms}ms"
        self.name = f"shmwal {durability} {mode}"

    @property
    def producer_batched(self) -> bool:
        return self.batched and not self.entry_writes

    def unavailable(self):
        missing = _shmwal_missing()
        if missing is None and self.reserve:
            import shmwal
            if not hasattr(shmwal.Client, "reserve"):
                return "shmwal lacks Client.reserve"
        return missing

    def unsupported(self, spec):
        if self.reserve and spec.size < RESERVE_MIN_SIZE:
            return f"zero-copy writes are for large messages (rows from {RESERVE_MIN_SIZE // 1024} KiB)"
        return super().unsupported(spec)

    def open(self, spec, ctx, workdir):
        return ShmwalSession(self, spec, workdir)


def _read_bytes(spec, read_bytes=None) -> int:
    """A batched consumer's max_bytes: ``read_bytes`` if given, else BATCH messages up to
    READ_BATCH_BYTES; never less than one message."""
    return max(spec.size, min(BATCH * spec.size, READ_BATCH_BYTES) if read_bytes is None else read_bytes)


class BrokerSession(BatonSession):
    """A fresh data directory, key and broker for every run; close() stops the broker and
    removes the directory (also when the broker did not start)."""

    broker = None

    def start_broker(self, workdir, prefix, **options):
        import shmwal

        self.dir = tempfile.mkdtemp(prefix=prefix, dir=workdir)
        self.key = f"bench-{uuid.uuid4().hex[:12]}"
        try:
            self.broker = shmwal.Broker(self.dir, key=self.key, **options).start()
        except BaseException:
            self.close()
            raise

    def close(self):
        try:
            if self.broker is not None:
                self.broker.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class ShmwalSession(BrokerSession):
    def __init__(self, contender, spec, workdir):
        import shmwal

        fsync = shmwal.NoFsync() if contender.fsync_ms is None else shmwal.FsyncEvery(milliseconds=contender.fsync_ms)
        options = {}
        if contender.retention_bytes is not None:
            options["retention"] = shmwal.Retention(bytes=contender.retention_bytes)
        self.start_broker(workdir, "shmwal-", fsync=fsync, consistency=shmwal_consistency(contender.consistency),
                          **options)
        super().__init__(ShmwalChannel(self.dir, self.key, spec.separate_groups,
                                       _read_bytes(spec, contender.read_bytes),
                                       contender.zero_copy, contender.payloads, contender.reserve))

    def send_baton(self):
        import shmwal

        with shmwal.connect(self.dir, key=self.key) as client:
            client.append(TOPIC, messages.token())


class ShmwalChannel:
    def __init__(self, data_dir, key, separate_groups, max_bytes, zero_copy, payloads=False, reserve=False):
        self.data_dir, self.key = data_dir, key
        self.reserve = reserve              # senders write through client.reserve
        self.separate_groups = separate_groups
        self.max_bytes = max_bytes          # per batch_read: BATCH messages, at most READ_BATCH_BYTES
        self.zero_copy = zero_copy          # batch_read(zero_copy=True): entries' data are views
        self.payloads = payloads            # batch_read_payloads instead of batch_read

    def _connect(self):
        import shmwal

        return shmwal.connect(self.data_dir, key=self.key)

    def sender(self, producer):
        return (ShmwalReserveSender if self.reserve else ShmwalSender)(self._connect())

    def receiver(self, consumer):
        group = f"g{consumer}" if self.separate_groups else "work"
        return ShmwalReceiver(self._connect(), group, self)


class ShmwalSender:
    batch = BATCH

    def __init__(self, client):
        self.client = client

    def send(self, buf):
        self.client.append(TOPIC, buf)

    def send_many(self, bufs):
        self.client.batch_append(TOPIC, bufs)

    def finish(self):
        pass

    def close(self):
        self.client.close()


class ShmwalReserveSender(ShmwalSender):
    """Each message written in place: a reserved slot of the mapped block is filled with it
    (the one copy every contender makes from the harness's buffer, by slot.fill: past the
    caches from 32 KiB, the checksum taken on the way) and published."""

    def send(self, buf):
        with self.client.reserve(TOPIC, len(buf)) as slot:
            slot.fill((buf,))

    def send_many(self, bufs):
        reserve = self.client.reserve
        for buf in bufs:
            with reserve(TOPIC, len(buf)) as slot:
                slot.fill((buf,))


class ShmwalReceiver:
    def __init__(self, client, group, channel):
        self.client, self.group = client, group
        self.max_bytes = channel.max_bytes
        self.pass_baton = not channel.separate_groups
        self.zero_copy = channel.zero_copy
        self.views = self.zero_copy   # the consumer copies what it keeps of each message
        if channel.payloads:
            self.recv_many = self._recv_payloads
        if channel.zero_copy:
            self.recv = self._recv_view
        if channel.separate_groups:
            # Make the group exist before any producer writes: a group born later starts
            # at the oldest entry *kept*, and blocks all older groups read past may be gone.
            client.seek(TOPIC, 0, group=group)

    def recv(self):
        return self.client.read_next(TOPIC, group=self.group, timeout=None).data

    def _recv_view(self):
        return self.client.read_next(TOPIC, group=self.group, timeout=None, zero_copy=True).data

    def recv_many(self):
        entries = self.client.batch_read(TOPIC, self.max_bytes, group=self.group, timeout=None,
                                         zero_copy=self.zero_copy)
        return list(map(_entry_data, entries))

    def _recv_payloads(self):
        return self.client.batch_read_payloads(TOPIC, self.max_bytes, group=self.group, timeout=None,
                                               zero_copy=self.zero_copy).data

    def on_token(self, msg) -> bool:
        if self.pass_baton:
            self.client.append(TOPIC, bytes(msg))
        return True

    def close(self):
        self.client.close()


# ---------------------------------------------------------------- shmwal.Queue

class ShmwalQueueContender(Contender):
    """``shmwal.Queue`` as a program gets it with no broker running: the broker Queue
    starts itself (embedded.py: its block geometry, NoFsync), started here by the session."""

    family = "shmwal"
    objects = objects_only = True

    def __init__(self, consistency="strict"):
        self.consistency = consistency
        self.name = "shmwal.Queue"

    def unavailable(self):
        missing = _shmwal_missing()
        if missing is None:
            import shmwal
            if not hasattr(shmwal, "Queue"):
                return "shmwal lacks Queue"
        return missing

    def open(self, spec, ctx, workdir):
        return ShmwalQueueSession(self, workdir)


class ShmwalQueueSession(BrokerSession):
    def __init__(self, contender, workdir):
        import shmwal
        from .. import embedded

        self.start_broker(workdir, "shmwal-queue-", fsync=shmwal.NoFsync(),
                          consistency=shmwal_consistency(contender.consistency),
                          block_size=embedded.BLOCK_SIZE, blocks_per_file=embedded.BLOCKS_PER_FILE)
        super().__init__(ShmwalQueueChannel(self.dir, self.key))

    def send_baton(self):
        import shmwal
        from .. import objects

        # What Queue.put(token) writes, without a Queue (and its per-process client) in the parent.
        with shmwal.connect(self.dir, key=self.key) as client:
            client.append(TOPIC, objects.gather(*objects.encode(messages.token())))


class ShmwalQueueChannel:
    def __init__(self, data_dir, key):
        self.data_dir, self.key = data_dir, key

    def _queue(self):
        import shmwal

        return shmwal.Queue(TOPIC, data_dir=self.data_dir, key=self.key, group="work")

    def sender(self, producer):
        return ShmwalQueueEnd(self._queue())

    def receiver(self, consumer):
        return ShmwalQueueEnd(self._queue())


class ShmwalQueueEnd:
    """put()/get() as a program calls them: put copies synchronously, so restamping is safe."""

    def __init__(self, q):
        self.q = q
        self.send_obj = q.put
        self.recv_obj = q.get

    def on_token(self, msg) -> bool:
        self.q.put(msg)   # pass the baton on
        return True

    def finish(self):
        pass

    def close(self):
        self.q.close()


def all_contenders(consistency: str = "strict", read_bytes: int | None = None,
                   retention_bytes: int | None = None) -> list[Contender]:
    """Every contender, peers first (the report's 'best peer' is taken among family 'peer').

    ``read_bytes``: shmwal's batch_read budget (``--read-batch-bytes``); None keeps the
    default (READ_BATCH_BYTES, at most BATCH messages). ``retention_bytes``: the brokers'
    ``Retention(bytes=...)`` (``--retention-bytes``); None keeps the broker's default."""
    shmwal_rows = [
        ShmwalContender(fsync_ms, batched=mode != "entry", payloads=mode == "payloads", consistency=consistency,
                        read_bytes=read_bytes)
        for fsync_ms in (None, 200)
        for mode in ("entry", "batch", "payloads")
    ]
    peers = [MPQueueContender(), FasterFifoContender(), FasterFifoContender(batched=True), ZmqContender(),
             IceoryxContender()]
    tail = [
        ShmwalContender(None, batched=True, entry_writes=True, consistency=consistency, read_bytes=read_bytes),
        ShmwalContender(None, zero_copy=True, consistency=consistency, read_bytes=read_bytes),
        ShmwalContender(None, zero_copy=True, reserve=True, consistency=consistency),
        ShmwalContender(None, zero_copy=True, reserve=True, batched=True, consistency=consistency,
                        read_bytes=read_bytes),
    ]
    for row in shmwal_rows + tail:
        row.retention_bytes = retention_bytes
    return [*peers, *shmwal_rows, *tail, ShmwalQueueContender(consistency)]


# ---------------------------------------------------------------- NATS JetStream

NATS_EXTRA = "pip install 'shmwal[nats]' and apt-get install nats-server"


def _nats_missing() -> str | None:
    missing = _missing("nats", NATS_EXTRA)
    if missing:
        return missing
    from ..nats.cluster import server_binary
    return None if server_binary() else f"nats-server is not installed: {NATS_EXTRA}"


class NatsSession(BatonSession):
    """A fresh 3-node JetStream cluster on 127.0.0.1 per run (replicas 3), and a fresh key."""

    def __init__(self, channel_for):
        from ..nats.cluster import Cluster

        self.cluster = Cluster(3).start()
        self.key = f"bench-{uuid.uuid4().hex[:12]}"
        try:
            super().__init__(channel_for(self.cluster.url, self.key))
        except BaseException:
            self.cluster.stop()
            raise

    def send_baton(self):
        import shmwal

        with shmwal.connect(self.cluster.url, key=self.key) as client:
            client.append(TOPIC, messages.token())

    def close(self):
        self.cluster.stop()


class ShmwalNatsContender(Contender):
    """``shmwal.connect("nats://...")``: the same sender/receiver as the local shmwal rows."""

    family = "nats"
    pubsub = True

    def __init__(self, batched=False, consistency="strict", claims=True):
        self.batched = batched
        self.consistency = consistency
        self.claims = claims
        self.name = (f"shmwal nats {'batch' if batched else 'entry'}"
                     + ("" if consistency == "strict" else " at-least-once") + ("" if claims else " no-claims"))

    def unavailable(self):
        return _nats_missing()

    def open(self, spec, ctx, workdir):
        read_bytes = _read_bytes(spec)
        return NatsSession(lambda url, key: ShmwalNatsChannel(url, key, spec.separate_groups, read_bytes,
                                                              self.consistency, self.claims))


class ShmwalNatsChannel(ShmwalChannel):
    def __init__(self, url, key, separate_groups, max_bytes, consistency, claims=True):
        super().__init__(url, key, separate_groups, max_bytes, zero_copy=False)
        self.consistency = consistency
        self.claims = claims

    def _connect(self):
        import shmwal

        return shmwal.connect(self.data_dir, key=self.key, timeout=30, claims=self.claims,
                              consistency=shmwal_consistency(self.consistency))

    def receiver(self, consumer):
        rx = super().receiver(consumer)
        # As the plain nats-py end does before the start: the stream and the group's consumer
        # (and the claims stream, made once per cluster) exist before the clock runs.
        rx.client.create_group(TOPIC, rx.group)
        return rx


class BridgeContender(Contender):
    """Producers append locally; ``shmwal bridge`` mirrors the topic into JetStream; consumers
    read it there (shmwal nats, batched): the bridge's throughput end to end."""

    family = "nats"
    batched = True
    name = "shmwal bridge"

    def unavailable(self):
        return _nats_missing() or _shmwal_missing()

    def unsupported(self, spec):
        if spec.producers > 1 or spec.separate_groups:
            return "one bridge, one group"
        return super().unsupported(spec)

    def open(self, spec, ctx, workdir):
        return BridgeSession(spec, workdir)


class BridgeSession(NatsSession):
    def __init__(self, spec, workdir):
        import subprocess
        import sys

        import shmwal

        self.dir = tempfile.mkdtemp(prefix="shmwal-", dir=workdir)
        self.broker = shmwal.Broker(self.dir, key="bridge", fsync=shmwal.FsyncEvery(milliseconds=200)).start()
        self.bridge = None
        try:
            read_bytes = _read_bytes(spec)
            super().__init__(lambda url, key: BridgeChannel(self.dir, url, key, read_bytes))
            self.bridge = subprocess.Popen(
                [sys.executable, "-m", "shmwal", "bridge", "--data-dir", self.dir, "--key", "bridge",
                 "--topic", TOPIC, "--to", self.cluster.url, "--remote-key", self.key],
                stdin=subprocess.DEVNULL)
        except BaseException:
            self.close()
            raise

    def send_baton(self):
        import shmwal

        with shmwal.connect(self.dir, key="bridge") as client:
            client.append(TOPIC, messages.token())

    def close(self):
        try:
            if self.bridge is not None:
                self.bridge.terminate()
                self.bridge.wait(30)
        finally:
            try:
                if getattr(self, "cluster", None) is not None:
                    super().close()
            finally:
                self.broker.stop()
                shutil.rmtree(self.dir, ignore_errors=True)


class BridgeChannel(ShmwalChannel):
    def __init__(self, data_dir, url, key, max_bytes):
        super().__init__(url, key, False, max_bytes, zero_copy=False)
        self.local_dir = data_dir

    def sender(self, producer):
        import shmwal

        return ShmwalSender(shmwal.connect(self.local_dir, key="bridge"))

    def receiver(self, consumer):
        return ShmwalReceiver(self._connect(), "work", self)


class PlainNatsContender(Contender):
    """nats-py by hand, with shmwal nats's acknowledgement settings: a publish waits for its
    PubAck (batched: 1,000 in flight, then all awaited), a read is a pull from a durable
    consumer whose acks are awaited before the next pull (``awaited_acks=False``: sent and
    not awaited, as shmwal's AtLeastOnce does). No claims, no message ids."""

    family = "peer"
    pubsub = True

    def __init__(self, batched=False, awaited_acks=True):
        self.batched = batched
        self.awaited_acks = awaited_acks
        self.name = f"nats-py plain {'batch' if batched else 'entry'}" + ("" if awaited_acks else " unawaited-acks")

    def unavailable(self):
        return _nats_missing()

    def open(self, spec, ctx, workdir):
        return NatsSession(lambda url, key: PlainNatsChannel(url, key, spec.separate_groups,
                                                             max(1, min(BATCH, READ_BATCH_BYTES // spec.size)),
                                                             self.awaited_acks))


class PlainNatsChannel:
    def __init__(self, url, key, separate_groups, read_batch, awaited_acks=True):
        self.url, self.key = url, key
        self.separate_groups = separate_groups
        self.read_batch = read_batch
        self.awaited_acks = awaited_acks

    def sender(self, producer):
        return PlainNatsEnd(self, None)

    def receiver(self, consumer):
        return PlainNatsEnd(self, f"g{consumer}" if self.separate_groups else "work")


class PlainNatsEnd:
    """One process's end: its own event loop, run in this thread (no loop thread, no hop)."""

    batch = BATCH

    def __init__(self, channel, group):
        import asyncio

        import nats

        from ..nats import names
        from ..nats.client import parse_servers

        self.loop = asyncio.new_event_loop()
        self.channel = channel
        ns = names.namespace(channel.key)
        self.subject = names.subject(ns, TOPIC)
        self.stream = names.stream_name(ns, TOPIC)
        self.nc = self.loop.run_until_complete(nats.connect(servers=parse_servers(channel.url)))
        self.js = self.nc.jetstream(timeout=30)
        self.run = self.loop.run_until_complete
        self.run(self._stream())
        self.sub = None
        self.pending = []
        if group is not None:
            self.sub = self.run(self.js.pull_subscribe(self.subject, durable=group, stream=self.stream))

    async def _stream(self):
        from nats.js.errors import BadRequestError

        try:
            await self.js.add_stream(name=self.stream, subjects=[self.subject], num_replicas=3)
        except BadRequestError:
            pass   # made by the other end with shmwal's settings: the same stream

    def send(self, buf):
        self.run(self.js.publish(self.subject, bytes(buf)))

    def send_many(self, bufs):
        self.run(self._publish_many([bytes(b) for b in bufs]))

    async def _publish_many(self, payloads):
        import asyncio

        await asyncio.gather(*(self.js.publish(self.subject, p) for p in payloads))

    async def _take(self, n):
        import asyncio

        import nats.errors

        while True:
            try:
                msgs = await self.sub.fetch(n, timeout=5)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            if self.channel.awaited_acks:
                await asyncio.gather(*(m.ack_sync(timeout=30) for m in msgs))
            else:
                for m in msgs:
                    await m.ack()
            return [m.data for m in msgs]

    def recv(self):
        return self.run(self._take(1))[0]

    def recv_many(self):
        return self.run(self._take(self.channel.read_batch))

    def on_token(self, msg) -> bool:
        if not self.channel.separate_groups:
            self.run(self.js.publish(self.subject, bytes(msg)))
        return True

    def finish(self):
        pass

    def close(self):
        self.run(self.nc.close())
        self.loop.close()


def nats_contenders() -> list[Contender]:
    """The NATS rows (not in the default race: each run starts a 3-node cluster)."""
    # AtLeastOnce rows beside the plain twin whose acks are not awaited either.
    return [PlainNatsContender(), ShmwalNatsContender(), ShmwalNatsContender(claims=False),
            PlainNatsContender(batched=True), ShmwalNatsContender(batched=True),
            ShmwalNatsContender(batched=True, claims=False),
            PlainNatsContender(batched=True, awaited_acks=False),
            ShmwalNatsContender(batched=True, consistency="at-least-once:1"), BridgeContender()]
