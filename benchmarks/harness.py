"""Running one case: warm-up, interleaved repetitions, statistics and the target verdict.

A *workload* does its own setup, times only the operation being measured with :func:`timed` (or
:func:`timed_async`), and returns the seconds it took for ``n`` messages. The harness gives it a fresh directory per
repetition, so no repetition sees another's files, and never trusts a rate it did not compute from those seconds.
A case whose ``unit`` is not msg/s measures something else (e.g. MB of memory): its workload returns that value.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from . import payload
from .payload import DEFAULT_BYTES

__all__ = [
    "Case",
    "Context",
    "Settings",
    "Target",
    "Workload",
    "count_label",
    "new_record",
    "profile_timed_sections",
    "run_case",
    "skip_reason",
    "summarize",
    "timed",
    "timed_async",
]

#: ``(context, fresh directory, message count) -> seconds spent on the measured operation`` (or, for a case whose
#: unit is not ``RATE``, the measured value itself).
Workload = Callable[["Context", Path, int], float]

#: The unit of a case that measures throughput; any other unit means the workload returns the value itself.
RATE = "msg/s"

TargetKind = Literal["min_ratio", "min_rate", "max_slowdown", "below"]


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    quick: bool = False
    scale: float = 1.0
    reps: int | None = None
    #: The untimed warm-up run per side before the repetitions (``--no-warmup`` turns it off: a smoke test).
    warmup: bool = True
    #: Admin URLs of the database servers the postgresql and mariadb cases create their databases on.
    postgresql: str = field(default_factory=lambda: _env(
        "PBUFFER_BENCH_POSTGRESQL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    mariadb: str = field(default_factory=lambda: _env(
        "PBUFFER_BENCH_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"))
    #: ``--payload``: bytes per message in every case (None: 100, and the payload-size cases run too).
    payload: int | None = None
    #: ``--url``: the buffer the core cases run on instead of the built-in stores (see :mod:`.url_cases`).
    url: str | None = None

    @property
    def payload_bytes(self) -> int:
        return DEFAULT_BYTES if self.payload is None else self.payload

    @property
    def repetitions(self) -> int:
        return self.reps if self.reps is not None else (5 if self.quick else 7)

    def repetitions_for(self, case: Case) -> int:
        """``--reps`` if given, else the case's own count (a slow case may ask for fewer), else the mode's."""
        if self.reps is None and case.reps is not None:
            return case.reps
        return self.repetitions

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    def count(self, full: int, quick: int | None = None) -> int:
        """A message count for this mode, scaled; never below 1 (a case with no messages measures nothing)."""
        base = quick if self.quick and quick is not None else full
        return max(1, round(base * self.scale))


@dataclass(frozen=True)
class Target:
    """What the issue asks of a case.

    ``min_ratio``: subject/baseline >= threshold. ``min_rate``: the subject's median msg/s >= threshold.
    ``max_slowdown``: baseline/subject <= threshold (the subject is the harder condition, e.g. a longer backlog).
    ``below``: the subject's largest value over the repetitions < threshold, in the case's unit (a bound such as
    memory growth must hold every time, so it is judged on the worst repetition, not the median).
    """

    name: str
    kind: TargetKind
    threshold: float


@dataclass(frozen=True)
class Case:
    """One row of the report: pbuffer doing ``op`` on ``backend``, optionally beside a baseline."""

    name: str
    op: str
    backend: str
    subject_label: str
    subject: Workload
    count: int
    baseline_label: str | None = None
    baseline: Workload | None = None
    target: Target | None = None
    note: str = ""
    #: Importable modules the case needs (optional peers); a missing one skips the case instead of failing it.
    requires: tuple[str, ...] = ()
    #: Run once, untimed, in a fresh directory; its text is appended to the note (e.g. a peer's actual pragmas).
    probe: Callable[[Path], str] | None = None
    #: Called before anything runs: a returned text (e.g. "skipped: nats-server not installed") skips the case.
    skip_if: Callable[[], str | None] | None = None
    #: Messages per repetition on the baseline side, when it differs from ``count`` (rates are per message).
    baseline_count: int | None = None
    #: ``RATE`` (msg/s, computed from seconds) or the unit of the value the subject workload returns.
    unit: str = RATE
    #: Repetitions for this case unless ``--reps`` is given (None: the mode's default).
    reps: int | None = None
    #: One untimed run per side first (a fifth of the messages); off for a case that starts a fresh process
    #: per repetition anyway.
    warmup: bool = True
    #: Bytes per message (both sides); the report and the plots show it.
    payload_bytes: int = 100
    #: Cases sharing a series (e.g. "sqlite save()") measure the same operation at different payload sizes; the
    #: plots draw them as one line against ``payload_bytes``.
    series: str | None = None
    #: Run in quick mode (a headline figure); the rest run in full mode, or in quick mode with ``--all``.
    headline: bool = False
    #: Messages already waiting when the timed operation starts; cases of one series at several backlogs are
    #: drawn as the cost curve as the buffer grows.
    backlog: int | None = None


@dataclass
class Context:
    """Run-wide scratch space: per-repetition directories, expensive inputs built once per run, and services
    (e.g. a nats-server) started once per case."""

    root: Path
    _templates: dict[str, Path] = field(default_factory=dict)
    _resources: dict[str, Any] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack)

    @contextmanager
    def fresh_dir(self) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix="rep-", dir=self.root))
        try:
            yield path
        finally:
            # Removed at once: a million-message copy per repetition would otherwise fill the disk.
            shutil.rmtree(path, ignore_errors=True)

    def template(self, key: str, build: Callable[[Path], None]) -> Path:
        """A directory built by ``build`` the first time ``key`` is asked for in this run, then reused (copy it,
        never change it). Kept on disk under the run's root, so the process of a later case reuses it too: it is
        built under a temporary name and renamed once complete."""
        if key not in self._templates:
            path = self.root / "templates" / key
            if not path.is_dir():
                partial = path.with_name(f"{key}.partial-{os.getpid()}")
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                try:
                    build(partial)
                    partial.rename(path)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
            self._templates[key] = path
        return self._templates[key]

    def resource(self, key: str, start: Callable[[], AbstractContextManager[Any]]) -> Any:
        """What ``start()`` enters the first time ``key`` is asked for during a case, shared by that case's
        repetitions and exited when the case ends (see :meth:`release`)."""
        if key not in self._resources:
            self._resources[key] = self._stack.enter_context(start())
        return self._resources[key]

    def release(self) -> None:
        """Exit every resource started since the last release (the harness calls this after each case)."""
        self._resources.clear()
        self._stack.close()
        self._stack = ExitStack()


class _Profiler(Protocol):
    def enable(self) -> None: ...

    def disable(self) -> None: ...


#: Set by ``--profile`` (:mod:`.profiling`): enabled around every timed section in this process, so a profile
#: shows the measured operation and not the setup around it.
_profiler: list[_Profiler] = []


def profile_timed_sections(profiler: _Profiler | None) -> None:
    """Enable ``profiler`` around each timed section from now on (``None``: stop)."""
    _profiler.clear()
    if profiler is not None:
        _profiler.append(profiler)


def timed_threads(work: Callable[[], object], n: int, threads: int) -> float:
    """Seconds ``threads`` threads take to call ``work()`` ``n`` times in all (split as evenly as can be), timed
    from the moment they are all released together to the moment the last one ends."""
    counts = [n // threads + (1 if thread < n % threads else 0) for thread in range(threads)]
    start = threading.Barrier(threads + 1)

    def producer(count: int) -> None:
        start.wait()
        for _ in range(count):
            work()

    workers = [threading.Thread(target=producer, args=(count,)) for count in counts]
    for worker in workers:
        worker.start()

    def run() -> None:
        start.wait()
        for worker in workers:
            worker.join()

    return timed(run)


def timed(operation: Callable[[], object]) -> float:
    """Seconds ``operation()`` takes. Garbage left by setup is collected first so it is not billed here; the
    collector stays on during the measurement, as it is in an application."""
    gc.collect()
    for profiler in _profiler:
        profiler.enable()
    start = time.perf_counter()
    try:
        operation()
        return time.perf_counter() - start
    finally:
        for profiler in _profiler:
            profiler.disable()


async def timed_async(operation: Callable[[], Awaitable[object]]) -> float:
    """:func:`timed` for a coroutine: seconds until ``await operation()`` returns, on the running event loop."""
    gc.collect()
    for profiler in _profiler:
        profiler.enable()
    start = time.perf_counter()
    try:
        await operation()
        return time.perf_counter() - start
    finally:
        for profiler in _profiler:
            profiler.disable()


def count_label(n: int) -> str:
    """A message count as case names spell it, from the count actually used: 1k, 50k, 2.5k, 1M, 20."""
    for size, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return f"{n:,}"


def summarize(rates: list[float]) -> dict[str, float]:
    """Median and spread of per-repetition values (msg/s, or the case's unit)."""
    if len(rates) >= 2:
        q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive")
    else:
        q1 = q3 = rates[0]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "q1": q1, "q3": q3}


