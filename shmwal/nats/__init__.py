"""shmwal on NATS JetStream: ``shmwal.connect("nats://host:port[,host:port...]")``.

Imported only for a ``nats://`` address (the local path never imports ``nats``).

* ``client``   ``NatsClient``: the Client API over JetStream (streams, durable pull
               consumers, claims for StrictlyAtOnce)
* ``claims``   a StrictlyAtOnce group's claim state, one versioned write a read
* ``names``    topic/group/key names as stream, consumer and subject names
* ``loop``     the event loop thread a synchronous client drives nats-py with
* ``bridge``   ``shmwal bridge``: a local topic mirrored into a stream
* ``cluster``  a local N-node JetStream cluster on 127.0.0.1 (tests, benchmarks)

What holds remotely, on nats-server 2.9 (the Debian package):

* Offsets: stream sequence - 1, from 0, gapless (a deduplicated publish takes no
  sequence). Entries come in offset order to a group with one reader; a group with
  several readers gets an entry again in a later position only after a reader died
  holding it.
* ``append`` carries a ``Nats-Msg-Id`` (unique per call, or ``msg_id=``): the client's
  own retries after a lost answer, and a caller's retry with the same id, never
  write twice within the stream's dedup window (``dedup_window``, 120 s).
* ``batch_append``: sent in one flush; every entry has a message id, every entry after
  the first expects the one before it as the stream's last (``Nats-Expected-Last-Msg-Id``).
  Holds: a batch that returns a range is contiguous (no other writer's entry inside
  it); a retried batch never duplicates an entry. Does not hold: atomic visibility —
  readers may see the first entries of a batch before its last are stored, and a
  client that dies in the middle of a batch leaves its first entries stored (JetStream
  2.9 has no atomic batch). If another writer's entry lands inside a batch, the rest
  of the batch is stored behind it and ``BatchInterleaved`` (``.offsets``) is raised.
* Groups: durable pull consumers with explicit acks (``ack_wait`` 30 s). StrictlyAtOnce
  (the default; ``connect(..., consistency=shmwal.AtLeastOnce())`` for the other)
  claims a read's entries in a replicated claims stream (one write a read, however
  many entries) and acknowledges them before the read returns: no entry is returned
  twice to a group, across client crashes and the loss of a node, as long as a
  redelivery comes within ``claims_window`` (300 s). Readers of one group claim in
  turn: two that claim at the same moment cost the later one two more round trips.
  ``claims=False`` keeps the awaited acks and drops the claims: then a consumer leader killed within the moment between answering an ack and
  replicating it can deliver that entry again (nats-server 2.9 answers first). A read's
  acks ask for one answer, the last's (a consumer's leader takes its acks in order), so
  a leader that changes in the middle of a read's acks can also leave the earlier ones
  untaken: those entries come again after ``ack_wait``, and claims drop them.
  AtLeastOnce acknowledges without waiting (an entry may come again; ``persist_every``
  has no meaning here); ``position`` may trail its last reads for a moment.
* ``seek`` replaces the group's consumer with one starting at the offset (past the end:
  the end; before the oldest: the oldest). Entries other readers of the group hold
  unacknowledged at that moment are forgotten with the old consumer, and a seek racing
  other readers of the same group is not atomic with their reads.
* ``batch_read``: API.md's caps exactly; what one pull brought past the cap stays with
  the reader, unacknowledged, for its next read (returned if within ack_wait/2).
* ``stats()``: entries, bytes (JetStream's stored bytes, headers included),
  ``disk_bytes`` (the same), offsets, ``replicas``; ``files``/``blocks`` are 0 (JetStream
  does not report them); a group's ``skipped`` is 0 (streams here have no limits).
* Errors: no server within ``timeout`` → ``BrokerUnavailable``; a request that gets
  no leader's answer within ``timeout`` (elections take seconds after a node dies) →
  ``BrokerUnavailable``; names → ``InvalidTopic``; entries over the server's
  ``max_payload`` less 512 bytes → ``EntryTooLarge``; limits of batches as local.

What does not hold, and raises ``shmwal.Unsupported``: ``zero_copy=True`` reads,
``reserve()``, ``io=`` other than "auto". A client does not survive ``fork()`` (its
event loop thread does not): pickle it to a worker instead.
"""
