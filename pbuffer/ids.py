"""Message ids: UUIDv7 strings (RFC 9562), unique across processes and hosts, sortable by creation time.

An id becomes JetStream's ``Nats-Msg-Id``, so it must never be reused: it is neither a rowid nor a counter that
restarts when a buffer file is recreated. 62 random bits per id make collisions between processes negligible;
within a process the 12-bit ``rand_a`` field is a counter (RFC 9562 section 6.2, method 1), so ids made in the same
millisecond still sort in the order they were made.
"""

from __future__ import annotations

import os
import random
import threading
import time

__all__ = ["from_bytes", "id_timestamp_ms", "new_id", "new_ids", "to_bytes"]

_COUNTER_MAX = 0xFFF
# unix_ts_ms (48 bits) | version 7 and rand_a (our counter) | variant and rand_b (62 random bits)
_PREFIX = "%08x-%04x-"
_SUFFIX = "%04x-%04x-%012x"


class _Generator:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.last_ms = 0
        self.counter = 0
        self.prefix = ""  # the id's first 14 characters, which only change with the millisecond
        # A fast generator seeded with 128 bits from the OS (an os.urandom call per id would cost a system call);
        # reseeded in a forked child, so parent and child never share a stream.
        self.random = random.Random(os.urandom(16))

    def _next(self, now_ms: int) -> str:
        """The next id; the caller holds the lock."""
        if now_ms > self.last_ms:
            self.last_ms = now_ms
            # Start each millisecond at a random point in the lower half, leaving room to count up.
            self.counter = self.random.getrandbits(11)
            self.prefix = _PREFIX % (now_ms >> 16 & 0xFFFF_FFFF, now_ms & 0xFFFF)
        else:
            self.counter += 1
            if self.counter > _COUNTER_MAX:  # over ~2,000 ids in one millisecond: borrow the next one
                self.last_ms += 1
                self.counter = 0
                self.prefix = _PREFIX % (self.last_ms >> 16 & 0xFFFF_FFFF, self.last_ms & 0xFFFF)
        rand_b = self.random.getrandbits(62)
        return self.prefix + _SUFFIX % (0x7000 | self.counter, 0x8000 | rand_b >> 48, rand_b & 0xFFFF_FFFF_FFFF)

    def new_id(self, now_ns: int | None) -> str:
        now_ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
        with self.lock:
            return self._next(now_ms)

    def new_ids(self, count: int, now_ns: int | None) -> list[str]:
        now_ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
        with self.lock:
            return [self._next(now_ms) for _ in range(count)]


_generator = _Generator()
os.register_at_fork(after_in_child=_generator._reset)


def new_id(now_ns: int | None = None) -> str:
    """Return a new UUIDv7 as a 36-character lowercase string (``now_ns``: the time to encode, default now)."""
    return _generator.new_id(now_ns)


def new_ids(count: int, now_ns: int | None = None) -> list[str]:
    """``count`` new ids, in increasing order."""
    return _generator.new_ids(count, now_ns)


def to_bytes(message_id: str) -> bytes:
    """The 16 bytes of an id, as databases store it (a smaller index than the 36-character text)."""
    return bytes.fromhex(message_id.replace("-", ""))


def from_bytes(raw: bytes) -> str:
    """The id string of 16 stored bytes."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_timestamp_ms(message_id: str) -> int:
    """The creation time (Unix milliseconds) encoded in an id made by :func:`new_id`."""
    return int(message_id[:8] + message_id[9:13], 16)
