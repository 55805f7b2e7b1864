"""A process whose pbuffer is older than the database's schema stops writing (revision 0003 and every later
revision that changes what writers do), on sqlite, PostgreSQL and MariaDB.

Before: a pbuffer 0.1.0 process kept saving and popping after another process upgraded the database to 0002:
``stats().pending`` said 10 while 14 rows existed, and it popped a message a new relay had claimed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fixtures.revisions.client_0001 import Client0001
from migration_support import SYNTHETIC_REVISION, use_scripts, writer_change_scripts
from pbuffer.backends import versioning
from pbuffer.backends.errors import is_missing_table

import pbuffer
from pbuffer import BackendError, Relay, SchemaChangedError
from pbuffer.ids import new_id
from pbuffer.relay.transport import MockTransport


def _dbapi_error(url: str) -> type[BaseException]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    error: type[BaseException] = engine.dialect.loaded_dbapi.Error
    engine.dispose()
    return error


@pytest.fixture
def old_client_url(sql_store_url: str) -> Iterator[tuple[str, Client0001]]:
    """A database at revision 0001 with a pbuffer 0.1.0 process attached that has saved 8 messages and popped 1."""
    assert pbuffer.upgrade(sql_store_url, "0001") == "0001"
    client = Client0001(sql_store_url)
    # More than psycopg's prepare threshold (5): the old process's statements are server-side prepared by now.
    for number in range(8):
        client.save(f"old {number}".encode(), subject="orders.created")
    assert client.pop() == b"old 0"
    assert client.count() == 7
    try:
        yield sql_store_url, client
    finally:
        client.close()


def test_an_older_process_stops_writing_once_the_database_is_upgraded(
        old_client_url: tuple[str, Client0001]) -> None:
    url, old = old_client_url
    error = _dbapi_error(url)
    assert pbuffer.upgrade(url) == versioning.head_revision()
    # Every statement of the old process fails loudly now, whatever it was doing: save, pop, even a count.
    for call in (lambda: old.save(b"late", subject="orders.created"), old.pop, old.count):
        with pytest.raises(error) as raised:
            call()
        assert is_missing_table(raised.value), raised.value
    with pbuffer.open(url) as buf:
        # The counters the upgrade made agree with the rows: nothing was written behind their back.
        assert len(buf) == 7 and buf.stats().pending == 7
        assert [m.payload for m in buf.get_all()] == [f"old {n}".encode() for n in range(1, 8)]
        # A new relay claims the head of the queue; the old process can no longer take it from under the claim.
        claimed = buf.claim(3, owner=new_id(), lease=60)
        assert [m.payload for m in claimed] == [b"old 1", b"old 2", b"old 3"]
        with pytest.raises(error):
            old.pop()
        assert len(buf) == 7 and buf.stats().pending == 7


def test_a_running_buffer_stops_when_another_process_moves_the_schema_on(sql_store_url: str,
                                                                         tmp_path: Path) -> None:
    """The same promise one release later: this pbuffer, open at its head, meets a newer revision that changes
    what writers do (a synthetic 0099 that renames the writers' tables, as a real one would)."""
    real = versioning.SCRIPT_LOCATION
    with pbuffer.open(sql_store_url) as buf:
        kept = buf.save(b"kept", subject="a")
        newer = writer_change_scripts(tmp_path)
        use_scripts(newer)
        try:
            assert pbuffer.upgrade(sql_store_url) == SYNTHETIC_REVISION  # another process, a newer pbuffer
        finally:
            use_scripts(real)
        calls = {
            "save": lambda: buf.save(b"lost?", subject="a"),
            "save_many": lambda: buf.save_many([b"x", b"y"], subject="a"),
            "pop": buf.pop,
            "get": buf.get,
            "claim": lambda: buf.claim(10, owner=new_id(), lease=30),
            "delete": lambda: buf.delete(kept.id),
            "stats": buf.stats,
        }
        for name, call in calls.items():
            with pytest.raises(SchemaChangedError, match=f"now at revision {SYNTHETIC_REVISION}"):
                call()
            # Asked twice: the buffer never falls back to writing the old way.
            with pytest.raises(SchemaChangedError):
                call()
            assert name
    # Nothing was written the old way: the newer revision's tables hold exactly the one message saved before.
    engine = sa.create_engine(sql_store_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT payload FROM pbuffer_messages_{SYNTHETIC_REVISION}").fetchall()
    engine.dispose()
    assert [bytes(row[0]) for row in rows] == [b"kept"]


def test_a_downgrade_stops_the_newer_process_too(sql_store_url: str) -> None:
    with pbuffer.open(sql_store_url) as buf:
        kept = buf.save(b"kept", subject="a")
        assert pbuffer.downgrade(sql_store_url, "0002") == "0002"
        with pytest.raises(SchemaChangedError, match="now at revision 0002") as raised:
            buf.save(b"lost?", subject="a")
        assert "Nothing was written" in str(raised.value)
    assert pbuffer.upgrade(sql_store_url) == versioning.head_revision()
    with pbuffer.open(sql_store_url) as buf:
        assert [m.id for m in buf.get_all()] == [kept.id]


def test_a_relay_stops_with_the_error_instead_of_retrying(sql_store_url: str) -> None:
    with pbuffer.open(sql_store_url) as buf:
        buf.save_many([b"1", b"2"], subject="a")
        assert pbuffer.downgrade(sql_store_url, "0002") == "0002"
        relay = Relay(buf, MockTransport(lambda message: pytest.fail("nothing may be published")))
        with pytest.raises(SchemaChangedError):
            asyncio.run(relay.drain())


def test_a_table_dropped_by_hand_is_not_called_a_migration(sql_store_url: str) -> None:
    from pbuffer.backends.tables import MESSAGES

    with pbuffer.open(sql_store_url) as buf:
        buf.save(b"x", subject="a")
        engine = sa.create_engine(sql_store_url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {MESSAGES}")
        engine.dispose()
        with pytest.raises(BackendError, match="something else dropped it") as raised:
            buf.save(b"y", subject="a")
        assert not isinstance(raised.value, SchemaChangedError)


def _rename_by_hand(url: str, names: tuple[str, ...], old_suffix: str, new_suffix: str) -> None:
    """What a MariaDB upgrade stopped right after its RENAME TABLE leaves: the tables under the new revision's names,
    the version row still at the old one."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f"ALTER TABLE pbuffer_{name}{old_suffix} RENAME TO pbuffer_{name}{new_suffix}")
    engine.dispose()


def test_an_upgrade_stopped_after_its_rename_is_finished_by_running_it_again(server_store_url: str) -> None:
    """MariaDB commits each DDL statement as it runs and alembic writes the version row last: a 0003 stopped in
    between leaves the new names at revision 0002 (one RENAME TABLE renames all three, so never some of them).
    PostgreSQL never gets there (its DDL is transactional) but runs the same migration; a sqlite file in that state
    would be refused at open as holding objects pbuffer did not make."""
    assert pbuffer.upgrade(server_store_url, "0002") == "0002"
    old = Client0001(server_store_url)  # 0002's tables still take 0.1.0's rows
    try:
        old.save(b"before", subject="a")
    finally:
        old.close()
    _rename_by_hand(server_store_url, ("messages", "dead_letters", "counters"), "", "_0003")
    assert pbuffer.current(server_store_url) == "0002"
    assert pbuffer.upgrade(server_store_url) == versioning.head_revision()
    with pbuffer.open(server_store_url) as buf:
        assert [m.payload for m in buf.get_all()] == [b"before"]


def test_a_0004_upgrade_stopped_after_its_rename_is_finished_by_running_it_again(server_store_url: str) -> None:
    """As above for revision 0004 (MariaDB: its RENAME TABLE, then the counters' new column): stopped between the
    two, the tables carry the new names at revision 0003 without the column; running it again adds the column and
    the deleted totals count from there."""
    with pbuffer.open(server_store_url, auto_upgrade=True) as buf:
        buf.save(b"before", subject="a")
        buf.save(b"gone", subject="a")
        assert buf.pop() is not None and buf.stats().deleted == 1
    assert pbuffer.downgrade(server_store_url, "0003") == "0003"
    _rename_by_hand(server_store_url, ("messages", "dead_letters", "counters", "counted"), "_0003", "_0004")
    assert pbuffer.current(server_store_url) == "0003"
    assert pbuffer.upgrade(server_store_url) == versioning.head_revision()
    with pbuffer.open(server_store_url) as buf:
        (left,) = buf.get_all()  # pop() took the oldest
        assert left.payload == b"gone" and buf.stats().deleted == 0  # the downgrade dropped the old totals
        assert buf.delete(left.id) and buf.stats().deleted == 1


def test_a_0005_upgrade_stopped_after_its_rename_is_finished_by_running_it_again(server_store_url: str) -> None:
    """As above for revision 0005 (MariaDB: its RENAME TABLE, then the head's column): stopped between the two,
    the tables carry the new names at revision 0004 without ``head_to_seq``; running it again adds the column, and
    the messages and counts come through whole."""
    with pbuffer.open(server_store_url, auto_upgrade=True) as buf:
        buf.save_many([b"1", b"2", b"3"], subject="a")
        assert buf.pop() is not None
    assert pbuffer.downgrade(server_store_url, "0004") == "0004"
    _rename_by_hand(server_store_url, ("messages", "dead_letters", "counters", "counted"), "_0004", "_0005")
    assert pbuffer.current(server_store_url) == "0004"
    assert pbuffer.upgrade(server_store_url) == "0005"
    with pbuffer.open(server_store_url) as buf:
        assert [m.payload for m in buf.get_all()] == [b"2", b"3"]
        stats = buf.stats()
        assert (stats.pending, stats.deleted) == (2, 1)
