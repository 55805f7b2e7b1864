"""Bad input gets one clear typed error (issue 13): system subjects, C1 controls in headers, non-finite and
out-of-range numbers, unknown URL options, URL schemes, and the quick start doing what it says."""

from __future__ import annotations

import ast
import importlib.util
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backend_urls import POSTGRES, Backend
from click.testing import CliRunner

import pbuffer
from pbuffer import ConfigurationError, Outgoing, ValidationError
from pbuffer.cli import main as cli_main
from pbuffer.validation import check_headers, check_subject, check_subject_prefixes

README = Path(__file__).resolve().parent.parent / "README.md"
SYSTEM_SUBJECTS = ["$JS.API.STREAM.PURGE.ORDERS", "$JS.API.STREAM.DELETE.OTHER", "$KV.orders.k1", "$O.files.x",
                   "$SYS.REQ.SERVER.PING", "$JSC.R.x", "$", "$x", "_INBOX.abc.def"]


@pytest.fixture(params=["memory", "sqlite"])
def local_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh memory store or a real sqlite file: the backends with no server."""
    return "memory://hardening-" + tmp_path.name if request.param == "memory" else f"sqlite:///{tmp_path / 'b.db'}"


@pytest.fixture
def buf(local_url: str) -> Iterator[pbuffer.Buffer]:
    with pbuffer.open(local_url) as opened:
        yield opened


# ------------------------------------------------------------------------------------- 1. system subjects

@pytest.mark.parametrize("subject", SYSTEM_SUBJECTS)
def test_system_subjects_are_refused_by_save_and_save_many(buf: pbuffer.Buffer, subject: str) -> None:
    with pytest.raises(ValidationError, match="system subject"):
        buf.save(b"x", subject=subject)
    with pytest.raises(ValidationError, match="system subject"):
        buf.save_many([b"x"], subject=subject)
    with pytest.raises(ValidationError, match="system subject"):
        buf.save_many([Outgoing(b"ok", subject="orders.ok"), Outgoing(b"x", subject=subject)])
    with pytest.raises(ValidationError, match="system subject"):
        check_subject(subject)  # what `pbuffer send` checks before connecting
    assert len(buf) == 0


def test_a_system_subject_cannot_be_a_buffers_scope(local_url: str) -> None:
    with pytest.raises(ValidationError, match="system subject"):
        pbuffer.open(local_url, subject="$JS.API.STREAM.PURGE.ORDERS")
    with pytest.raises(ValidationError, match="system subject"):
        pbuffer.open(f"{local_url}?subject=_INBOX.x")


def test_allow_subject_prefixes_as_keyword_and_url_option(local_url: str) -> None:
    with pbuffer.open(local_url, allow_subject_prefixes=("$KV.orders.",)) as buf:
        assert buf.save(b"v", subject="$KV.orders.k1").subject == "$KV.orders.k1"
        with pytest.raises(ValidationError, match="system subject"):
            buf.save(b"v", subject="$KV.orders2.k1")  # whole tokens: not a string prefix
    with pbuffer.open(f"{local_url}?allow_subject_prefixes=$KV.orders.,$O.files") as buf:
        assert buf.allow_subject_prefixes == ("$KV.orders", "$O.files")
        buf.save_many([Outgoing(b"a", subject="$KV.orders.k2"), Outgoing(b"b", subject="$O.files.chunk.1")])
        with pytest.raises(ValidationError, match="system subject"):
            buf.save(b"x", subject="$JS.API.STREAM.DELETE.OTHER")
        assert [m.subject for m in buf.get_all()] == ["$KV.orders.k1", "$KV.orders.k2", "$O.files.chunk.1"]


def test_one_buffers_opt_in_does_not_leak_into_another(local_url: str) -> None:
    # check_subject remembers valid subjects; a system subject one buffer allows must not be remembered.
    with pbuffer.open(local_url, allow_subject_prefixes=["$KV.leak"]) as allowed, pbuffer.open("memory://") as other:
        allowed.save(b"v", subject="$KV.leak.k")
        with pytest.raises(ValidationError, match="system subject"):
            other.save(b"v", subject="$KV.leak.k")


@pytest.mark.parametrize("prefixes", [("$JS",), ("$JS.",), ("$JS.API",), ("$JS.API.STREAM.",),
                                      ("$JS.API.STREAM.PURGE.ORDERS",), ("$JS.ACK.",), ("$SYS",), ("$JSC.",),
                                      ("$KV.ok.", "$SYS.REQ.")])
def test_no_opt_in_reaches_the_server_api(local_url: str, prefixes: tuple[str, ...]) -> None:
    with pytest.raises(ConfigurationError, match="allow_subject_prefixes"):
        pbuffer.open(local_url, allow_subject_prefixes=prefixes)
    with pytest.raises(ConfigurationError, match="allow_subject_prefixes"):
        pbuffer.open(f"{local_url}?allow_subject_prefixes={','.join(prefixes)}")


def test_a_broad_prefix_is_matched_by_whole_tokens() -> None:
    # "$" is accepted but allows only subjects whose first token is "$": never every system subject.
    allowed = check_subject_prefixes(["$"])
    with pytest.raises(ValidationError, match="system subject"):
        check_subject("$JS.API.STREAM.PURGE.ORDERS", allowed)
    assert check_subject("$.x", allowed) == "$.x"


@pytest.mark.parametrize("prefixes", [("orders.",), ("$KV.*",), ("$KV..x",), ("",), ("$KV a",), (b"$KV.",), (1,),
                                      b"$KV.", 7])
def test_bad_opt_ins_are_refused(prefixes: Any) -> None:
    with pytest.raises(ConfigurationError, match="allow_subject_prefixes"):
        pbuffer.open("memory://", allow_subject_prefixes=prefixes)


def test_pbuffer_send_refuses_a_system_subject(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    result = CliRunner().invoke(cli_main, ["send", "$JS.API.STREAM.PURGE.ORDERS", "x", "--url", url,
                                           "--servers", "nats://127.0.0.1:1"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "system subject" in result.output
    assert not (tmp_path / "b.db").exists()  # refused before opening anything


# -------------------------------------------------------------------------------- 2. C1 controls in headers

@pytest.mark.parametrize("headers", [{"X-A": "a\x85b"}, {"X-A": "a\x80"}, {"X-A": "\x9fz"}, {"X\x85A": "v"},
                                     {"X-\x9b": "v"}])
def test_c1_controls_in_headers_are_refused(buf: pbuffer.Buffer, headers: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="header"):
        buf.save(b"x", subject="orders.created", headers=headers)
    with pytest.raises(ValidationError, match="header"):
        check_headers(headers)
    assert len(buf) == 0


def test_other_non_ascii_header_values_still_pass(buf: pbuffer.Buffer) -> None:
    saved = buf.save(b"x", subject="orders.created", headers={"X-A": "ünïcode ✓\tand a tab", "X-B": "x\xa0y"})
    assert dict(buf.get().headers) == dict(saved.headers)  # type: ignore[union-attr]


# ------------------------------------------------------------------------- 3. non-finite and huge numbers

BAD_OPTIONS: list[tuple[str, Any]] = [
    ("ttl", math.nan), ("ttl", math.inf), ("ttl", -math.inf), ("ttl", -1), ("ttl", 0), ("ttl", True), ("ttl", 1e10),
    ("block_timeout", math.nan), ("block_timeout", math.inf), ("block_timeout", -1.0), ("block_timeout", False),
    ("max_messages", 2**63), ("max_messages", 2**64), ("max_messages", -1), ("max_messages", True),
    ("max_bytes", 2**63), ("max_bytes", 0), ("max_bytes", 1.5), ("overflow", ["reject"]),
]


@pytest.mark.parametrize(("name", "value"), BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v in BAD_OPTIONS])
def test_bad_limits_are_configuration_errors(local_url: str, name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=name):
        pbuffer.open(local_url, **{name: value})


URL_VALUES = [("ttl", "nan"), ("ttl", "inf"), ("ttl", "-inf"), ("block_timeout", "nan"), ("block_timeout", "NaN"),
              ("max_messages", str(2**63)), ("max_bytes", str(2**70)), ("max_messages", "-3"), ("ttl", "1e400"),
              ("busy_timeout", "nan"), ("busy_timeout", "inf")]


@pytest.mark.parametrize(("name", "value"), URL_VALUES, ids=[f"{n}={v}" for n, v in URL_VALUES])
def test_bad_limits_in_urls_are_configuration_errors(local_url: str, name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        pbuffer.open(f"{local_url}?{name}={value}")


@pytest.mark.parametrize(("url", "name"), [
    ("postgresql+psycopg://postgres@127.0.0.1:5432/test?ttl=nan", "ttl"),
    ("mysql+pymysql://root@127.0.0.1:3306/test?block_timeout=nan", "block_timeout"),
    ("mysql+pymysql://root@127.0.0.1:3306/test?busy_timeout=inf", "busy_timeout"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/test?max_messages=9223372036854775808", "max_messages"),
])
def test_bad_limits_in_server_urls_are_refused_before_connecting(url: str, name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        pbuffer.open(url)


def test_largest_limits_are_accepted(local_url: str) -> None:
    with pbuffer.open(local_url, subject="a.b", max_messages=2**63 - 1, max_bytes=2**63 - 1, ttl=1e9,
                      block_timeout=1e9, overflow="block") as buf:
        buf.save(b"x")
        assert len(buf.get_all(2**63)) == 1  # a limit past any database's LIMIT reads everything
        assert buf.dead_letters(2**80) == []


def test_attempts_out_of_range_are_validation_errors(buf: pbuffer.Buffer) -> None:
    message = buf.save(b"x", subject="a.b")
    for attempts in (2**31, 2**63, 2**64, -1, True, 1.0, math.nan):
        with pytest.raises(ValidationError, match="attempts"):
            buf.mark_dead(message.id, "r", attempts=attempts)  # type: ignore[arg-type]
    assert buf.mark_dead(message.id, "r", attempts=2**31 - 1) is True
    assert buf.dead_letters()[0].attempts == 2**31 - 1


def test_attempts_and_limits_on_servers(server_store_url: str) -> None:
    # PostgreSQL raised a BackendError ("integer out of range") for attempts=2**31 and get_all(2**63).
    with pbuffer.open(server_store_url, subject="a.b") as buf:
        message = buf.save(b"x")
        with pytest.raises(ValidationError, match="attempts"):
            buf.mark_dead(message.id, "r", attempts=2**31)
        assert len(buf.get_all(2**63)) == 1
        assert buf.mark_dead(message.id, "r", attempts=2**31 - 1) is True
        assert buf.dead_letters(2**63)[0].attempts == 2**31 - 1


# --------------------------------------------------------------------------------- 4. unknown URL options

@pytest.mark.parametrize("query", ["max_message=2", "durabilty=power", "ttl=5&nonsense=1", "uri=true"])
def test_unknown_options_in_local_urls_are_refused(local_url: str, query: str) -> None:
    unknown = [part.split("=")[0] for part in query.split("&") if part.split("=")[0] not in ("ttl",)]
    with pytest.raises(ConfigurationError, match=re.escape(repr(unknown[0]))) as raised:
        pbuffer.open(f"{local_url}?{query}")
    assert "known options:" in str(raised.value) and "max_messages" in str(raised.value)


def test_a_typo_names_the_option_it_resembles(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="did you mean max_messages"):
        pbuffer.open(f"sqlite:///{tmp_path / 'b.db'}?max_message=2")
    assert not (tmp_path / "b.db").exists()


def test_an_unescaped_question_mark_in_a_sqlite_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="%3F"):
        pbuffer.open(f"sqlite:///{tmp_path / 'what?.db'}")
    assert list(tmp_path.iterdir()) == []
    with pbuffer.open(f"sqlite:///{tmp_path / 'what%3F.db'}") as buf:
        buf.save(b"x", subject="a.b")
    assert (tmp_path / "what?.db").exists()


def test_the_schema_api_refuses_unknown_options_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_message"):
        pbuffer.upgrade(f"sqlite:///{tmp_path / 'b.db'}?max_message=2")


def test_driver_parameters_still_reach_server_drivers(server_backend: Backend, server_store_url: str) -> None:
    parameter = {"postgresql": "sslmode=disable", "mysql": "charset=utf8mb4"}[server_backend.name]
    with pbuffer.open(f"{server_store_url}?{parameter}&max_messages=5", subject="a.b") as buf:
        assert buf.limits.max_messages == 5
        buf.save(b"x")
        assert len(buf) == 1


# ------------------------------------------------------------------------------------------ 5. URL schemes

@pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None, reason="MySQLdb is installed here")
@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_mysql_without_a_driver_names_pymysql(scheme: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"{scheme}+pymysql://")) as raised:
        pbuffer.open(f"{scheme}://root@127.0.0.1:3306/test")
    assert "pbuffer[mysql]" in str(raised.value)


def test_postgres_scheme_opens_postgresql() -> None:
    url = POSTGRES.empty()
    assert url.startswith("postgresql+psycopg://")
    for alias in (url.replace("postgresql+psycopg://", "postgres://", 1),
                  url.replace("postgresql+psycopg://", "postgres+psycopg://", 1)):
        with pbuffer.open(f"{alias}?subject=a.b") as buf:
            buf.save(b"x")
            assert buf.pop().payload == b"x"  # type: ignore[union-attr]


# -------------------------------------------------------------------------------------------- 6. quick start

def test_quickstart_program_deletes_what_it_means_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from pbuffer.cli import quickstart

    monkeypatch.setenv("PBUFFER_URL", f"sqlite:///{tmp_path / 'q.db'}")
    assert quickstart.main() == 0
    out = capsys.readouterr().out
    assert out.count("delete() returned True") == 2 and "returned False" not in out
    assert out.rstrip().endswith("pending now: 0")


def _readme_quick_start() -> str:
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_quick_start_deletes_a_message_that_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run the README's first example with every `buf.delete(...)` statement turned into an assertion: a delete of
    # a message the example already popped returns False, which would teach the wrong thing.
    tree = ast.parse(_readme_quick_start())
    deletes = 0

    class AssertDeletes(ast.NodeTransformer):
        def visit_Expr(self, node: ast.Expr) -> ast.AST:
            nonlocal deletes
            call = node.value
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "delete":
                deletes += 1
                return ast.copy_location(ast.Assert(test=call, msg=None), node)
            return node

    tree = ast.fix_missing_locations(AssertDeletes().visit(tree))
    assert deletes, "the README quick start no longer shows delete()"
    monkeypatch.setenv("PBUFFER_URL", f"sqlite:///{tmp_path / 'readme.db'}")
    exec(compile(tree, "README.md quick start", "exec"), {})
