"""``python -m benchmarks --profile CASE``: where the time of a case's subject goes.

Runs the subject workload of one case once, in this process, at its quick-mode count (``--scale`` applies), after
an untimed warm-up run; cProfile is enabled only around the workload's timed section (:func:`.harness.timed`), so
setup and fills are left out. Prints the top entries by cumulative time and by own time (tottime) to stdout.

cProfile sees the thread that runs the timed section: a case whose work runs in other threads (``N threads``)
or processes (``N processes``) or on a server shows mostly waiting; profile a one-thread case for its CPU.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import tempfile
from pathlib import Path

from . import payload
from .harness import RATE, Case, Context, Settings, profile_timed_sections, skip_reason

__all__ = ["TOP", "profile"]

#: Entries printed per ordering.
TOP = 25


def profile(case: Case, settings: Settings, top: int = TOP) -> str:
    """Profile ``case``'s subject, print the report and return it."""
    reason = skip_reason(case)
    if reason is not None:
        raise SystemExit(f"{case.name}: {reason}")
    payload.use(settings.payload_bytes)
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="pbuffer-profile-") as root:
        context = Context(Path(root))
        try:
            if case.warmup and settings.warmup:
                with context.fresh_dir() as directory:
                    case.subject(context, directory, max(1, case.count // 5))
            profile_timed_sections(profiler)
            try:
                with context.fresh_dir() as directory:
                    value = case.subject(context, directory, case.count)
            finally:
                profile_timed_sections(None)
        finally:
            context.release()
    measured = (f"{case.count / max(value, 1e-9):,.0f} msg/s over {case.count:,} messages" if case.unit == RATE
                else f"{value:.3g} {case.unit} ({case.count:,} messages)")
    out = io.StringIO()
    out.write(f"profile of {case.name}: {case.subject_label}, {measured}; {settings.payload_bytes}-byte payloads; "
              "the timed section only, under cProfile (slower than unprofiled)\n")
    stats = pstats.Stats(profiler, stream=out)
    for order in ("cumulative", "tottime"):
        out.write(f"\n=== top {top} by {order} ===\n")
        stats.sort_stats(order).print_stats(top)
    report = out.getvalue()
    sys.stdout.write(report)
    sys.stdout.flush()
    return report
