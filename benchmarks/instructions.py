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

Workloads: ``save``, ``save_many`` (calls of 1,000 messages: the figure is per message), ``memory_save``, and the
pinned floors ``rev2_insert`` (a plain sqlite3 loop writing the revision-0002 row) and ``deque`` (a ``uuid4()``, a
CRC32 and a tuple per message) are the harness's own functions (``workloads.buffer_save``, ``buffer_save_many``,
``baselines.sqlite3_rev2_insert``, ``deque_loop``); ``pop`` and ``rev2_pop`` (``DELETE ... RETURNING`` of that
row) pop from 4,000 waiting, and ``claim_delete`` drains them the relay's way (``workloads.buffer_claim_delete``'s
loop: claim a window of 500, claim the next behind it, ``delete_many`` the first), filled in both runs so the fill
cancels out. 100-byte payloads, sqlite ``durability="process"``, files in a temporary directory.

Measured here, 2026-12-01, instructions per message. pbuffer 0.3.0 -> 6746b25 (this module's first version, its
own loops over the same rows; the harness's functions replaced them after): ``save`` 105,968 -> 104,254 (101,590
with ``group_commit=False``), ``save_many`` 51,818 -> 46,715, ``pop`` 153,790 -> 147,917, ``memory_save`` 25,534
-> 22,707. 6746b25 -> 22312d3 (sqlite binds bytearrays and no NULL; the relay's delete counts in one pass), both
counted by this version: ``save`` 103,310 -> 95,624, ``save_many`` 46,697 -> 37,803, ``claim_delete`` 72,425 ->
64,902 (63,160 at 0e6ec9e: claims by seq range), ``pop`` 147,674 -> 147,840 (unchanged), ``memory_save`` 22,470 ->
22,499. Floors: ``rev2_insert`` 74,237, ``rev2_pop`` 84,145, ``deque`` 15,752.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import baselines, workloads
from .harness import Context
from .payload import current
from .workloads import SUBJECT

__all__ = ["WORKLOADS", "count_instructions", "run"]

#: Messages waiting before the pop workloads start (both runs fill them, so the fill cancels out).
POP_BACKLOG = 4_000


def _harness(workload: Callable[..., float], **options: Any) -> Callable[[Path, int], None]:
    """One of the harness's own workloads (benchmarks/workloads.py, baselines.py), timing and checks included:
    the run with no messages pays the same setup, so the difference is the messages' work."""
    def run_it(directory: Path, n: int) -> None:
        workload(Context(root=directory), directory, n, **options)
    return run_it


def _pbuffer_pop(directory: Path, n: int) -> None:
    # Not workloads.buffer_pop: it fills as many messages as it pops, and the fill would not cancel out.
    import pbuffer

    with pbuffer.open(f"sqlite:///{directory}/b.db") as buffer:
        buffer.save_many([current()] * POP_BACKLOG, subject=SUBJECT)
        for _ in range(min(n, POP_BACKLOG)):
            buffer.pop()


def _pbuffer_claim_delete(directory: Path, n: int) -> None:
    # workloads.buffer_claim_delete's loop (claim a window, claim the next behind it, delete_many the first) over
    # the first n of a fixed fill (see _pbuffer_pop), n a multiple of the window.
    import pbuffer

    with pbuffer.open(f"sqlite:///{directory}/b.db") as buffer:
        buffer.save_many([current()] * POP_BACKLOG, subject=SUBJECT)
        owner = pbuffer.ids.new_id()
        messages = buffer.claim(workloads.WINDOW, owner=owner, lease=60.0) if n else []
        for _ in range(n // workloads.WINDOW):
            following = buffer.claim(workloads.WINDOW, owner=owner, lease=60.0, after=messages[-1].id)
            buffer.delete_many([message.id for message in messages])
            messages = following


def _rev2_pop(directory: Path, n: int) -> None:
    # As baselines.sqlite3_rev2_pop, with a fixed fill (see _pbuffer_pop).
    connection = baselines._rev2(directory, "NORMAL")
    execute = connection.execute
    execute("BEGIN IMMEDIATE")
    connection.executemany(baselines._REV2_INSERT, baselines._rows(POP_BACKLOG, current()))
    execute("COMMIT")
    for _ in range(min(n, POP_BACKLOG)):
        execute("BEGIN IMMEDIATE")
        execute(baselines._REV2_POP).fetchone()
        execute("COMMIT")
    connection.close()


#: This module as the child imports it: benchmarks.instructions from a checkout, pbuffer.benchmarks.* installed.
_MODULE = __spec__.name if __spec__ is not None and __spec__.name != "__main__" else "benchmarks.instructions"

#: name -> (the workload, the default number of calls)
WORKLOADS: dict[str, tuple[Callable[[Path, int], None], int]] = {
    "save": (_harness(workloads.buffer_save), 2_000),
    "save_many": (_harness(workloads.buffer_save_many), 20_000),
    "pop": (_pbuffer_pop, POP_BACKLOG),
    "claim_delete": (_pbuffer_claim_delete, POP_BACKLOG),
    "memory_save": (_harness(workloads.buffer_save, store=workloads.MEMORY), 20_000),
    "rev2_insert": (_harness(baselines.sqlite3_rev2_insert), 2_000),
    "rev2_pop": (_rev2_pop, POP_BACKLOG),
    "deque": (_harness(baselines.deque_loop), 20_000),
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
    if name in ("pop", "rev2_pop", "claim_delete") and n > POP_BACKLOG:
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