def skip_reason(case: Case) -> str | None:
    """Why ``case`` cannot run here (a peer not installed, a service missing), or ``None``."""
    missing = [module for module in case.requires if importlib.util.find_spec(module) is None]
    if missing:
        return f"skipped: not installed ({', '.join(missing)})"
    return case.skip_if() if case.skip_if is not None else None


def new_record(case: Case, settings: Settings) -> dict[str, Any]:
    """A case's JSON record before anything is measured (status ``ok``, no figures)."""
    return {
        "name": case.name, "op": case.op, "backend": case.backend, "messages_per_rep": case.count,
        "payload_bytes": case.payload_bytes, "series": case.series, "backlog": case.backlog,
        "reps": settings.repetitions_for(case), "unit": case.unit, "note": case.note,
        "subject": {"label": case.subject_label, "messages_per_rep": case.count},
        "baseline": None if case.baseline is None else {
            "label": case.baseline_label, "messages_per_rep": _baseline_count(case)},
        "ratio": None, "ratios": [], "target": _target_record(case.target, None, case.unit), "status": "ok",
        "headline": case.headline, "memory": None,
    }


def run_case(case: Case, settings: Settings, context: Context,
             log: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Measure one case in this process and return its JSON record (never raises for a failing or skipped
    case). :func:`.isolation.run_isolated` runs it in a process of its own and adds its peak RSS."""
    record = new_record(case, settings)
    payload.use(settings.payload_bytes)
    try:
        reason = skip_reason(case)
        if reason is not None:
            record["status"] = reason
            log(f"{case.name}: {record['status']}")
            return record
        if case.probe is not None:
            with context.fresh_dir() as directory:
                record["note"] = f"{case.note} {case.probe(directory)}".strip()
        _measure(case, settings, context, record, log)
    except Exception as exc:  # one broken case must not cost the rest of the run
        record["status"] = f"error: {type(exc).__name__}: {exc}"
        log(f"{case.name}: {record['status']}")
    finally:
        try:
            context.release()
        except Exception as exc:
            if record["status"] == "ok":
                record["status"] = f"error: releasing resources: {type(exc).__name__}: {exc}"
                log(f"{case.name}: {record['status']}")
    return record


def _baseline_count(case: Case) -> int:
    return case.baseline_count if case.baseline_count is not None else case.count


def _measure(case: Case, settings: Settings, context: Context, record: dict[str, Any],
             log: Callable[[str], None]) -> None:
    sides: list[tuple[str, Workload, int]] = [("subject", case.subject, case.count)]
    if case.baseline is not None:
        sides.append(("baseline", case.baseline, _baseline_count(case)))
    if case.warmup and settings.warmup:
        # Warm-up: imports, sqlite's first file creation, page cache, templates; its timings are discarded.
        for _, workload, count in sides:
            with context.fresh_dir() as directory:
                workload(context, directory, max(1, count // 5))
    results: dict[str, list[float]] = {side: [] for side, _, _ in sides}
    for rep in range(settings.repetitions_for(case)):
        # Side by side, alternating which goes first, so drift on a noisy machine hits both equally.
        for side, workload, count in sides if rep % 2 == 0 else sides[::-1]:
            with context.fresh_dir() as directory:
                results[side].append(workload(context, directory, count))
    for side, _, count in sides:
        if case.unit == RATE:
            seconds = [max(s, 1e-9) for s in results[side]]
            rates = [count / s for s in seconds]
            record[side].update(summarize(rates), seconds=seconds, rates=rates)
        else:
            record[side].update(summarize(results[side]), values=results[side])
    subject = record["subject"]
    if case.baseline is not None and case.unit == RATE:
        # The median of paired ratios: each pair ran back to back, so machine drift cancels within a pair.
        record["ratios"] = [s / b for s, b in zip(subject["rates"], record["baseline"]["rates"], strict=True)]
        record["ratio"] = statistics.median(record["ratios"])
    record["target"] = _target_record(case.target, record, case.unit)
    line = (f"{case.name}: {subject['median']:,.0f} msg/s" if case.unit == RATE
            else f"{case.name}: {subject['median']:.3g} {case.unit} (max {subject['max']:.3g})")
    if record["ratio"] is not None:
        line += f", {record['ratio']:.2f}x {case.baseline_label}"
    log(line)


def _target_record(target: Target | None, record: dict[str, Any] | None, unit: str) -> dict[str, Any] | None:
    if target is None:
        return None
    measured: float | None = None
    met = False
    if record is not None:
        if target.kind == "min_rate":
            measured = float(record["subject"]["median"])
            met = measured >= target.threshold
        elif target.kind == "min_ratio" and record["ratio"] is not None:
            measured = float(record["ratio"])
            met = measured >= target.threshold
        elif target.kind == "max_slowdown" and record["ratios"]:
            measured = float(statistics.median(1 / r for r in record["ratios"]))
            met = measured <= target.threshold
        elif target.kind == "below":
            measured = float(record["subject"]["max"])
            met = measured < target.threshold
    return {"name": target.name, "kind": target.kind, "measured": measured, "threshold": target.threshold,
            "unit": unit, "met": met}
