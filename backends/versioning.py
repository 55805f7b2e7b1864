"""Which schema revision a database is at, and moving it to the code's head (alembic, driven from code).

alembic keeps module-global state (``alembic.context``), so every call into it holds one process-wide lock.
"""

from __future__ import annotations

import shlex
import threading
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from .tables import VERSION_TABLE

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = [
    "ALEMBIC_LOCK", "TABLE_PREFIX", "alembic_config", "check_direction", "current_revision", "describe",
    "downgrade_connection", "head_revision", "is_pbuffer_table", "known_revisions", "model_differences", "resolve",
    "shape_problems", "sqlite_objects", "too_old", "upgrade_advice", "upgrade_connection",
]

ALEMBIC_LOCK = threading.RLock()
# The alembic environment ships inside the package as pbuffer.migrations (migrations/ in the repository).
SCRIPT_LOCATION = str(files("pbuffer.migrations"))
#: Every table pbuffer makes, now and in later revisions, starts with this; an application must not use it.
TABLE_PREFIX = "pbuffer_"


def is_pbuffer_table(name: str | None) -> bool:
    """Whether ``name`` is (or would be) one of pbuffer's tables, its version table included."""
    return bool(name and name.startswith(TABLE_PREFIX))


def alembic_config(connection: Connection | None = None) -> Config:
    """An alembic Config for pbuffer's migrations, built in code (no ini file, no logging setup)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this pbuffer knows."""
    head = _script().get_current_head()
    assert head is not None, "pbuffer ships at least one revision"
    return head


@cache
def known_revisions() -> tuple[str, ...]:
    """Every revision this pbuffer knows, oldest first."""
    return tuple(reversed([rev.revision for rev in _script().walk_revisions()]))


def sqlite_objects(revision: str) -> frozenset[tuple[str, str]]:
    """The (type, name) of every schema object a sqlite buffer holds at ``revision``."""
    script = _script().get_revision(revision)
    assert script is not None, revision
    module = script.module
    objects: frozenset[tuple[str, str]] = module.SQLITE_OBJECTS
    return objects


def describe(revision: str) -> str:
    """The first line of a revision's docstring."""
    script = _script().get_revision(revision)
    return (script.doc or "").strip().splitlines()[0] if script is not None and script.doc else ""


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the database, or ``None`` when it has no version table (or an empty one)."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    heads = context.get_current_heads()
    return heads[0] if heads else None


def resolve(target: str) -> str | None:
    """The revision ``target`` names (``"head"``, ``"base"`` -> ``None``, or a revision id).

    Raises :class:`~pbuffer.ConfigurationError` for a revision this pbuffer does not know.
    """
    if target == "head":
        return head_revision()
    if target == "base":
        return None
    if target not in known_revisions():
        from pbuffer.errors import ConfigurationError

        raise ConfigurationError(f"unknown schema revision {target!r}; known: {', '.join(known_revisions())}")
    return target


def check_direction(at: str | None, goal: str | None, *, upgrade: bool) -> None:
    """Refuse a move that goes the wrong way: an upgrade to an older revision (or to base), a downgrade to a newer one.

    alembic quietly does nothing for the first and fails untyped for the second; both are a caller's mistake.
    Raises :class:`~pbuffer.ConfigurationError`; ``at`` and ``goal`` are revisions this pbuffer knows, or ``None``.
    """
    from pbuffer.errors import ConfigurationError

    order: dict[str | None, int] = {None: -1}
    order.update((revision, index) for index, revision in enumerate(known_revisions()))
    if at not in order or goal not in order:
        return  # an unknown revision is refused elsewhere (resolve, revision_in)
    here, there = at or "base", goal or "base"
    if upgrade and goal is None:
        raise ConfigurationError(
            "cannot upgrade to revision base: base (no tables, no messages) is where a downgrade ends, never an "
            "upgrade's target (to drop the buffer: pbuffer db downgrade --revision base); nothing was changed")
    if upgrade and order[goal] < order[at]:
        raise ConfigurationError(
            f"cannot upgrade to revision {there}: the database is at revision {here}, and an upgrade never goes "
            f"back (to go back, downgrade: pbuffer db downgrade --revision {there}); nothing was changed")
    if not upgrade and order[goal] > order[at]:
        raise ConfigurationError(
            f"cannot downgrade to revision {there}: the database is at revision {here}, older than that (to move "
            f"forward, upgrade: pbuffer db upgrade --revision {there}); nothing was changed")


