"""What every ``pbuffer`` command shares: its options, the consoles, the exit statuses, opening a buffer, asking
for a confirmation, and turning a user's mistake into one line on stderr."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

import pbuffer

from ..buffer import Buffer
from ..errors import PBufferError
from ..registry import SQL_SCHEMES, scheme_of
from .terminal import escape, make_console

F = TypeVar("F", bound=Callable[..., Any])
console = make_console()
err_console = make_console(stderr=True)

#: The exit statuses every command keeps, as ``pbuffer --help`` prints them.
EXIT_STATUS = """\b
Exit status:
  0        done
  1        an error, a refused confirmation, or something found wrong
  2        a usage error (an unknown option, a bad value)
  3        drain ended with messages still pending (saved while it ran)
  128+N    drain stopped by signal N with messages left (130 Ctrl-C, 143 SIGTERM)

\b
--json (on every command that prints data): one JSON document on stdout, nothing else there;
errors stay one line on stderr, with the same exit status.
"""
#: Exit status of a drain that ended with messages pending (the echo client's "still in the buffer" too).
EXIT_PENDING = 3

URL = click.option("--url", envvar="PBUFFER_URL", default=None, metavar="URL",
                   help="Buffer URL [env PBUFFER_URL; default: buffer.db in your data directory].")
JSON = click.option("--json", "as_json", is_flag=True,
                    help="One JSON document on stdout, nothing else there (errors: one line on stderr).")
SERVERS = click.option("--servers", "-s", envvar="NATS_URL", default="nats://127.0.0.1:4222", show_default=True,
                       help="NATS server URL(s), comma-separated [env NATS_URL].")

#: Credentials and connection settings, as JetStreamTransport.connect takes them: the keyword argument a command
#: gets each one as, and its option. Named explicitly so that :func:`connection_settings` picks the same names.
CONNECTION_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "creds": ("--creds", {"type": click.Path(exists=True, dir_okay=False), "help": "NATS credentials file."}),
    "user": ("--user", {"help": "User name."}),
    "password": ("--password", {"help": "Password (prefer $NATS_PASSWORD)", "envvar": "NATS_PASSWORD"}),
    "token": ("--token", {"help": "Token (prefer $NATS_TOKEN)", "envvar": "NATS_TOKEN"}),
    "nkey_seed": ("--nkey-seed", {"type": click.Path(exists=True, dir_okay=False), "help": "NKEY seed file."}),
    "tls_ca": ("--tls-ca", {"type": click.Path(exists=True, dir_okay=False),
                            "help": "CA certificate to trust for TLS."}),
    "ping_interval": ("--ping-interval", {"type": float, "default": 20, "show_default": True,
                                          "help": "Seconds between pings."}),
}


def connection_options(fn: F) -> F:
    """The :data:`CONNECTION_OPTIONS`, in their order, on a command."""
    for name, (flag, settings) in reversed(CONNECTION_OPTIONS.items()):
        fn = click.option(flag, name, **settings)(fn)
    return fn


def connection_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The :data:`CONNECTION_OPTIONS` among a command's keyword arguments."""
    return {name: options[name] for name in CONNECTION_OPTIONS if name in options}


async def connect(servers: str, settings: dict[str, Any]) -> Any:
    """A JetStreamTransport to ``servers`` (comma-separated) with the :func:`connection_settings`."""
    from ..relay.jetstream import JetStreamTransport

    tls = None
    if settings.get("tls_ca"):
        import ssl

        tls = ssl.create_default_context(cafile=settings["tls_ca"])
    return await JetStreamTransport.connect(
        [s.strip() for s in servers.split(",") if s.strip()], creds=settings.get("creds"),
        user=settings.get("user"), password=settings.get("password"), token=settings.get("token"),
        nkeys_seed=settings.get("nkey_seed"), tls=tls, ping_interval=settings.get("ping_interval", 20))


def buffer_url(url: str | None) -> str:
    """The buffer a command works on: ``--url`` (or ``$PBUFFER_URL``), else the default buffer."""
    return url or pbuffer.default_url()


def open_existing(target: str, *, looking: str | None = None) -> Buffer:
    """Open a buffer that must already exist: a missing file or an empty database is refused, never created.

    ``target``: a :func:`buffer_url`. ``looking`` names a command that only looks: it never upgrades either (an older
    schema is refused with the command that upgrades it). Other commands upgrade as :func:`pbuffer.open` does.
    """
    from ..registry import parse_options
    from ..schema import require_buffer

    require_buffer(target, upgradable=looking is None, where=looking)
    if looking is not None and "auto_upgrade" not in parse_options(target)[1] and scheme_of(target) in SQL_SCHEMES:
        return pbuffer.open(target, auto_upgrade=False)  # the check above ran; this closes the gap after it
    return pbuffer.open(target)


def emit_json(data: Any) -> None:
    """The one JSON document a ``--json`` command prints on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def confirm(question: str, refused: str, *, err: bool = False) -> None:
    """Ask on stdin; anything but yes stops the command (exit status 1) with one line saying nothing was done.

    ``err``: ask on stderr (with ``--json``, stdout holds the document only).
    """
    try:
        if sys.stdin is None or sys.stdin.closed:  # Python sets sys.stdin to None when fd 0 is closed
            raise EOFError
        answer = click.confirm(question, default=False, err=err)
    except (click.Abort, EOFError, RuntimeError):  # click turns end of input and Ctrl-C into Abort
        click.echo(err=err)  # end the prompt's line
        err_console.print(f"[bold red]error:[/] no answer on stdin (closed, empty or interrupted): {refused}; "
                          "pass --yes to go ahead without asking")
        sys.exit(1)
    if not answer:
        err_console.print(f"aborted: {refused}")
        sys.exit(1)


def friendly(fn: F) -> F:
    """One clear line and a non-zero exit for a user's mistake; the traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (PBufferError, OSError, ValueError) as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
