"""The control protocol: length-prefixed JSON over a Unix stream socket.

Only control travels here (hello, topics, groups, blocks, stats), never an
entry.  JSON rather than pickle so that no byte a client sends can make the
broker run code; every message is bounded.
"""

from __future__ import annotations

import json
import socket
import struct

MAX_MESSAGE = 1 << 20
_LEN = struct.Struct("<I")


class ProtocolError(Exception):
    pass


def encode(obj) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    return _LEN.pack(len(data)) + data


def send(sock: socket.socket, obj) -> None:
    sock.sendall(encode(obj))


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket):
    """One message, or None at EOF."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_MESSAGE:
        raise ProtocolError("message too large")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    return json.loads(body)


class FrameBuffer:
    """Incremental decoder for the broker's non-blocking connections."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_MESSAGE:
                raise ProtocolError("message too large")
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            out.append(json.loads(body))
        return out