def upgrade_advice(display_url: str) -> str:
    """The command that upgrades the database at ``display_url`` (its password masked as ``***``)."""
    if ":***@" in display_url:
        # The masked URL cannot connect: the user has to give the real one.
        return ("`pbuffer db upgrade --url URL` with the database's real URL, password included (for example "
                "--url \"$PBUFFER_URL\"), or pbuffer.upgrade(url)")
    return f"`pbuffer db upgrade --url {shlex.quote(display_url)}` or pbuffer.upgrade(url)"


def too_old(display_url: str, revision: str, head: str) -> str:
    """The message of SchemaTooOldError for a database at ``revision`` when this pbuffer needs ``head``."""
    return (f"{display_url} is at schema revision {revision}, this pbuffer needs {head}: upgrade it with "
            f"{upgrade_advice(display_url)}")


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` on ``connection``, inside the caller's transaction."""
    with ALEMBIC_LOCK:
        # Checked again under the caller's schema lock: another process may have moved the schema meanwhile.
        check_direction(current_revision(connection), resolve(revision), upgrade=True)
        command.upgrade(alembic_config(connection), revision)


def downgrade_connection(connection: Connection, revision: str) -> None:
    """Run the migrations down to ``revision`` (or ``"base"``) on ``connection``, inside the caller's transaction."""
    with ALEMBIC_LOCK:
        check_direction(current_revision(connection), resolve(revision), upgrade=False)
        command.downgrade(alembic_config(connection), revision)


def model_differences(connection: Connection) -> list[Any]:
    """Differences between the database's pbuffer tables and the model at head (``[]`` when they agree).

    Only ``pbuffer_`` objects are compared: a server database may hold the application's tables too.
    """
    from alembic.autogenerate import compare_metadata

    from .tables import metadata

    def ours(_object: Any, name: str | None, type_: str, _reflected: bool, _compare_to: Any) -> bool:
        return type_ != "table" or is_pbuffer_table(name)

    context = MigrationContext.configure(connection, opts={
        "compare_type": True, "version_table": VERSION_TABLE, "include_object": ours})
    differences: list[Any] = compare_metadata(context, metadata)
    return differences


def shape_problems(connection: Connection) -> list[str]:
    """What would make pbuffer's statements fail on this database's tables at head: a table or column of the model
    that is missing, or a column pbuffer does not know that refuses rows without it (NOT NULL, no default).

    Column names only, read through the inspector: cheap enough for every open of a server database (types and
    indexes are :func:`model_differences`' job). sqlite files get the stricter check of their own at open.
    """
    import sqlalchemy as sa

    from .tables import metadata

    inspector = sa.inspect(connection)
    present = set(inspector.get_table_names())
    problems = []
    for table in metadata.sorted_tables:
        if table.name not in present:
            problems.append(f"table {table.name} is missing")
            continue
        found = {column["name"]: column for column in inspector.get_columns(table.name)}
        missing = sorted(set(table.columns.keys()) - set(found))
        if missing:
            problems.append(f"{table.name} lacks column(s) {', '.join(missing)}")
        blocking = sorted(name for name, column in found.items() if name not in table.columns
                          and not column.get("nullable", True) and column.get("default") is None
                          and column.get("autoincrement") is not True)
        if blocking:
            problems.append(f"{table.name} has column(s) {', '.join(blocking)} that pbuffer does not write and that "
                            "refuse rows without a value")
    return problems
