"""Schema moves go only the way they are named and report what the database says; looking never creates or
migrates; an application's own alembic leaves the buffer alone; an interrupted MariaDB upgrade can be resumed."""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from backend_urls import MYSQL_ADMIN_URL, POSTGRES_ADMIN_URL, missing_service
from pbuffer.backends import versioning
from pbuffer.backends.database import Database
from pbuffer.backends.tables import COUNTED, COUNTERS, DEAD_LETTERS, MESSAGES

import pbuffer
from pbuffer import ConfigurationError, SchemaTooOldError

HEAD = versioning.head_revision()
FIRST = versioning.known_revisions()[0]
PBUFFER = [sys.executable, "-m", "pbuffer.cli"]
PBUFFER_TABLES = {MESSAGES, DEAD_LETTERS, COUNTERS, COUNTED, "pbuffer_alembic_version"}


def revision_rows(url: str) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = [row[0] for row in conn.exec_driver_sql("SELECT version_num FROM pbuffer_alembic_version")]
    engine.dispose()
    return rows


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    return names


def files_in(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def main_file_and_backups(path: Path) -> tuple[bytes, list[str]]:
    """The database file's bytes and the backups beside it (a sqlite reader may leave an empty -wal and -shm)."""
    return path.read_bytes(), sorted(p.name for p in path.parent.glob(f"{path.name}.backup-*"))


@pytest.fixture
def fresh_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of its own on a server (name made and dropped by the test): nothing in it at all."""
    admin_url = request.param
    name = f"pbuffer_hardening_{uuid.uuid4().hex[:8]}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as exc:
        missing_service(f"{admin_url.split('+')[0]} is not available: {exc}")
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        admin.dispose()


SERVERS = pytest.mark.parametrize("fresh_database", [POSTGRES_ADMIN_URL, MYSQL_ADMIN_URL], indirect=True,
                                  ids=["postgresql", "mysql"])


# --------------------------------------------------------------------------- 1. moves go the way they are named

def test_upgrade_to_an_older_revision_is_refused_before_any_backup(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        saved = buf.save(b"kept", subject="a")
    before = main_file_and_backups(tmp_path / "b.db")
    for target in (FIRST, "base"):
        with pytest.raises(ConfigurationError, match=f"cannot upgrade to revision {target}"):
            pbuffer.upgrade(url, target)
    assert main_file_and_backups(tmp_path / "b.db") == before, "no backup, no change"
    assert pbuffer.current(url) == HEAD
    with pbuffer.open(url) as buf:
        assert [m.id for m in buf.get_all()] == [saved.id]


def test_downgrade_to_a_newer_revision_is_refused_before_any_backup(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    pbuffer.open(url).close()
    assert pbuffer.downgrade(url, FIRST) == FIRST
    before = main_file_and_backups(tmp_path / "b.db")
    for target in (HEAD, "head"):
        with pytest.raises(ConfigurationError, match=f"cannot downgrade to revision {HEAD}"):
            pbuffer.downgrade(url, target)
    assert main_file_and_backups(tmp_path / "b.db") == before, "no backup, no change"
    assert pbuffer.current(url) == FIRST


def test_moves_on_every_sql_backend_report_the_revision_reached(sql_store_url: str) -> None:
    url = sql_store_url
    assert pbuffer.upgrade(url, FIRST) == FIRST
    assert pbuffer.upgrade(url, FIRST) == FIRST  # already there: nothing to do
    with pytest.raises(ConfigurationError, match="cannot downgrade"):
        pbuffer.downgrade(url, HEAD)
    assert pbuffer.upgrade(url) == HEAD
    with pbuffer.open(url) as buf:
        buf.save(b"kept", subject="a")
    with pytest.raises(ConfigurationError, match="never goes back"):
        pbuffer.upgrade(url, FIRST)
    with pytest.raises(ConfigurationError, match="base"):
        pbuffer.upgrade(url, "base")
    assert revision_rows(url) == [HEAD]
    with pbuffer.open(url) as buf:
        assert len(buf) == 1
    assert pbuffer.downgrade(url, HEAD) == HEAD  # already there
    assert pbuffer.downgrade(url, "base") == "base"


def test_the_check_holds_under_the_schema_lock_too(sql_store_url: str) -> None:
    """Another process may move the schema between the first look and the migration: checked again there."""
    pbuffer.upgrade(sql_store_url)
    database = Database(sql_store_url)
    try:
        with pytest.raises(ConfigurationError, match="never goes back"), \
                database.schema_transaction("test") as conn:
            versioning.upgrade_connection(conn, FIRST)
    finally:
        database.dispose()
    assert revision_rows(sql_store_url) == [HEAD]


# ----------------------------------------------------------------------- 2. looking never changes anything

def test_current_and_check_leave_a_zero_byte_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    url = f"sqlite:///{path}"
    assert pbuffer.current(url) is None
    assert pbuffer.check(url) != []
    assert pbuffer.history(url)[-1].is_current is False
    assert files_in(tmp_path) == {"empty.db": b""}


def test_current_and_check_read_a_downgraded_file_without_writing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        buf.save(b"x", subject="a")
    pbuffer.downgrade(url, FIRST)
    before = files_in(tmp_path)
    assert pbuffer.current(url) == FIRST
    differences = pbuffer.check(url)
    assert differences[0].startswith(f"the database is at revision {FIRST}, not {HEAD}") and len(differences) > 1
    assert files_in(tmp_path) == before


def test_require_buffer_refuses_without_writing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(ConfigurationError, match="no buffer at"):
        pbuffer.schema.require_buffer(f"sqlite:///{missing}")
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(ConfigurationError, match="no buffer at"):
        pbuffer.schema.require_buffer(f"sqlite:///{empty}")
    old = tmp_path / "old.db"
    pbuffer.open(f"sqlite:///{old}").close()
    pbuffer.downgrade(f"sqlite:///{old}", FIRST)
    before = files_in(tmp_path)
    with pytest.raises(SchemaTooOldError, match="pbuffer db upgrade --url"):
        pbuffer.schema.require_buffer(f"sqlite:///{old}", where="pbuffer inspect")
    pbuffer.schema.require_buffer(f"sqlite:///{old}", upgradable=True)
    assert files_in(tmp_path) == before


@SERVERS
def test_looking_at_an_empty_server_database_creates_nothing(fresh_database: str) -> None:
    from click.testing import CliRunner

    from pbuffer.cli import main

    url = fresh_database
    for args in (["inspect"], ["db", "verify"], ["db", "check"], ["drain", "-s", "nats://127.0.0.1:1"],
                 ["requeue", "--all"], ["purge", "--yes"]):
        result = CliRunner().invoke(main, [*args, "--url", url])
        assert result.exit_code == 1, (args, result.output)
        if args[0] != "drain":  # drain reports the unreachable NATS server first
            assert "no buffer at" in result.output, (args, result.output)
    assert CliRunner().invoke(main, ["db", "current", "--url", url]).output.strip() == "base (empty)"
    assert table_names(url) == set(), "looking created tables"
    with pytest.raises(ConfigurationError, match="no buffer at"):
        pbuffer.schema.require_buffer(url)
    assert pbuffer.current(url) is None
    assert pbuffer.check(url) != []
    with pytest.raises(ConfigurationError, match="no buffer at"):
        pbuffer.schema.recovery.verify(url)  # the library function, not only the command
    if url.startswith("postgresql"):  # the alias spelling too: it was read by a second, alias-blind parser
        alias = url.replace("postgresql+psycopg://", "postgres://", 1)
        result = CliRunner().invoke(main, ["inspect", "--url", alias])
        assert result.exit_code == 1 and "no buffer at" in result.output, result.output
    assert table_names(url) == set()


@SERVERS
def test_looking_at_an_older_server_database_never_upgrades_it(fresh_database: str) -> None:
    from click.testing import CliRunner

    from pbuffer.cli import main

    url = fresh_database
    pbuffer.upgrade(url, FIRST)
    for args in (["inspect"], ["db", "verify"]):
        result = CliRunner().invoke(main, [*args, "--url", url])
        assert result.exit_code == 1, (args, result.output)
        assert f"at schema revision {FIRST}" in result.output and "pbuffer db upgrade --url" in result.output
    result = CliRunner().invoke(main, ["db", "check", "--url", url])
    assert result.exit_code == 1 and f"at revision {FIRST}, not {HEAD}" in result.output
    assert revision_rows(url) == [FIRST]


# ------------------------------------------------------------------- 3. an application's alembic, side by side

APP_ENV = '''
from alembic import context
import pbuffer
import sqlalchemy as sa

metadata = sa.MetaData()
sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text))

options = {"include_name": pbuffer.alembic_include_name} if context.config.attributes["filtered"] else {}
context.configure(connection=context.config.attributes["connection"], target_metadata=metadata, **options)
with context.begin_transaction():
    context.run_migrations()
'''


def _autogenerate(directory: Path, url: str, *, filtered: bool) -> str:
    """Run the application's ``alembic revision --autogenerate`` (Config built in code); returns the script."""
    import alembic
    from alembic import command
    from alembic.config import Config

    location = directory / ("filtered" if filtered else "unfiltered")
    (location / "versions").mkdir(parents=True)
    (location / "env.py").write_text(textwrap.dedent(APP_ENV))
    shutil.copy(Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako", location)
    config = Config()  # no alembic.ini
    config.set_main_option("script_location", str(location))
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            config.attributes.update(connection=conn, filtered=filtered)
            script = command.revision(config, message="app", autogenerate=True)
    finally:
        # The application's own version table, made by its env.py: the next test on this database must not see it.
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path).read_text()


def test_include_name_hook_is_alembics_signature() -> None:
    assert not pbuffer.alembic_include_name("pbuffer_messages", "table", {"schema_name": None})
    assert not pbuffer.alembic_include_name("pbuffer_alembic_version", "table", {"schema_name": None})
    assert pbuffer.alembic_include_name("orders", "table", {"schema_name": None})
    assert pbuffer.alembic_include_name("pbuffer_messages_idx", "index", {"table_name": "orders"})
    assert not pbuffer.alembic_include_object(sa.Table("pbuffer_counters", sa.MetaData()), "pbuffer_counters",
                                              "table", True, None)
    column = sa.Column("claim_owner", sa.LargeBinary)
    sa.Table("pbuffer_messages", sa.MetaData(), column)
    assert not pbuffer.alembic_include_object(column, "claim_owner", "column", True, None)
    assert pbuffer.alembic_include_object(sa.Table("orders", sa.MetaData()), "orders", "table", True, None)


def test_an_applications_autogenerate_leaves_the_buffer_alone(server_store_url: str, tmp_path: Path) -> None:
    with pbuffer.open(server_store_url) as buf:
        buf.save(b"kept", subject="a")
    unfiltered = _autogenerate(tmp_path, server_store_url, filtered=False)
    # Proof the test can fail: without the hook, autogenerate drops every pbuffer table.
    for table in PBUFFER_TABLES:
        assert f"op.drop_table('{table}')" in unfiltered, table
    filtered = _autogenerate(tmp_path, server_store_url, filtered=True)
    assert "op.create_table('orders'" in filtered
    assert "pbuffer_" not in filtered
    with pbuffer.open(server_store_url) as buf:
        assert len(buf) == 1
    assert "orders" not in table_names(server_store_url), "autogenerate only writes a script"


# ----------------------------------------------------------------- 4. an interrupted MariaDB upgrade, resumed

HALF_APPLIED = {
    "one column": ["ALTER TABLE pbuffer_messages ADD COLUMN claim_owner BINARY(16) NULL"],
    "columns and table": [
        "ALTER TABLE pbuffer_messages ADD COLUMN claim_owner BINARY(16) NULL",
        "ALTER TABLE pbuffer_messages ADD COLUMN claim_until_us BIGINT NULL",
        "CREATE TABLE pbuffer_counters (subject VARCHAR(512) COLLATE utf8mb4_bin NOT NULL, shard INTEGER NOT NULL, "
        "pending BIGINT NOT NULL, pending_bytes BIGINT NOT NULL, dead BIGINT NOT NULL, dead_bytes BIGINT NOT NULL, "
        "dropped BIGINT NOT NULL, expired BIGINT NOT NULL, PRIMARY KEY (subject, shard)) ENGINE=InnoDB "
        "DEFAULT CHARSET=utf8mb4",
    ],
}


@pytest.mark.parametrize("applied", list(HALF_APPLIED))
@pytest.mark.parametrize("fresh_database", [MYSQL_ADMIN_URL], indirect=True, ids=["mysql"])
def test_an_interrupted_mariadb_upgrade_is_finished_by_running_it_again(fresh_database: str, applied: str) -> None:
    from pbuffer.ids import new_id, to_bytes
    from pbuffer.message import checksum, encode_headers

    url = fresh_database
    assert pbuffer.upgrade(url, "0001") == "0001"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    ids = []
    with engine.begin() as conn:  # rows as revision 0001 wrote them
        for number, payload in enumerate([b"one", b"two!", b"three"]):
            message_id = new_id()
            headers = encode_headers({})
            conn.execute(sa.text(
                "INSERT INTO pbuffer_messages (id, subject, payload, headers, created_us, checksum) "
                "VALUES (:id, 'a.b', :payload, :headers, :created, :crc)"),
                {"id": to_bytes(message_id), "payload": payload, "headers": headers, "created": number,
                 "crc": checksum(message_id, "a.b", headers, number, payload)})
            ids.append(message_id)
    with engine.begin() as conn:  # what a run of 0002 stopped half-way left behind
        for statement in HALF_APPLIED[applied]:
            conn.exec_driver_sql(statement)
    engine.dispose()
    assert pbuffer.current(url) == "0001"
    assert pbuffer.check(url)[0].startswith("the database is at revision 0001")
    assert pbuffer.upgrade(url) == HEAD
    assert pbuffer.check(url) == []
    with pbuffer.open(url) as buf:
        stats = buf.stats()
        assert (stats.pending, stats.pending_bytes) == (3, 12)
        assert [m.id for m in iter(buf.pop, None)] == ids


# ------------------------------------------------------------------------------- 5. advice that works as given

def test_schema_too_old_advice_is_a_command_that_works(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old buffer.db"  # a space: the advice must quote the URL
    pbuffer.open(url).close()
    pbuffer.downgrade(url, FIRST)
    with pytest.raises(SchemaTooOldError) as caught:
        pbuffer.open(url, auto_upgrade=False)
    command = str(caught.value).split("`")[1]
    assert command.startswith("pbuffer db upgrade --url ")
    run = subprocess.run([*PBUFFER, *shlex.split(command)[1:]], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"at revision {HEAD}"
    assert pbuffer.current(url) == HEAD


def test_schema_too_old_advice_with_a_password_says_to_pass_the_real_url(tmp_path: Path) -> None:
    message = versioning.too_old("postgresql+psycopg://app:***@db.example/app", FIRST, HEAD)
    assert "***" not in message.split(": upgrade it with ", 1)[1]
    assert '--url "$PBUFFER_URL"' in message and "real URL" in message


@pytest.mark.parametrize("fresh_database", [POSTGRES_ADMIN_URL], indirect=True, ids=["postgresql"])
def test_server_schema_too_old_advice_runs_with_the_real_url(fresh_database: str) -> None:
    real = sa.make_url(fresh_database).set(password="not-needed-under-trust")
    url = real.render_as_string(hide_password=False)
    pbuffer.upgrade(url, FIRST)
    with pytest.raises(SchemaTooOldError) as caught:
        pbuffer.open(url)
    message = str(caught.value)
    assert "not-needed-under-trust" not in message
    command = message.split("(for example ")[1].split(")", maxsplit=1)[0]
    run = subprocess.run(f"{shlex.join(PBUFFER)} db upgrade {command}", shell=True, capture_output=True,
                         text=True, timeout=120, check=False, env={**os.environ, "PBUFFER_URL": url})
    assert run.returncode == 0, run.stderr
    assert pbuffer.current(url) == HEAD


def test_sqlite_connections_made_by_the_schema_api_are_read_only(tmp_path: Path) -> None:
    """The read-only path really is read-only: a write through it fails (so a future change cannot slip one in)."""
    path = tmp_path / "b.db"
    pbuffer.open(f"sqlite:///{path}").close()
    database = Database(f"sqlite:///{path}")
    try:
        with pytest.raises(pbuffer.PBufferError), pbuffer.schema._reading(database, "test") as conn:
            conn.exec_driver_sql("CREATE TABLE sneaky (x)")
    finally:
        database.dispose()
    assert ("table", "sneaky") not in set(sqlite3.connect(path).execute("SELECT type, name FROM sqlite_master"))


@SERVERS
def test_tables_reshaped_by_something_else_are_refused_at_open(fresh_database: str) -> None:
    """A pbuffer_messages reshaped next to pbuffer's version table opened and failed at the first save
    (UndefinedColumn); the shape is now checked at open, and nothing is changed."""
    import sqlalchemy as sa

    url = fresh_database
    with pbuffer.open(url, auto_upgrade=True) as buf:
        buf.save(b"kept", subject="a.b")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    for reshape, undo, expected in (
        (f"ALTER TABLE {MESSAGES} RENAME COLUMN subject TO topic",
         f"ALTER TABLE {MESSAGES} RENAME COLUMN topic TO subject", r"lacks column\(s\) subject"),
        (f"ALTER TABLE {MESSAGES} ADD COLUMN tenant INTEGER NOT NULL DEFAULT 0",
         f"ALTER TABLE {MESSAGES} DROP COLUMN tenant", None),  # harmless: has a default
        (f"ALTER TABLE {DEAD_LETTERS} ADD COLUMN tenant INTEGER NOT NULL",
         f"ALTER TABLE {DEAD_LETTERS} DROP COLUMN tenant", "tenant"),
    ):
        with engine.begin() as conn:
            conn.exec_driver_sql(reshape)
        if expected is None:
            with pbuffer.open(url) as buf:
                assert len(buf) == 1
        else:
            with pytest.raises(pbuffer.NotABufferDatabaseError, match=expected):
                pbuffer.open(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(undo)
    with pbuffer.open(url) as buf:
        assert [m.payload for m in buf.get_all()] == [b"kept"]
    engine.dispose()
