"""Message ids: UUIDv7 strings (RFC 9562), unique across processes and hosts, sortable by creation time.

An id becomes JetStream's ``Nats-Msg-Id``, so it must never be reused: it is neither a rowid nor a counter that
restarts when a buffer file is recreated. 62 random bits per id make collisions between processes negligible;
within a process the 12-bit ``rand_a`` field is a counter (RFC 9562 section 6.2, method 1), so ids made in the same
millisecond still sort in the order they were made.

Speed: an id is on every save's path. The random part of the next :data:`_BATCH` ids is made in one go (one
``getrandbits`` call, laid out as text by a few C-level slice copies), so an id costs a lock, an iterator step and
two string joins. The batch is thrown away in a forked child, which reseeds: parent and child never share random bits.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

__all__ = ["from_bytes", "id_timestamp_ms", "new_id", "new_ids", "to_bytes"]

_COUNTER_MAX = 0xFFF
# unix_ts_ms (48 bits) as "tttttttt-tttt-", made once per millisecond.
_PREFIX = "%08x-%04x-"
# The version nibble (7) and rand_a (our counter) with the dash after it, for every counter value.
_RAND_A = tuple(f"7{counter:03x}-" for counter in range(_COUNTER_MAX + 1))

# The random tails ("vrrr-rrrrrrrrrrrr": the variant and rand_b, 62 random bits) of _BATCH ids, made as one text
# of _STRIDE characters per id (the tail and a newline to split at).
_BATCH = 512
_TAIL = 17
_STRIDE = _TAIL + 1
# Applied to _BATCH random 64-bit words at once: clear each word's top two bits, then set them to 10 (the variant).
_CLEAR_VARIANT = int("3fff_ffff_ffff_ffff" * _BATCH, 16)
_VARIANT = int("8000_0000_0000_0000" * _BATCH, 16)
_LAYOUT = bytearray(_STRIDE * _BATCH)
_LAYOUT[4::_STRIDE] = b"-" * _BATCH
_LAYOUT[_TAIL::_STRIDE] = b"\n" * _BATCH


class _Generator:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.last_ms = 0
        self.counter = 0
        self.prefix = ""  # the id's first 14 characters, which only change with the millisecond
        # A fast generator seeded with 128 bits from the OS (an os.urandom call per id would cost a system call);
        # reseeded in a forked child, so parent and child never share a stream. Dropping the batch matters as much:
        # a child that kept it would hand out the parent's next tails.
        self.random = random.Random(os.urandom(16))
        # The next random tail of the current batch; StopIteration when it is used up.
        self.next_tail: Callable[[], str] = iter(()).__next__

    def _refill(self) -> str:
        """Make the random tails of the next _BATCH ids and return the first (the caller holds the lock)."""
        words = (self.random.getrandbits(64 * _BATCH) & _CLEAR_VARIANT | _VARIANT).to_bytes(8 * _BATCH, "big")
        hexed = words.hex().encode()  # 16 hex digits per id
        text = bytearray(_LAYOUT)
        # Copy hex digit i of every id to its place in the layout: four digits, the dash, twelve digits.
        for digit in range(16):
            place = digit if digit < 4 else digit + 1
            text[place::_STRIDE] = hexed[digit::16]
        tails = text.decode().split("\n")
        tails.pop()  # the empty string after the last newline
        self.next_tail = iter(tails).__next__
        return self.next_tail()

    def _start(self, now_ms: int) -> int:
        """Begin a new millisecond; returns its first counter value (the caller holds the lock)."""
        self.last_ms = now_ms
        # Start each millisecond at a random point in the lower half, leaving room to count up.
        self.counter = counter = self.random.getrandbits(11)
        self.prefix = _PREFIX % (now_ms >> 16 & 0xFFFF_FFFF, now_ms & 0xFFFF)
        return counter

    def _next(self, now_ms: int) -> str:
        """The next id; the caller holds the lock."""
        if now_ms > self.last_ms:
            counter = self._start(now_ms)
        else:
            counter = self.counter = self.counter + 1
            if counter > _COUNTER_MAX:  # over ~2,000 ids in one millisecond: borrow the next one
                counter = self._start(self.last_ms + 1)
        try:
            tail = self.next_tail()
        except StopIteration:
            tail = self._refill()
        return self.prefix + _RAND_A[counter] + tail

    def new_id(self, now_ns: int | None = None) -> str:
        """Return a new UUIDv7 as a 36-character lowercase string (``now_ns``: the time to encode, default now)."""
        now_ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
        # ``with``, not acquire() then try: a KeyboardInterrupt that lands between those two left the lock held
        # and every later save blocked for ever (found with signals; ``with`` on a C lock leaves no such gap).
        with self.lock:
            return self._next(now_ms)

    def new_ids(self, count: int, now_ns: int | None) -> list[str]:
        now_ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
        with self.lock:
            next_id = self._next
            return [next_id(now_ms) for _ in range(count)]


_generator = _Generator()
os.register_at_fork(after_in_child=_generator._reset)


#: Return a new UUIDv7 as a 36-character lowercase string (``now_ns``: the time to encode, default now). The
#: generator's bound method itself: a wrapper function would add a call to every save.
new_id = _generator.new_id


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
