"""Schema migrations: checked at every open, upgraded safely with data in it, on every SQL backend."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from migration_support import SYNTHETIC_REVISION, synthetic_scripts, use_scripts
from pbuffer.backends import versioning

import pbuffer
from pbuffer import ConfigurationError, SchemaTooNewError, SchemaTooOldError

# The newest real revision: the synthetic one is built on top of it.
REAL_HEAD = versioning.head_revision()

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures" / "revisions"


@pytest.fixture
def synthetic(tmp_path: Path) -> Iterator[Path]:
    """pbuffer with a (test-only) revision 0099 on top of the real ones."""
    original = versioning.SCRIPT_LOCATION
    location = synthetic_scripts(tmp_path)
    use_scripts(location)
    yield location
    use_scripts(original)


def revision_of(url: str) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = [row[0] for row in conn.exec_driver_sql("SELECT version_num FROM pbuffer_alembic_version")]
    engine.dispose()
    return rows


def fill(url: str) -> tuple[list[str], list[str]]:
    """Pending and dead message ids, saved with the current head."""
    with pbuffer.open(url) as buf:
        saved = buf.save_many([b"one", bytes(range(256)), b"three", b"four"], subject="a.b", headers={"H": "v"})
        buf.save(b"other", subject="c.d")
        buf.mark_dead(saved[1].id, "rejected", attempts=4)
        return [m.id for m in buf.get_all()], [d.message.id for d in buf.dead_letters()]


# ------------------------------------------------------------------------------------------- frozen fixtures

def test_every_revision_has_a_frozen_fixture() -> None:
    from fixtures.revisions.make_fixture import WRITERS

    for revision in versioning.known_revisions():
        assert (FIXTURES / f"{revision}.db").exists(), f"revision {revision} has no frozen fixture: run " \
            f"tests/fixtures/revisions/make_fixture.py {revision} (after adding its writer)"
        assert (FIXTURES / f"{revision}.json").exists()
        assert revision in WRITERS


@pytest.mark.parametrize("revision", versioning.known_revisions())
def test_frozen_fixture_opens_at_head_with_every_message(revision: str, tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / f"{revision}.db", path)
    expected = json.loads((FIXTURES / f"{revision}.json").read_text())
    pending = [e for e in expected if e["state"] == "pending"]
    dead = [e for e in expected if e["state"] == "dead"]
    with pbuffer.open(f"sqlite:///{path}") as buf:
        assert pbuffer.current(f"sqlite:///{path}") == versioning.head_revision()
        assert [(m.id, m.subject, m.payload.hex(), dict(m.headers), m.created_us) for m in buf.get_all()] == [
            (e["id"], e["subject"], e["payload"], e["headers"], e["created_us"]) for e in pending]
        assert [(d.message.id, d.message.payload.hex(), d.reason, d.attempts) for d in buf.dead_letters()] == [
            (e["id"], e["payload"], e["reason"], e["attempts"]) for e in dead]
        stats = buf.stats()
        assert (stats.pending, stats.pending_bytes, stats.dead, stats.dead_bytes) == (
            len(pending), sum(len(e["payload"]) // 2 for e in pending), len(dead),
            sum(len(e["payload"]) // 2 for e in dead))
        assert [m.id for m in iter(buf.pop, None)] == [e["id"] for e in pending]
        assert buf.stats().pending == 0 and buf.stats().pending_bytes == 0


def test_frozen_fixture_upgrades_through_a_new_revision(synthetic: Path, tmp_path: Path) -> None:
    head_before = versioning.known_revisions()[-2]
    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / f"{head_before}.db", path)
    expected = json.loads((FIXTURES / f"{head_before}.json").read_text())
    with pbuffer.open(f"sqlite:///{path}") as buf:
        assert [m.id for m in buf.get_all()] == [e["id"] for e in expected if e["state"] == "pending"]
        assert [d.message.id for d in buf.dead_letters()] == [e["id"] for e in expected if e["state"] == "dead"]
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT count(*) FROM pbuffer_messages_0005 WHERE synthetic = 1").fetchone()[0] == len(
            buf.get_all())
        conn.close()
    assert revision_of(f"sqlite:///{path}") == [SYNTHETIC_REVISION]
    assert not list(tmp_path.glob("old.db.backup-*")), "the backup is dropped once the upgrade committed"


# ----------------------------------------------------------------------------------------- sqlite upgrades

def test_failed_upgrade_keeps_the_old_revision_and_the_backup(synthetic: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    # Made at the real head, before the synthetic revision is visible.
    use_scripts(_real_scripts())
    original_head = versioning.head_revision()
    pending, dead = fill(url)
    use_scripts(synthetic)
    monkeypatch.setenv("PBUFFER_TEST_MIGRATION_FAIL", "1")
    with pytest.raises(Exception, match="synthetic migration failure"):
        pbuffer.open(url)
    assert revision_of(url) == [original_head]
    (backup,) = tmp_path.glob(f"b.db.backup-{original_head}-*")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    with sqlite3.connect(backup) as copy:
        assert copy.execute("SELECT count(*) FROM pbuffer_messages_0005").fetchone()[0] == len(pending)
    monkeypatch.delenv("PBUFFER_TEST_MIGRATION_FAIL")
    with pbuffer.open(url) as buf:
        assert [m.id for m in buf.get_all()] == pending
        assert [d.message.id for d in buf.dead_letters()] == dead
    assert revision_of(url) == [SYNTHETIC_REVISION]


def test_migration_killed_mid_way_leaves_the_old_revision(synthetic: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    use_scripts(_real_scripts())
    pending, dead = fill(url)
    use_scripts(synthetic)
    paused = tmp_path / "paused"
    env = {**os.environ, "PBUFFER_TEST_MIGRATION_PAUSE": str(paused)}
    process = subprocess.Popen([sys.executable, str(TESTS / "open_buffer_process.py"), url, str(synthetic),
                                "0", "{}"], cwd=TESTS, env=env)
    try:
        deadline = time.monotonic() + 60
        while not paused.exists():
            assert process.poll() is None, "the migrating process died early"
            assert time.monotonic() < deadline, "the migration never reached its pause"
            time.sleep(0.05)
        # The DDL and the data update ran; the transaction has not committed. Kill it there.
        (backup,) = tmp_path.glob(f"b.db.backup-{REAL_HEAD}-*")
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert revision_of(url) == [REAL_HEAD]
    conn = sqlite3.connect(tmp_path / "b.db")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(pbuffer_messages_0005)")]
    assert "synthetic" not in columns
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with pbuffer.open(url) as buf:  # the next open upgrades for real
        assert [m.id for m in buf.get_all()] == pending
        assert [d.message.id for d in buf.dead_letters()] == dead
    assert revision_of(url) == [SYNTHETIC_REVISION]


def _real_scripts() -> str:
    from pbuffer import migrations

    return str(Path(migrations.__file__).resolve().parent)


# ------------------------------------------------------------------------------- every SQL backend

def test_server_database_too_old_says_how_to_upgrade(server_store_url: str, synthetic: Path) -> None:
    use_scripts(_real_scripts())
    pending, dead = fill(server_store_url)
    use_scripts(synthetic)
    with pytest.raises(SchemaTooOldError, match="pbuffer db upgrade") as caught:
        pbuffer.open(server_store_url)
    assert "auto_upgrade=True" in str(caught.value)
    assert revision_of(server_store_url) == [REAL_HEAD]
    with pbuffer.open(server_store_url, auto_upgrade=True) as buf:
        assert [m.id for m in buf.get_all()] == pending
        assert [d.message.id for d in buf.dead_letters()] == dead
    assert revision_of(server_store_url) == [SYNTHETIC_REVISION]


def test_concurrent_openers_migrate_once(sql_store_url: str, synthetic: Path, tmp_path: Path) -> None:
    use_scripts(_real_scripts())
    pending, dead = fill(sql_store_url)
    use_scripts(synthetic)
    log = tmp_path / "migrations.log"
    env = {**os.environ, "PBUFFER_TEST_MIGRATION_LOG": str(log)}
    start_at = time.time() + 3
    processes = [
        subprocess.Popen([sys.executable, str(TESTS / "open_buffer_process.py"), sql_store_url, str(synthetic),
                          str(start_at), json.dumps({"auto_upgrade": True})], cwd=TESTS, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(5)
    ]
    results = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
        assert json.loads(out) == {"pending": len(pending), "dead": len(dead)}
    assert len(log.read_text().splitlines()) == 1, "exactly one process migrates"
    assert revision_of(sql_store_url) == [SYNTHETIC_REVISION]


def test_schema_api(sql_store_url: str) -> None:
    url = sql_store_url
    assert pbuffer.upgrade(url) == versioning.head_revision()
    assert pbuffer.current(url) == versioning.head_revision()
    assert pbuffer.check(url) == []
    revisions = pbuffer.history(url)
    assert [r.id for r in revisions] == list(versioning.known_revisions())
    assert revisions[-1].is_head and revisions[-1].is_current and revisions[0].description
    with pbuffer.open(url) as buf:
        buf.save(b"x", subject="a")
    assert pbuffer.downgrade(url, "base") == "base"
    assert pbuffer.current(url) is None
    assert pbuffer.check(url) != []
    assert pbuffer.upgrade(url, "head") == versioning.head_revision()
    with pbuffer.open(url) as buf:
        assert len(buf) == 0  # downgrading to base dropped the messages with the tables
    with pytest.raises(ConfigurationError, match="unknown schema revision"):
        pbuffer.upgrade(url, "7777")


def test_schema_api_refuses_what_is_not_ours(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no buffer"):
        pbuffer.current(f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()
    path = tmp_path / "new.db"
    pbuffer.open(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE pbuffer_alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNewError):
        pbuffer.upgrade(f"sqlite:///{path}")
    with pytest.raises(SchemaTooNewError):
        pbuffer.downgrade(f"sqlite:///{path}", "base")
    assert path.read_bytes() == before


def test_every_schema_revision_names_the_release_that_brings_it() -> None:
    """The README's schema table names the pbuffer version that first writes each revision, and a new revision
    comes with a new version: the newest revision's row names this pbuffer's version, nothing is "unreleased", and
    versions rise with revisions (so a version number tells which schema a release writes)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| ([^|\n]+?) \| (\d{4}) \|", readme, flags=re.M)
    versions = {revision: version for version, revision in rows}
    known = [revision.id for revision in pbuffer.history()]
    assert sorted(versions) == known, "every revision has one row in the README's schema table"
    assert versions[known[-1]] == pbuffer.__version__, "the newest revision comes with this version"
    numbers = [tuple(int(part) for part in versions[revision].split(".")) for revision in known]
    assert numbers == sorted(numbers)
