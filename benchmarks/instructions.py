"""CPU instructions per call of the hot paths, counted by valgrind: an A/B that a busy machine cannot blur.

``python -m benchmarks.instructions [WORKLOAD ...] [--count N]`` runs each workload twice under
``valgrind --tool=callgrind`` (once doing nothing after its setup, once making ``N`` calls) and prints the
difference divided by ``N``: the instructions the process executed per call, in Python, sqlite and libc. Wall time
on the shared 2-core machine this project is measured on swings by +-40% between runs; these counts repeat to
within 2-3% (ids, counter folds and checkpoints fall on different calls from run to run), so a change of
several percent in the Python on a hot path shows. They leave out what the kernel
does (writes, fsyncs, locks): a figure here says how much CPU work a call costs, not how fast it is; the harness
(``python -m benchmarks``) measures speed.

Run from another checkout (``cd <checkout> && python -m benchmarks.instructions``, with this file copied there if
it has none), it counts that checkout's pbuffer: the child (``python -m benchmarks.instructions --run WORKLOAD
N``) imports whichever pbuffer is first on the path. So two versions compare on one machine in one session.

Workloads: ``save``, ``save_many`` (calls of 1,000 messages: the figure is per message), ``pop`` (from 4,000
waiting), ``memory_save``; and the pinned floors the harness compares them with: ``rev2_insert`` (a plain sqlite3
loop writing the revision-0002 row, as ``baselines.sqlite3_rev2_insert``), ``rev2_pop`` (``DELETE ...
RETURNING`` of that row) and ``deque`` (a ``uuid4()``, a CRC32 and a tuple per message, as
``baselines.deque_loop``). 100-byte payloads, sqlite ``durability="process"``, files in a temporary directory.

Measured here, 2026-12-01 (instructions per message; pbuffer 0.3.0 -> the next release's code): ``save``
105,968 -> 104,254 (101,590 with ``group_commit=False``, now on by default; ``rev2_insert``: 76,844), ``save_many``
51,818 -> 46,715, ``pop`` 153,790 -> 147,917 (``rev2_pop``: 84,890; pop's counters UPDATE alone is about 20,000),
``memory_save`` 25,534 -> 22,707 (``deque``: 17,420).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path

__all__ = ["WORKLOADS", "count_instructions", "run"]

PAYLOAD = b"x" * 100
SUBJECT = "orders.created"
#: Messages waiting before the pop workloads start (both runs fill them, so the fill cancels out).
POP_BACKLOG = 4_000
_BATCH = 1_000


def _pbuffer_save(directory: Path, n: int) -> None:
    import pbuffer

    with pbuffer.open(f"sqlite:///{directory}/b.db") as buffer:
        buffer.save(PAYLOAD, subject=SUBJECT)  # the subject is now known: every later call is a warm one
        for _ in range(n):
            buffer.save(PAYLOAD, subject=SUBJECT)


def _pbuffer_save_many(directory: Path, n: int) -> None:
    import pbuffer

    with pbuffer.open(f"sqlite:///{directory}/b.db") as buffer:
        buffer.save(PAYLOAD, subject=SUBJECT)
        batch = [PAYLOAD] * _BATCH
        for _ in range(n // _BATCH):
            buffer.save_many(batch, subject=SUBJECT)


def _pbuffer_pop(directory: Path, n: int) -> None:
    import pbuffer

    with pbuffer.open(f"sqlite:///{directory}/b.db") as buffer:
        buffer.save_many([PAYLOAD] * POP_BACKLOG, subject=SUBJECT)
        for _ in range(min(n, POP_BACKLOG)):
            buffer.pop()


def _memory_save(directory: Path, n: int) -> None:
    import pbuffer

    with pbuffer.open("memory://") as buffer:
        buffer.save(PAYLOAD, subject=SUBJECT)
        for _ in range(n):
            buffer.save(PAYLOAD, subject=SUBJECT)


def _rev2(directory: Path) -> object:
    import sqlite3

    from .baselines import REVISION_0002_PRAGMAS, REVISION_0002_TABLE

    connection = sqlite3.connect(directory / "rev2.db", isolation_level=None)
    for pragma in REVISION_0002_PRAGMAS:
        connection.execute(f"PRAGMA {pragma.format(synchronous='NORMAL')}")
    connection.execute(REVISION_0002_TABLE)
    return connection


def _rev2_insert(directory: Path, n: int) -> None:
    from .baselines import _REV2_INSERT

    connection = _rev2(directory)
    execute = connection.execute  # type: ignore[attr-defined]
    for _ in range(n):
        execute("BEGIN IMMEDIATE")
        execute(_REV2_INSERT, (uuid.uuid4().bytes, SUBJECT, PAYLOAD, None, time.time_ns() // 1000,
                               zlib.crc32(PAYLOAD)))
        execute("COMMIT")
    connection.close()  # type: ignore[attr-defined]


def _rev2_pop(directory: Path, n: int) -> None:
    from .baselines import _REV2_INSERT, _REV2_POP, _rows

    connection = _rev2(directory)
    execute = connection.execute  # type: ignore[attr-defined]
    execute("BEGIN IMMEDIATE")
    connection.executemany(_REV2_INSERT, _rows(POP_BACKLOG, PAYLOAD))  # type: ignore[attr-defined]
    execute("COMMIT")
    for _ in range(min(n, POP_BACKLOG)):
        execute("BEGIN IMMEDIATE")
        execute(_REV2_POP).fetchone()
        execute("COMMIT")
    connection.close()  # type: ignore[attr-defined]


def _deque(directory: Path, n: int) -> None:
    queue: deque[tuple[uuid.UUID, str, bytes, int]] = deque()
    append, uuid4, crc32 = queue.append, uuid.uuid4, zlib.crc32
    for _ in range(n):
        append((uuid4(), SUBJECT, PAYLOAD, crc32(PAYLOAD)))


#: This module as the child imports it: benchmarks.instructions from a checkout, pbuffer.benchmarks.* installed.
_MODULE = __spec__.name if __spec__ is not None and __spec__.name != "__main__" else "benchmarks.instructions"

#: name -> (the workload, the default number of calls)
WORKLOADS: dict[str, tuple[Callable[[Path, int], None], int]] = {
    "save": (_pbuffer_save, 2_000),
    "save_many": (_pbuffer_save_many, 20_000),
    "pop": (_pbuffer_pop, POP_BACKLOG),
    "memory_save": (_memory_save, 20_000),
    "rev2_insert": (_rev2_insert, 2_000),
    "rev2_pop": (_rev2_pop, POP_BACKLOG),
    "deque": (_deque, 20_000),
}


def run(name: str, n: int) -> None:
    """Run workload ``name`` making ``n`` calls, in a fresh temporary directory (what valgrind watches)."""
    workload, _ = WORKLOADS[name]
    with tempfile.TemporaryDirectory() as directory:
        workload(Path(directory), n)


def count_instructions(name: str, n: int) -> float:
    """Instructions per message of workload ``name``: (a run with ``n`` messages - a run with none) / ``n``."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt install valgrind)")
    if name in ("pop", "rev2_pop") and n > POP_BACKLOG:
        raise SystemExit(f"{name}: at most {POP_BACKLOG:,} calls (the messages waiting)")

    def total(calls: int) -> int:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", _MODULE,
             "--run", name, str(calls)],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        found = re.search(r"Collected\s*:\s*([\d,]+)", done.stderr)
        if found is None:
            raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
        return int(found.group(1).replace(",", ""))

    return (total(n) - total(0)) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                        help=f"any of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--count", type=int, help="calls per workload (default: each workload's own)")
    parser.add_argument("--run", nargs=2, metavar=("WORKLOAD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run(args.run[0], int(args.run[1]))
        return
    unknown = [name for name in args.workloads if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    for name in args.workloads or WORKLOADS:
        n = args.count or WORKLOADS[name][1]
        print(f"{name:12} {count_instructions(name, n):>10,.0f} instructions per message ({n:,} messages)",
              flush=True)


if __name__ == "__main__":
    main()
