"""The pbuffer command for scripts: --json puts one document on stdout and nothing else, errors stay on stderr with
the same exit status, the exit statuses are the documented ones, and -v/-q set how much is logged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from nats_support import add_stream
from pbuffer.backends import versioning

import pbuffer
from pbuffer import ids
from pbuffer.cli import main
from pbuffer.examples.natsserver import NatsServer

HEAD = versioning.head_revision()
FIRST = versioning.known_revisions()[0]
PBUFFER = [sys.executable, "-m", "pbuffer.cli"]
DATA_COMMANDS = (["inspect"], ["watch"], ["drain"], ["send"], ["requeue"], ["purge"], ["db", "upgrade"],
                 ["db", "downgrade"], ["db", "current"], ["db", "history"], ["db", "check"], ["db", "verify"],
                 ["db", "quarantine"])


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'buf.db'}"


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def document(result: Result) -> Any:
    """stdout as exactly one JSON document (json.loads refuses anything before or after it)."""
    return json.loads(result.stdout)


def test_help_documents_exit_statuses_json_and_verbosity() -> None:
    result = run("--help")
    assert result.exit_code == 0
    out = result.stdout
    for expected in ("Exit status:", "0        done", "1        an error", "2        a usage error",
                     "3        drain ended with messages still pending", "128+N", "130 Ctrl-C, 143 SIGTERM",
                     "one JSON document on stdout", "-v, --verbose", "-q, --quiet", "--debug"):
        assert expected in out, expected
    for command in DATA_COMMANDS:
        assert "--json" in run(*command, "--help").stdout, command


def test_db_commands_as_json(url: str) -> None:
    assert document(run("db", "upgrade", "--url", url, "--json")) == {"revision": HEAD}
    assert document(run("db", "current", "--url", url, "--json")) == {"revision": HEAD}
    revisions = document(run("db", "history", "--url", url, "--json"))["revisions"]
    assert [r["id"] for r in revisions] == list(versioning.known_revisions())
    assert revisions[-1]["head"] is revisions[-1]["current"] is True
    assert not any(r["current"] for r in revisions[:-1]) and all(r["description"] for r in revisions)
    result = run("db", "check", "--url", url, "--json")
    assert result.exit_code == 0 and document(result) == {"ok": True, "differences": []}
    result = run("db", "downgrade", "--url", url, "--revision", FIRST, "--json", input="y\n")
    assert result.exit_code == 0 and document(result) == {"revision": FIRST}
    assert "Downgrade" in result.stderr  # the question goes to stderr: stdout holds the document only
    result = run("db", "check", "--url", url, "--json")
    checked = document(result)
    assert result.exit_code == 1 and checked["ok"] is False and checked["differences"]
    result = run("db", "downgrade", "--url", url, "--revision", "base", "--yes", "--json")
    assert document(result) == {"revision": "base"}
    assert document(run("db", "current", "--url", url, "--json")) == {"revision": None}


def test_requeue_and_purge_as_json(url: str) -> None:
    with pbuffer.open(url) as buf:
        a, _, c = buf.save_many([b"a", b"b", b"c"], subject="s")
        buf.mark_dead(a.id, "x")
        buf.mark_dead(c.id, "y")
    unknown = ids.new_id()
    result = run("requeue", "--url", url, a.id, unknown, "--json")
    assert result.exit_code == 1 and document(result) == {"requeued": 1, "asked": 2, "not_found": [unknown]}
    result = run("requeue", "--url", url, "--all", "--json")
    assert result.exit_code == 0 and document(result) == {"requeued": 1, "asked": 1, "not_found": []}
    result = run("purge", "--url", url, "--dead", "--json")
    assert result.exit_code == 0 and document(result) == {"deleted": 0}
    result = run("purge", "--url", url, "--json", input="n\n")
    assert result.exit_code == 1 and result.stdout == "" and "nothing was deleted" in result.stderr
    result = run("purge", "--url", url, "--json", input="y\n")
    assert result.exit_code == 0 and document(result) == {"deleted": 3}
    assert "for good?" in result.stderr


def test_quarantine_as_json(tmp_path: Path, url: str) -> None:
    pbuffer.open(url).close()
    moved = document(run("db", "quarantine", "--url", url, "--json"))["moved"]
    assert [Path(m["from"]).name for m in moved] == ["buf.db"]
    assert Path(moved[0]["to"]).exists() and not (tmp_path / "buf.db").exists()


@pytest.mark.parametrize("command", [["inspect"], ["watch"], ["requeue", "--all"], ["purge", "--yes"],
                                     ["db", "current"], ["db", "check"], ["db", "verify"], ["db", "history"]],
                         ids=" ".join)
def test_an_error_with_json_leaves_stdout_empty(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "missing.db"
    done = subprocess.run([*PBUFFER, *command, "--json", "--url", f"sqlite:///{missing}"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stdout
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"error: no buffer at {missing}"]
    assert not missing.exists()


# ----------------------------------------------------------------------------------------- drain and send

def test_send_and_drain_as_json(url: str, server: NatsServer) -> None:
    add_stream(server, "ORDERS", ["orders.>"])
    result = run("send", "orders.created", "hello", "--url", url, "-s", server.url, "--json")
    sent = document(result)
    assert result.exit_code == 0 and (sent["subject"], sent["size"]) == ("orders.created", 5)
    with pbuffer.open(url) as buf:
        assert len(buf) == 0
        buf.save_many([b"1", b"2", b"3"], subject="orders.created")
    done = subprocess.run([*PBUFFER, "drain", "--url", url, "-s", server.url, "--json"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary.pop("seconds") >= 0
    assert summary == {"published": 3, "duplicates": 0, "dead_lettered": 0, "retried": 0, "pending": 0,
                       "stopped_by": None, "exit_status": 0}


@pytest.mark.parametrize("as_json", [False, True])
def test_drain_that_ends_with_messages_pending_exits_3(url: str, server: NatsServer, as_json: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    add_stream(server, "ORDERS", ["orders.>"])
    with pbuffer.open(url) as buf:
        buf.save_many([b"1", b"2"], subject="orders.created")

    class ProducerRacesTheEnd(pbuffer.Relay):
        """A producer in another process saves just after the relay found the buffer empty."""

        async def drain(self) -> pbuffer.RelayStats:
            stats = await super().drain()
            with pbuffer.open(url) as other:
                other.save(b"late", subject="orders.created")
            return stats

    monkeypatch.setattr(pbuffer, "Relay", ProducerRacesTheEnd)
    result = run("drain", "--url", url, "-s", server.url, *(["--json"] if as_json else []))
    assert result.exit_code == 3
    assert "1 message(s) pending at the end" in result.stderr
    if as_json:
        summary = document(result)
        assert (summary["published"], summary["pending"], summary["exit_status"]) == (2, 1, 3)
    else:
        assert result.stdout.startswith("published 2, ")


# ---------------------------------------------------------------------------------------------------- -v/-q

def test_verbosity_flags(tmp_path: Path) -> None:
    # An unreachable server: pbuffer logs the refused connection at WARNING, its repeats at DEBUG, then errors.
    args = ["drain", "--url", f"sqlite:///{tmp_path}/b.db", "-s", "nats://127.0.0.1:1"]
    pbuffer.open(f"sqlite:///{tmp_path}/b.db").close()
    outputs = {}
    for flags in ([], ["-q"], ["-vv"]):
        done = subprocess.run([*PBUFFER, *flags, *args], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 1, done.stderr
        assert done.stderr.splitlines()[-1].startswith("error: cannot connect to NATS")
        outputs[" ".join(flags)] = done.stderr
    assert "WARNING pbuffer.jetstream" in outputs[""] and "DEBUG" not in outputs[""]
    assert outputs["-q"].splitlines() == [outputs["-q"].splitlines()[-1]]  # the error line only
    assert "DEBUG pbuffer.jetstream" in outputs["-vv"]
    assert "DEBUG asyncio" not in outputs["-vv"]  # pbuffer's own lines; --debug is every library's
    result = CliRunner().invoke(main, ["-q", "-v", "inspect"])
    assert result.exit_code == 2 and "-q cannot go with -v" in result.output
