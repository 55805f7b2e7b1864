"""The message payload every case uses (``--payload SIZE``; 100 bytes by default).

The size is a setting of the run, so each case's process sets it from :class:`.harness.Settings` before its
workloads run (:func:`.harness.run_case` calls :func:`use`); workloads read it with :func:`current` when they
start, never at import time, so a case forked or spawned from the harness sees the run's size.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_BYTES", "MAX_BYTES", "current", "label", "parse_size", "use"]

DEFAULT_BYTES = 100
#: The largest size ``--payload`` takes: pbuffer's servers limit a message to what one statement carries, and a
#: bigger payload would measure the disk, not pbuffer.
MAX_BYTES = 16 * 1024 * 1024
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1_000_000, "mb": 1_000_000, "mib": 1024 * 1024}
_SIZE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")

_payload = [b"x" * DEFAULT_BYTES]


def use(size: int) -> None:
    """Make :func:`current` return ``size`` bytes from now on (in this process)."""
    if len(_payload[0]) != size:
        _payload[0] = b"x" * size


def current() -> bytes:
    """The payload of every message the cases save (both sides of a case)."""
    return _payload[0]


def parse_size(text: str) -> int:
    """``100``, ``1KiB``, ``64KiB``, ``1kB``, ``2MiB`` -> bytes (1 to :data:`MAX_BYTES`); ``ValueError`` otherwise."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"a payload size is a number of bytes, optionally with a unit (100, 1KiB, 64KiB, 1MB), "
                         f"not {text!r}")
    size = int(match.group(1)) * _UNITS[unit]
    if not 1 <= size <= MAX_BYTES:
        raise ValueError(f"the payload size must be from 1 byte to {MAX_BYTES // (1024 * 1024)} MiB, not {text!r}")
    return size


def label(size: int) -> str:
    """A size as the case names spell it: ``100B``, ``1KiB``, ``64KiB``, ``1500B``."""
    if size >= 1024 * 1024 and size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)}MiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024}KiB"
    return f"{size}B"
