"""Bytes on the wire: what the driver's calls to the trainers really sent and received.

Counted by the kernel, not estimated: before and after each call the
connection's ``TCP_INFO`` (Linux) gives the bytes the peer acknowledged and
the bytes that arrived, so the figure holds Dask's message headers, pickled
arguments, frame lengths and TLS records, everything but the TCP/IP headers.
Where ``TCP_INFO`` is not available (another OS, an in-process comm) the
counter says so (``measured`` stays False) rather than guess.

A 1 Gbit/s link carries 125 MB/s each way: :func:`link_seconds` turns an
epoch's bytes into the seconds they would take there.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

# struct tcp_info (linux/tcp.h): u64 tcpi_bytes_acked at byte 120, tcpi_bytes_received at 128 (Linux >= 4.1).
_TCP_INFO_LEN = 136
_BYTES_AT = 120


def tcp_totals(comm: Any) -> tuple[int, int] | None:
    """``(bytes acknowledged by the peer, bytes received)`` so far on ``comm``'s socket, or None."""
    sock = getattr(getattr(comm, "stream", None), "socket", None)
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_LEN)
    except (OSError, ValueError):
        return None
    if len(raw) < _TCP_INFO_LEN:  # a kernel older than 4.1: no byte counts
        return None
    acked, received = struct.unpack_from("QQ", raw, _BYTES_AT)
    return int(acked), int(received)


class WireCounter:
    """Bytes sent and received by the calls of one training run (thread-safe: calls finish on the client's loop)."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.calls = 0
        self.unmeasured = 0
        self._lock = threading.Lock()
        self._mark = (0, 0)

    def add(self, before: tuple[int, int] | None, after: tuple[int, int] | None) -> None:
        """Count one exchange from the totals read before and after it on its connection."""
        with self._lock:
            self.calls += 1
            if before is None or after is None:
                self.unmeasured += 1
                return
            self.sent += max(after[0] - before[0], 0)
            self.received += max(after[1] - before[1], 0)

    @property
    def measured(self) -> bool:
        """Whether every call so far was counted (False: the figures are missing some calls)."""
        return self.calls > 0 and self.unmeasured == 0

    def since_mark(self) -> tuple[int, int]:
        """``(sent, received)`` since the last call of this method (one epoch's bytes, when called per epoch)."""
        with self._lock:
            out = (self.sent - self._mark[0], self.received - self._mark[1])
            self._mark = (self.sent, self.received)
        return out


def link_seconds(sent: float, received: float, gbit_s: float = 1.0) -> float:
    """Seconds ``sent`` and ``received`` bytes take on a full-duplex link of ``gbit_s`` Gbit/s (the busier direction)."""
    return max(sent, received) * 8 / (gbit_s * 1e9)
