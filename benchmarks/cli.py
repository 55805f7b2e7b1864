"""``python -m benchmarks`` (from a checkout) or ``python -m pbuffer.benchmarks`` (installed)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pbuffer
from pbuffer.registry import display_url

from . import given
from .cases import BACKENDS, OPS, build_cases
from .harness import Case, Context, Settings, run_case
from .isolation import prepare, run_isolated
from .machine import machine_info
from .payload import parse_size
from .report import markdown, write_json
from .selection import SelectionError, select

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


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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
    parser.add_argument("--ops", type=_names(OPS), default=None, help=f"comma-separated: {','.join(OPS)}")
    parser.add_argument("--backend", type=_names(BACKENDS), default=None,
                        help=f"comma-separated: {','.join(BACKENDS)}")
    parser.add_argument("--case", metavar="NAME", action="append", default=None,
                        help="run this case (its exact name, as the table shows it in this mode; repeatable); "
                             "--ops, --backend and --all then do not apply")
    parser.add_argument("--list", action="store_true",
                        help="print the names of the cases the other options select (op, backend) and exit")
    parser.add_argument("--url", metavar="URL",
                        help="run the core cases (save, save_many, pop, get, get_all, delete, claim, stats) on the "
                             "buffer at URL, any backend pbuffer.open() knows; it must be empty and is left empty; "
                             "no database is created")
    parser.add_argument("--payload", metavar="SIZE", type=_size, default=None,
                        help="bytes per message in every case, e.g. 100, 1KiB, 64KiB (default 100; the payload-size "
                             "cases are then left out)")
    parser.add_argument("--profile", metavar="CASE",
                        help="profile the subject of CASE (cProfile, in this process, quick-mode count): the top "
                             "entries by cumulative and by own time; measures nothing else")
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


def _fail(message: str) -> NoReturn:
    """A usage error: the message on stderr, exit status 2 (as argparse's own errors)."""
    print(f"python -m benchmarks: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _masked(argv: list[str]) -> list[str]:
    """The command line as recorded in the document: any password in a URL (--url, --postgresql...) masked."""
    return [display_url(arg) if "://" in arg else arg for arg in argv]


def _check_url(url: str) -> None:
    """Refuse a --url whose buffer cannot be opened or is not empty, before anything runs."""
    try:
        given.check_empty(url)
    except (given.NotEmptyError, pbuffer.PBufferError) as exc:
        _fail(f"--url {display_url(url)}: {exc}")


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks ``argv`` selects, print the table, and return the JSON document."""
    args = _parser().parse_args(argv)
    if args.reps is not None and args.reps < 1:
        _fail("--reps must be at least 1")
    if args.from_json:
        if not args.plot:
            _fail("--from-json needs --plot DIR")
        saved: dict[str, Any] = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        _plot(saved, args.plot)
        return saved
    if args.url is not None and args.backend is not None:
        _fail("--url runs the core cases on that buffer only; --backend does not apply (use --ops to choose)")
    settings = Settings(quick=args.quick or args.profile is not None, scale=args.scale, reps=args.reps,
                        warmup=not args.no_warmup, postgresql=args.postgresql, mariadb=args.mariadb,
                        payload=args.payload, url=args.url)
    if args.profile is not None:
        from .profiling import profile

        try:
            [case] = select(build_cases(settings), settings, cases=[args.profile])
        except SelectionError as exc:
            _fail(str(exc))
        if args.url is not None:
            _check_url(args.url)
        profile(case, settings)
        return {"profiled": case.name}
    try:
        cases = select(build_cases(settings), settings, ops=args.ops, backends=args.backend, cases=args.case,
                       every=args.all)
    except SelectionError as exc:
        _fail(str(exc))
    if args.list:
        for case in cases:
            print(f"{case.name}\t{case.op}\t{case.backend}" + ("\theadline" if case.headline else ""))
        return {"listed": [case.name for case in cases]}
    if args.url is not None:
        _check_url(args.url)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    document: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "mode": settings.mode, "scale": settings.scale, "reps": settings.repetitions,
        "cases_run": "selected" if args.case else "headline" if args.quick and not args.all else "all",
        "warmup": settings.warmup, "isolated": not args.in_process,
        "payload_bytes": settings.payload_bytes, "argv": _masked(sys.argv[1:] if argv is None else argv),
        "url": None if args.url is None else display_url(args.url),
        # What the run was filtered to (None: not filtered that way); the plots' titles say it.
        "selection": {"ops": args.ops, "backends": args.backend, "cases": args.case,
                      "url": None if args.url is None else display_url(args.url)},
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
    """Exit status 1 only when a case failed to run (2: a usage error, nothing run); a missed target is a result,
    not an error."""
    document = run(argv)
    sys.exit(1 if any(record["status"].startswith("error") for record in document.get("cases", [])) else 0)
