"""The ``pbuffer`` command: the demo, and looking into and acting on a buffer without writing Python.

Every command takes the buffer URL from ``--url`` or ``$PBUFFER_URL`` (default: the user's data directory) and the
NATS servers from ``--servers`` or ``$NATS_URL``. A user's mistake prints one line and exits non-zero; ``--debug``
shows the traceback.

Looking never changes anything: ``inspect``, ``db verify``, ``db current`` and ``db check`` never create, initialise
or upgrade a buffer (an older schema is refused with the command that upgrades it), and no command creates a buffer
that is not there: a path that holds none is a typo more often than not, and a relay following an empty file it
made itself would wait for ever on the wrong one.

Exit status (:data:`~pbuffer.cli.common.EXIT_STATUS`, printed by ``pbuffer --help``): 0 done; 1 an error, a refused
confirmation, or something found wrong; 2 a usage error (an unknown option, a bad value); 3 ``drain`` ended with
messages still pending (saved while it ran: the buffer is not empty); 128 + the signal number (130 for Ctrl-C, 143
for SIGTERM) when ``drain`` without ``--follow`` was stopped with messages left in the buffer.

``--json`` on a command that prints data puts one JSON document on stdout and nothing else there; progress, prompts,
warnings and errors go to stderr, and an error prints its one line there (stdout stays empty) with the same exit
status as without ``--json``.

The commands live by job: :mod:`.buffer_commands` (inspect, watch, requeue, purge), :mod:`.relay_commands` (drain,
send), :mod:`.db_commands` (the ``db`` group), :mod:`.program_commands` (demo, echo, bench); what they share is in
:mod:`.common`.
"""

from __future__ import annotations

import logging

import click

import pbuffer

from . import buffer_commands, db_commands, program_commands, relay_commands
from .common import EXIT_STATUS

__all__ = ["main"]


def _set_up_logging(verbose: int, quiet: bool, debug: bool) -> None:
    """Log lines on stderr: WARNING and up by default; -q errors only; -v and -vv add pbuffer's own INFO and DEBUG
    lines (not every library's: alembic alone says a dozen things at INFO); --debug, every logger's DEBUG."""
    if quiet and (verbose or debug):
        raise click.UsageError("-q cannot go with -v or --debug")
    # A no-op where the process already has logging set up (an embedding program, pytest): theirs wins.
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:  # only when asked: an explicit level on the pbuffer logger outlives this command in the process
        logging.getLogger("pbuffer").setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_STATUS)
@click.version_option(pbuffer.__version__, prog_name="pbuffer")
@click.option("--debug", is_flag=True, help="Show tracebacks and every library's debug logs.")
@click.option("--verbose", "-v", count=True,
              help="More of pbuffer's log lines on stderr: -v INFO, -vv DEBUG (default: WARNING and up).")
@click.option("--quiet", "-q", is_flag=True, help="Log errors only.")
def main(debug: bool, verbose: int, quiet: bool) -> None:
    """pbuffer: a durable client-side buffer for NATS JetStream.

    \b
    Examples:
      pbuffer demo                          an outage played end to end, nothing to set up
      pbuffer inspect --url sqlite:///buf.db --peek 5
      pbuffer drain --url sqlite:///buf.db -s nats://127.0.0.1:4222 --follow
      pbuffer -v watch --url sqlite:///buf.db
    """
    _set_up_logging(verbose, quiet, debug)


def _add_commands(group: click.Group) -> None:
    # `pbuffer --help` lists the commands by name, whatever the order they are added in.
    for module in (program_commands, buffer_commands, relay_commands, db_commands):
        for command in module.COMMANDS:
            group.add_command(command)


_add_commands(main)
