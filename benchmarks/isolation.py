"""Each case in a process of its own, so its peak RSS is its own (``--in-process`` turns this off).

The CLI runs every case through :func:`run_isolated`: a child process forked from the CLI's process (which runs no
case itself, has no threads, and has done every import a case needs first: see :mod:`._preload`; a fresh
interpreter where fork is not the platform's way) runs the case exactly as :func:`.harness.run_case` does
in-process, then reports, beside the case's record:

- ``peak_rss_mb``: the child's own peak resident set (``getrusage(RUSAGE_SELF).ru_maxrss``) over the whole case:
  the interpreter and imports, setup (fills, templates), the warm-up and every repetition, subject and baseline;
- ``start_rss_mb``: its resident set when the case started (the interpreter and imports alone, shared with the CLI's
  process), so the growth is ``peak - start``;
- ``children_peak_rss_mb``: the largest peak of any process the case started and waited for (producer processes,
  the drain.memory child, nats-server), or ``None`` if it started none.

Memory is in MB of 10^6 bytes. Templates (big backlog files) are shared between the cases' processes on disk.
"""

from __future__ import annotations

import functools
import multiprocessing
import resource
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .harness import Case, Context, Settings, new_record, run_case

__all__ = ["MB", "peak_rss", "prepare", "run_isolated"]

MB = 1_000_000


def prepare() -> None:
    """Do the imports every case needs (and choose how to start the cases' processes) before the first case."""
    _multiprocessing()


@functools.cache
def _multiprocessing() -> Any:
    """fork on Linux (after the imports every case needs, so none pays for them); spawn elsewhere."""
    from . import _preload  # noqa: F401  (imported for its effect)

    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _max_rss_bytes(who: int) -> int:
    peak = resource.getrusage(who).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss(start_bytes: int | None) -> dict[str, float | None]:
    """This process's memory figures so far (see the module's docstring)."""
    children = _max_rss_bytes(resource.RUSAGE_CHILDREN)
    return {
        "peak_rss_mb": _max_rss_bytes(resource.RUSAGE_SELF) / MB,
        "start_rss_mb": None if start_bytes is None else start_bytes / MB,
        "children_peak_rss_mb": children / MB if children else None,
    }


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _case_process(case: Case, settings: Settings, root: str, connection: Connection) -> None:
    start = _current_rss_bytes()
    record = run_case(case, settings, Context(Path(root)), _log)
    if record["status"] == "ok":
        record["memory"] = peak_rss(start)
    connection.send(record)
    connection.close()


def run_isolated(case: Case, settings: Settings, context: Context,
                 log: Callable[[str], None] = _log) -> dict[str, Any]:
    """:func:`.harness.run_case` in a process of its own; the record gains ``memory`` (see above). Never raises
    for a failing case, nor for a process that dies without reporting."""
    mp = _multiprocessing()
    receiver, sender = mp.Pipe(duplex=False)
    try:
        process = mp.Process(target=_case_process, args=(case, settings, str(context.root), sender),
                             name=f"bench-case {case.name}")
        process.start()
    except Exception as exc:
        record = new_record(case, settings)
        record["status"] = f"error: could not start the case's process: {type(exc).__name__}: {exc}"
        log(f"{case.name}: {record['status']}")
        return record
    finally:
        sender.close()
    try:
        result: dict[str, Any] | None = receiver.recv()
    except EOFError:
        result = None
    finally:
        receiver.close()
        process.join()
    if result is None:
        result = new_record(case, settings)
        result["status"] = f"error: the case's process exited with status {process.exitcode} before reporting"
        log(f"{case.name}: {result['status']}")
    return result
