"""Many processes on one sqlite file: 8 producer processes x 2 threads x 5,000 saves while another process pops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.parametrize("serialize_writes", ["true", "false"], ids=["one-writer mode", "normal mode"])
def test_eight_processes_save_while_one_pops(tmp_path: Path, serialize_writes: str) -> None:
    url = f"sqlite:///{tmp_path}/b.db?serialize_writes={serialize_writes}"
    run = subprocess.run([sys.executable, str(TESTS / "multiprocess_stress.py"), url, "8", "5000"],
                         capture_output=True, text=True, timeout=600, check=False, cwd=TESTS)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["errors"] == 0, summary["first_errors"]  # no "database is locked" reaches a caller
    assert summary["total"] == summary["unique"] == summary["expected"] == 80_000  # none lost, none twice
    assert summary["ordered"], "a producer's messages came out of order"
    print(summary)


def test_one_writer_mode_follows_the_sqlite_version(tmp_path: Path) -> None:
    import sqlite3
    import stat

    from pbuffer.backends.sqlite_file import wal_reset_bug

    import pbuffer

    assert wal_reset_bug((3, 40, 1)) and wal_reset_bug((3, 51, 2)) and wal_reset_bug((3, 50, 6))
    assert not wal_reset_bug((3, 51, 3)) and not wal_reset_bug((3, 50, 7)) and not wal_reset_bug((3, 44, 6))
    assert wal_reset_bug((3, 45, 0)) and not wal_reset_bug((3, 6, 0))
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
        assert buf.serialize_writes is wal_reset_bug(sqlite3.sqlite_version_info)  # type: ignore[attr-defined]
        buf.save(b"x", subject="a")
    if wal_reset_bug(sqlite3.sqlite_version_info):
        assert stat.S_IMODE((tmp_path / "b.db.lock").stat().st_mode) == 0o600
