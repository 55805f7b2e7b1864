"""The public surface: URL registry, options, entry points, the error tree, ids and validation."""

from __future__ import annotations

import builtins
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pbuffer.backends.memory import MemoryBuffer
from pbuffer.backends.sql import SQLBuffer

import pbuffer
from pbuffer import errors, ids
from pbuffer.registry import parse_options


def test_error_tree_is_exactly_as_documented() -> None:
    children = {
        "ConfigurationError", "ValidationError", "BufferFullError", "StorageFullError", "CorruptDatabaseError",
        "NotABufferDatabaseError", "SchemaTooOldError", "SchemaTooNewError", "PublishError", "BackendError",
    }
    for name in children:
        cls = getattr(pbuffer, name)
        assert cls.__bases__[0] is pbuffer.PBufferError, name
        assert getattr(errors, name) is cls
    assert issubclass(pbuffer.ValidationError, ValueError)
    assert not issubclass(pbuffer.PBufferError, builtins.BufferError)
    assert pbuffer.PBufferError.__bases__ == (Exception,)


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(pbuffer.ConfigurationError) as caught:
        pbuffer.open("redis://localhost")
    for scheme in ("memory", "sqlite", "postgresql", "mysql"):
        assert scheme in str(caught.value)
    with pytest.raises(pbuffer.ConfigurationError):
        pbuffer.open("no-scheme-at-all")
    with pytest.raises(pbuffer.ConfigurationError):
        pbuffer.open(42)  # type: ignore[arg-type]


def test_backend_classes_are_public_and_chosen_by_scheme(tmp_path: Path) -> None:
    with pbuffer.open("memory://") as buf:
        assert isinstance(buf, MemoryBuffer)
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
        assert isinstance(buf, SQLBuffer)
    with SQLBuffer(f"sqlite:///{tmp_path}/c.db", subject="a") as direct:
        assert direct.save(b"x").subject == "a"


def test_options_from_the_url_query(tmp_path: Path) -> None:
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db?durability=power&subject=orders.new&busy_timeout=2.5") as buf:
        assert isinstance(buf, SQLBuffer)
        assert (buf.durability, buf.subject, buf.busy_timeout) == ("power", "orders.new", 2.5)
    with pbuffer.open("memory://named?subject=a.b") as buf:
        assert buf.subject == "a.b"
    assert parse_options("postgresql+psycopg://u@h/db?sslmode=require&pool_size=3") == (
        "postgresql+psycopg://u@h/db?sslmode=require", {"pool_size": 3})
    with pytest.raises(pbuffer.ConfigurationError, match="busy_timeout"):
        pbuffer.open(f"sqlite:///{tmp_path}/b.db?busy_timeout=soon")
    with pytest.raises(pbuffer.ConfigurationError, match="both"):
        pbuffer.open("memory://?subject=a", subject="b")
    with pytest.raises(pbuffer.ConfigurationError, match="option"):
        pbuffer.open("memory://", durability="power")
    with pytest.raises(pbuffer.ConfigurationError, match="name"):
        pbuffer.open("memory://host/path")


def test_durability_belongs_to_the_server_for_server_databases() -> None:
    with pytest.raises(pbuffer.ConfigurationError, match="server"):
        pbuffer.open("postgresql+psycopg://nobody@127.0.0.1:1/none", durability="power")


def test_missing_driver_names_the_extra() -> None:
    with pytest.raises(pbuffer.ConfigurationError, match=r"pbuffer\[postgresql\]"):
        pbuffer.open("postgresql+psycopg2://u@127.0.0.1:1/db")


def test_unreachable_server_is_a_backend_error() -> None:
    with pytest.raises(pbuffer.BackendError):
        pbuffer.open("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")


def test_default_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PBUFFER_URL", "memory://from-env")
    with pbuffer.open() as buf:
        assert isinstance(buf, MemoryBuffer) and buf.name == "from-env"
    monkeypatch.delenv("PBUFFER_URL")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert pbuffer.default_url() == f"sqlite:///{tmp_path / 'data' / 'pbuffer' / 'buffer.db'}"
    with pbuffer.open() as buf:
        buf.save(b"x", subject="a")
    assert (tmp_path / "data" / "pbuffer" / "buffer.db").exists()


def test_memory_never_imports_sqlalchemy() -> None:
    code = ("import sys, pbuffer; b = pbuffer.open('memory://'); b.save(b'x', subject='a'); b.pop(); "
            "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_third_party_backend_registers_through_an_entry_point(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "toy_backend.py").write_text(textwrap.dedent("""
        from pbuffer.backends.memory import MemoryBuffer

        class ToyBuffer(MemoryBuffer):
            schemes = ("toy",)

            @classmethod
            def from_url(cls, url, **options):
                return cls(url.removeprefix("toy://") or None, **options)
    """))
    dist = tmp_path / "toy_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pbuffer.backends]\ntoy = toy_backend:ToyBuffer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "toy" in pbuffer.known_schemes()
    with pbuffer.open("toy://shared?subject=t.x") as buf:
        assert type(buf).__name__ == "ToyBuffer"
        assert buf.save(b"hi").subject == "t.x"
        assert len(buf) == 1


def test_a_plug_in_cannot_take_over_a_built_in_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The built-in classes declare their schemes (Buffer.schemes); a plug-in entry point under the same name is
    # never the one that opens them.
    (tmp_path / "hijack_backend.py").write_text("from pbuffer.backends.memory import MemoryBuffer\n\n"
                                                 "class Hijack(MemoryBuffer):\n    pass\n")
    dist = tmp_path / "hijack_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hijack-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pbuffer.backends]\nsqlite = hijack_backend:Hijack\n"
                                           "memory = hijack_backend:Hijack\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "sqlite" in pbuffer.registry._plugins()  # the plug-in is installed...
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
        assert type(buf).__name__ == "SQLBuffer"  # ...and the built-in class still opens its scheme
    with pbuffer.open("memory://") as buf:
        assert type(buf).__name__ == "MemoryBuffer"
    assert pbuffer.known_schemes().count("sqlite") == 1


def test_entry_point_that_is_not_a_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "not_a_backend.py").write_text("class Thing:\n    pass\n")
    dist = tmp_path / "not_a_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: not-a-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pbuffer.backends]\nthing = not_a_backend:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(pbuffer.ConfigurationError, match=r"not a pbuffer\.Buffer"):
        pbuffer.open("thing://")


def test_ids_are_uuid7_time_sortable_and_round_trip() -> None:
    made = ids.new_ids(5000)
    assert made == sorted(made) and len(set(made)) == 5000
    for message_id in made[:10]:
        assert message_id[14] == "7" and message_id[19] in "89ab"
        assert ids.from_bytes(ids.to_bytes(message_id)) == message_id
    import time

    assert abs(ids.id_timestamp_ms(ids.new_id()) - time.time() * 1000) < 5000


def test_ids_differ_across_forked_processes() -> None:
    code = textwrap.dedent("""
        import os, sys
        from pbuffer import ids
        ids.new_id()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, ids.new_id().encode()); os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(r, 64).decode()
        parent = ids.new_id()
        assert child != parent and child[19:] != parent[19:], (child, parent)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version() -> None:
    import importlib.metadata

    assert pbuffer.__version__ == importlib.metadata.version("pbuffer")
