"""Running one case: warm-up, interleaved repetitions, statistics and the target verdict.

A *workload* does its own setup, times only the operation being measured with :func:`timed`, and returns the
seconds it took for ``n`` messages. The harness gives it a fresh directory per repetition, so no repetition sees
another's files, and never trusts a rate it did not compute from those seconds.
"""

from __future__ import annotations

import gc
import importlib.util
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Case",
    "Context",
    "Settings",
    "Target",
    "Workload",
    "run_case",
    "summarize",
    "timed",
]

#: ``(context, fresh directory, message count) -> seconds spent on the measured operation``.
Workload = Callable[["Context", Path, int], float]

TargetKind = Literal["min_ratio", "min_rate", "max_slowdown"]


@dataclass(frozen=True)
class Settings:
    quick: bool = False
    scale: float = 1.0
    reps: int | None = None

    @property
    def repetitions(self) -> int:
        return self.reps if self.reps is not None else (5 if self.quick else 7)

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


@dataclass
class Context:
    """Run-wide scratch space: per-repetition directories and expensive inputs built once per run."""

    root: Path
    _templates: dict[str, Path] = field(default_factory=dict)

    @contextmanager
    def fresh_dir(self) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix="rep-", dir=self.root))
        try:
            yield path
        finally:
            # Removed at once: a million-message copy per repetition would otherwise fill the disk.
            shutil.rmtree(path, ignore_errors=True)

    def template(self, key: str, build: Callable[[Path], None]) -> Path:
        """A directory built by ``build`` the first time ``key`` is asked for, then reused (copy it, never
        change it)."""
        if key not in self._templates:
            path = self.root / "templates" / key
            path.mkdir(parents=True)
            build(path)
            self._templates[key] = path
        return self._templates[key]


def timed(operation: Callable[[], object]) -> float:
    """Seconds ``operation()`` takes. Garbage left by setup is collected first so it is not billed here; the
    collector stays on during the measurement, as it is in an application."""
    gc.collect()
    start = time.perf_counter()
    operation()
    return time.perf_counter() - start


def summarize(rates: list[float]) -> dict[str, float]:
    """Median and spread of per-repetition rates (msg/s)."""
    if len(rates) >= 2:
        q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive")
    else:
        q1 = q3 = rates[0]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "q1": q1, "q3": q3}


def run_case(case: Case, settings: Settings, context: Context,
             log: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Measure one case and return its JSON record (never raises for a failing or skipped case)."""
    record: dict[str, Any] = {
        "name": case.name, "op": case.op, "backend": case.backend, "messages_per_rep": case.count,
        "reps": settings.repetitions, "note": case.note, "subject": {"label": case.subject_label},
        "baseline": None if case.baseline is None else {"label": case.baseline_label},
        "ratio": None, "ratios": [], "target": _target_record(case.target, None), "status": "ok",
    }
    missing = [module for module in case.requires if importlib.util.find_spec(module) is None]
    if missing:
        record["status"] = f"skipped: not installed ({', '.join(missing)})"
        log(f"{case.name}: {record['status']}")
        return record
    try:
        if case.probe is not None:
            with context.fresh_dir() as directory:
                record["note"] = f"{case.note} {case.probe(directory)}".strip()
        _measure(case, settings, context, record, log)
    except Exception as exc:  # one broken case must not cost the rest of the run
        record["status"] = f"error: {type(exc).__name__}: {exc}"
        log(f"{case.name}: {record['status']}")
    return record


def _measure(case: Case, settings: Settings, context: Context, record: dict[str, Any],
             log: Callable[[str], None]) -> None:
    sides: list[tuple[str, Workload]] = [("subject", case.subject)]
    if case.baseline is not None:
        sides.append(("baseline", case.baseline))
    # Warm-up: imports, sqlite's first file creation, page cache, templates; its timings are discarded.
    warmup = max(1, case.count // 5)
    for _, workload in sides:
        with context.fresh_dir() as directory:
            workload(context, directory, warmup)
    seconds: dict[str, list[float]] = {side: [] for side, _ in sides}
    for rep in range(settings.repetitions):
        # Side by side, alternating which goes first, so drift on a noisy machine hits both equally.
        for side, workload in sides if rep % 2 == 0 else sides[::-1]:
            with context.fresh_dir() as directory:
                seconds[side].append(max(workload(context, directory, case.count), 1e-9))
    for side, _ in sides:
        rates = [case.count / s for s in seconds[side]]
        record[side].update(summarize(rates), seconds=seconds[side], rates=rates)
    subject = record["subject"]
    if case.baseline is not None:
        # The median of paired ratios: each pair ran back to back, so machine drift cancels within a pair.
        record["ratios"] = [s / b for s, b in zip(subject["rates"], record["baseline"]["rates"], strict=True)]
        record["ratio"] = statistics.median(record["ratios"])
    record["target"] = _target_record(case.target, record)
    line = f"{case.name}: {subject['median']:,.0f} msg/s"
    if record["ratio"] is not None:
        line += f", {record['ratio']:.2f}x {case.baseline_label}"
    log(line)


def _target_record(target: Target | None, record: dict[str, Any] | None) -> dict[str, Any] | None:
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
    return {"name": target.name, "kind": target.kind, "measured": measured, "threshold": target.threshold,
            "met": met}
