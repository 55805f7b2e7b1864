"""The benchmark harness runs end to end, in-process and as ``python -m benchmarks``, at a tiny scale.

These tests check the harness's shape (every case measured, positive rates, machine info), never a speed: speeds
belong to a real run on a quiet machine, not to the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pbuffer.benchmarks.cli import run
from pbuffer.benchmarks.harness import Case, Context, Settings, run_case

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--quick", "--scale", "0.001"]

EXPECTED_CASES = {
    "sqlite.save vs sqlite3",
    "sqlite.save vs persist-queue",
    "sqlite.save vs persist-queue[default]",
    "sqlite.save[power] vs persist-queue[default]",
    "sqlite.save vs litequeue",
    "sqlite.save_many",
    "sqlite.pop vs persist-queue",
    "sqlite.pop vs litequeue",
    "sqlite.pop backlog",
    "memory.save",
    "memory.save_many",
    "memory.pop",
}
EXPECTED_TARGETS = {
    "sqlite.save vs sqlite3",
    "sqlite.save vs persist-queue",
    "sqlite.save_many",
    "sqlite.pop vs persist-queue",
    "sqlite.pop backlog",
    "memory.save",
}


def _check_side(side: dict[str, Any], reps: int) -> None:
    assert len(side["rates"]) == len(side["seconds"]) == reps
    assert all(rate > 0 for rate in side["rates"])
    assert side["min"] <= side["q1"] <= side["median"] <= side["q3"] <= side["max"]
    assert side["median"] > 0


def _check_document(document: dict[str, Any]) -> None:
    assert document["mode"] == "quick"
    assert document["reps"] == 5
    machine = document["machine"]
    for key in ("cpu_model", "cpu_count", "python", "sqlite_version", "pbuffer_version", "date_utc"):
        assert machine[key], key
    assert "git_commit" in machine  # may be None outside a checkout

    cases = {case["name"]: case for case in document["cases"]}
    assert set(cases) == EXPECTED_CASES
    for name, case in cases.items():
        # The peers are installed in the dev environment, so nothing may be skipped here.
        assert case["status"] == "ok", (name, case["status"])
        assert case["messages_per_rep"] >= 1
        _check_side(case["subject"], document["reps"])
        if case["baseline"] is not None:
            _check_side(case["baseline"], document["reps"])
            assert case["ratio"] > 0
            assert len(case["ratios"]) == document["reps"]

    targets = {target["case"]: target for target in document["targets"]}
    assert set(targets) == EXPECTED_TARGETS
    for target in targets.values():
        assert set(target) >= {"name", "measured", "threshold", "met"}
        assert target["measured"] > 0
        assert isinstance(target["met"], bool)


def test_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    document = run([*TINY, "--json", str(out)])
    _check_document(document)
    _check_document(json.loads(out.read_text(encoding="utf-8")))
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


def test_filters_select_cases() -> None:
    document = run([*TINY, "--ops", "save,pop", "--backend", "memory"])
    assert [case["name"] for case in document["cases"]] == ["memory.save", "memory.pop"]
    assert [target["case"] for target in document["targets"]] == ["memory.save"]


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
