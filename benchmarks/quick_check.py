"""What the integrity check at open costs on a large sqlite buffer: a runnable measurement, not a test.

Builds a buffer of N messages (default 1,000,000 of about 100 bytes, saved with save_many in large batches), then
times, over several repetitions (medians reported):

- ``pbuffer.open(url)`` with ``integrity_check=True`` (the default: ``PRAGMA quick_check``) and with ``False``,
  each followed by ``close``;
- a bare ``PRAGMA quick_check`` and ``PRAGMA integrity_check`` (what ``pbuffer db verify`` runs) on a plain
  read-only sqlite3 connection;
- ``pbuffer.schema.recovery.verify`` (integrity_check plus reading every message and its checksum).

Each is measured warm (the file in the page cache, as after a restart of the process) and cold (the file's pages
dropped from the cache with posix_fadvise, as after a reboot; only this file's pages, nothing else on the machine).

Usage: python -m benchmarks.quick_check [--messages N] [--dir DIR] [--repeat R] [--keep]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pbuffer
from pbuffer.schema.recovery import verify


def build(path: Path, messages: int, batch: int = 20_000) -> float:
    started = time.perf_counter()
    with pbuffer.open(f"sqlite:///{path}") as buf:
        for start in range(0, messages, batch):
            count = min(batch, messages - start)
            buf.save_many([f"{i:012d}".encode() + os.urandom(44).hex().encode()[:88]
                           for i in range(start, start + count)], subject="measure.quick_check")
    return time.perf_counter() - started


def evict(path: Path) -> None:
    """Drop this database's pages from the OS page cache (clean pages only, so sync first)."""
    for file in (path, Path(f"{path}-wal")):
        if file.exists():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def pragma(path: Path, name: str) -> Callable[[], None]:
    def run() -> None:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            result = [row[0] for row in conn.execute(f"PRAGMA {name}")]
        finally:
            conn.close()
        assert result == ["ok"], result

    return run


def open_close(url: str, check: bool) -> Callable[[], None]:
    def run() -> None:
        pbuffer.open(url, integrity_check=check).close()

    return run


def verify_all(url: str, messages: int) -> Callable[[], None]:
    def run() -> None:
        report = verify(url)
        assert report.ok and report.pending == messages, report

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the file (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the file afterwards")
    args = parser.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="pbuffer-quick-check-"))
    path = directory / "measure.db"
    url = f"sqlite:///{path}"
    if not path.exists():
        seconds = build(path, args.messages)
        print(f"built {args.messages:,} messages in {seconds:.1f} s")
    size = path.stat().st_size
    print(f"file: {path} {size:,} bytes ({size / 1e6:.1f} MB), sqlite {sqlite3.sqlite_version}, "
          f"Python {sys.version.split()[0]}")
    cases: list[tuple[str, Callable[[], None]]] = [
        ("open + close, integrity_check=True (quick_check)", open_close(url, True)),
        ("open + close, integrity_check=False", open_close(url, False)),
        ("bare PRAGMA quick_check", pragma(path, "quick_check")),
        ("bare PRAGMA integrity_check", pragma(path, "integrity_check")),
        ("recovery.verify (integrity_check + every checksum)", verify_all(url, args.messages)),
    ]
    print(f"| case | warm (s) | cold (s) |  medians of {args.repeat}")
    print("|---|---|---|")
    for name, run in cases:
        timings: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):
            for cold in (False, True):
                if cold:
                    evict(path)
                else:
                    run()  # warm the cache with one untimed run
                started = time.perf_counter()
                run()
                timings[cold].append(time.perf_counter() - started)
        print(f"| {name} | {statistics.median(timings[False]):.3f} | {statistics.median(timings[True]):.3f} |",
              flush=True)
    if not args.keep and args.dir is None:
        for file in directory.iterdir():
            file.unlink()
        directory.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
