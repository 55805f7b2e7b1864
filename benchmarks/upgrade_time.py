"""Time ``pbuffer.upgrade()`` of a sqlite buffer holding N messages (default 1,000,000) from revision 0002 to head.

    python benchmarks/upgrade_time.py [N]

The file is filled with raw SQL in revision 0002's tables (one transaction), then upgraded the way a user would;
the time includes the backup pbuffer takes first. The README's upgrade figure comes from this script.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time

import pbuffer
from pbuffer.ids import new_id, to_bytes
from pbuffer.message import checksum, encode_headers


def main(count: int) -> None:
    directory = tempfile.mkdtemp()
    path = f"{directory}/buffer.db"
    url = f"sqlite:///{path}"
    pbuffer.upgrade(url, "0002")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    headers = encode_headers({})
    payload = b"x" * 100
    rows = []
    for number in range(count):
        message_id = new_id()
        rows.append((to_bytes(message_id), "a.b", payload, headers, number,
                     checksum(message_id, "a.b", headers, number, payload)))
    conn.executemany("INSERT INTO pbuffer_messages (id, subject, payload, headers, created_us, checksum) "
                     "VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.execute("INSERT INTO pbuffer_counters VALUES ('a.b', 0, ?, ?, 0, 0, 0, 0)", (count, count * len(payload)))
    conn.execute("COMMIT")
    conn.close()
    size = os.path.getsize(path)
    started = time.perf_counter()
    revision = pbuffer.upgrade(url)
    upgraded = time.perf_counter() - started
    started = time.perf_counter()
    with pbuffer.open(url) as buf:
        assert buf.stats().pending == count
        opened = time.perf_counter() - started
    print(f"{count:,} messages, file {size / 1e6:.1f} MB: upgrade 0002 -> {revision} in {upgraded:.2f} s "
          f"(backup included); first open after it {opened:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
