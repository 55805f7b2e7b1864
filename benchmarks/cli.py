"""``python -m benchmarks`` (from a checkout) or ``python -m pbuffer.benchmarks`` (installed)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cases import BACKENDS, OPS, build_cases
from .harness import Case, Context, Settings, run_case
from .isolation import prepare, run_isolated
from .machine import machine_info
from .report import markdown, write_json
from .workloads import PAYLOAD

__all__ = ["main", "run"]

SCHEMA_VERSION = 2


def _names(known: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        chosen = [name.strip() for name in text.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(known))
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(known)} (got {text!r})")
        return chosen

    return parse


def _scale(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("--scale must be positive")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure pbuffer against plain sqlite3 and other Python queues; print a markdown table.")
    parser.add_argument("--quick", action="store_true",
                        help="the headline cases only (under a minute), fewer messages and repetitions (5); the big "
                             "backlogs hold 50,000, not 1,000,000")
    parser.add_argument("--all", action="store_true",
                        help="with --quick: every case, not only the headline ones (full mode runs every case)")
    parser.add_argument("--json", metavar="FILE", help="also write the full document, raw timings included")
    parser.add_argument("--ops", type=_names(OPS), default=list(OPS), help=f"comma-separated: {','.join(OPS)}")
    parser.add_argument("--backend", type=_names(BACKENDS), default=list(BACKENDS),
                        help=f"comma-separated: {','.join(BACKENDS)}")
    parser.add_argument("--scale", type=_scale, default=1.0,
                        help="multiply every message count (at least 1 per case); e.g. 0.001 for a smoke test")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per case (default 7, quick 5)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed warm-up run of each side (for smoke tests; the figures are colder)")
    parser.add_argument("--postgresql", metavar="URL", default=Settings().postgresql,
                        help="a PostgreSQL database to CREATE DATABASE from (default $PBUFFER_BENCH_POSTGRESQL or "
                             "%(default)s); unreachable: its cases are skipped")
    parser.add_argument("--mariadb", metavar="URL", default=Settings().mariadb,
                        help="the same for MariaDB/MySQL (default $PBUFFER_BENCH_MARIADB or %(default)s)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the cases in this process instead of one process each (faster start; no peak RSS)")
    parser.add_argument("--plot", metavar="DIR",
                        help="also write PNG plots into DIR (needs matplotlib, in the bench extra)")
    parser.add_argument("--from-json", metavar="FILE",
                        help="with --plot: draw the plots of a saved --json document instead of measuring")
    return parser


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks ``argv`` selects, print the table, and return the JSON document."""
    args = _parser().parse_args(argv)
    if args.reps is not None and args.reps < 1:
        raise SystemExit("--reps must be at least 1")
    if args.from_json:
        if not args.plot:
            raise SystemExit("--from-json needs --plot DIR")
        saved: dict[str, Any] = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        _plot(saved, args.plot)
        return saved
    settings = Settings(quick=args.quick, scale=args.scale, reps=args.reps, warmup=not args.no_warmup,
                        postgresql=args.postgresql, mariadb=args.mariadb)
    cases = [case for case in build_cases(settings)
             if case.op in args.ops and case.backend in args.backend and (case.headline or not args.quick or args.all)]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    document: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "mode": settings.mode, "scale": settings.scale, "reps": settings.repetitions,
        "cases_run": "headline" if args.quick and not args.all else "all", "warmup": settings.warmup,
        "isolated": not args.in_process,
        "payload_bytes": len(PAYLOAD), "argv": list(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
    }
    log(f"{len(cases)} cases, {settings.mode} mode"
        + ("" if args.in_process else ", each in a process of its own (peak RSS per case)"))
    if not args.in_process:
        prepare()
    with tempfile.TemporaryDirectory(prefix="pbuffer-bench-") as root:
        context = Context(Path(root))
        records = [_run_one(index, len(cases), case, settings, context, log, started, args.in_process)
                   for index, case in enumerate(cases, 1)]
    document["duration_s"] = time.perf_counter() - started
    log(f"done: {len(records)} cases in {document['duration_s']:.0f} s")
    document["cases"] = records
    document["targets"] = [{"case": record["name"], **record["target"]} for record in records if record["target"]]
    print(markdown(document), end="", flush=True)
    if args.json:
        write_json(document, args.json)
    if args.plot:
        _plot(document, args.plot)
    return document


def _run_one(index: int, total: int, case: Case, settings: Settings, context: Context, log: Callable[[str], None],
             started: float, in_process: bool) -> dict[str, Any]:
    """One case, with a progress line before it (the case logs its own result line)."""
    log(f"[{index}/{total}, {time.perf_counter() - started:.0f} s] {case.name} ...")
    case_started = time.perf_counter()
    record = run_case(case, settings, context, log) if in_process else run_isolated(case, settings, context, log)
    record["duration_s"] = time.perf_counter() - case_started
    memory = record.get("memory")
    if memory:
        log(f"  {record['duration_s']:.1f} s, peak RSS {memory['peak_rss_mb']:.0f} MB")
    return record


def _plot(document: dict[str, Any], directory: str) -> None:
    from .plots import plot

    for path in plot(document, Path(directory)):
        print(f"plot: {path}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Exit status 1 only when a case failed to run; a missed target is a result, not an error."""
    document = run(argv)
    sys.exit(1 if any(record["status"].startswith("error") for record in document["cases"]) else 0)
