"""The exceptions of API.md, and nothing else.

Internals raise these directly; the public boundary never lets an ``OSError``
from a control-socket hiccup escape as anything but ``BrokerUnavailable``.
"""


class ShmwalError(Exception):
    """Base of every error shmwal raises on purpose."""


class BrokerUnavailable(ShmwalError, ConnectionError):
    """No broker answers on this data directory and key (none running, or it died)."""


class BrokerAlreadyRunning(ShmwalError):
    """A live broker already owns this data directory and key."""


class InvalidTopic(ShmwalError, ValueError):
    """A topic or group name outside ``[A-Za-z0-9._-]{1,255}`` (or starting with ``.``)."""


class EntryTooLarge(ShmwalError, ValueError):
    """One payload over the per-entry limit (1 GiB)."""


class BatchTooLarge(ShmwalError, ValueError):
    """A batch over 2,000 entries or 10 GiB of payload."""


class ClientClosed(ShmwalError):
    """This client was closed by its owner (not the broker's fault)."""


class Unsupported(ShmwalError, NotImplementedError):
    """What a nats:// client cannot do (zero-copy, reserve, io=): it has no mapped blocks."""


class CorruptEntry(ShmwalError):
    """An entry whose checksum does not match; its bytes are never returned."""

    def __init__(self, topic: str, offset: int, reason: str = "checksum mismatch"):
        super().__init__(f"corrupt entry at {topic}@{offset}: {reason}")
        self.topic = topic
        self.offset = offset
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.topic, self.offset, self.reason))
