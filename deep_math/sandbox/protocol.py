"""Length-prefixed JSON messages over a stream socket (parent <-> worker).

JSON, never pickle: the worker runs model code, so whatever it sends back is untrusted and must not
be able to run code in the parent. Reads are bounded (`max_bytes`) and deadline-aware.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

_HEADER = struct.Struct("!I")


class ProtocolError(Exception):
    """The peer closed the connection or sent something malformed."""


def send_msg(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
        else:
            sock.settimeout(None)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except TimeoutError:
            raise
        except OSError as exc:
            raise ProtocolError(f"connection error: {exc}") from exc
        if not chunk:
            raise ProtocolError("connection closed")
        buf += chunk
    return bytes(buf)


def recv_msg(sock: socket.socket, max_bytes: int, deadline: float | None = None) -> Any:
    """Receive one message. Raises TimeoutError at `deadline` (monotonic), ProtocolError otherwise."""
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the {max_bytes}-byte limit")
    try:
        return json.loads(_recv_exact(sock, size, deadline))
    except ValueError as exc:
        raise ProtocolError(f"malformed message: {exc}") from exc
