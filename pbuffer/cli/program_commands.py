"""``pbuffer demo``, ``pbuffer echo`` and ``pbuffer bench``: the commands that run a whole program of their own."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import click

from .common import console, friendly


@click.command()
@click.option("--messages", "-n", default=5000, show_default=True, help="How many messages to save and relay.")
@click.option("--servers", "-s", default=None, envvar=None,
              help="Use this NATS server instead of starting one (no outage is played then).")
@click.option("--fast-ingest", is_flag=True,
              help="Let the demo's stream take fast-ingest batches (allow_batched; nats-server >= 2.14).")
@friendly
def demo(messages: int, servers: str | None, fast_ingest: bool) -> None:
    """Play an outage: save while nats-server is down, then relay and get every echo back.

    \b
    Example:
      pbuffer demo --messages 10000
      pbuffer demo --fast-ingest
    """
    from .demo import run_demo

    result = asyncio.run(run_demo(messages, servers, console, fast_ingest=fast_ingest))
    sys.exit(0 if result.ok else 1)


# ------------------------------------------------------------------------------------------------- passthrough

@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def echo(args: Sequence[str]) -> None:
    """The stream-echo example: pbuffer echo server|client ... (pbuffer echo --help)."""
    from ..examples.echo import main as echo_main

    sys.exit(echo_main(list(args)))


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: Sequence[str]) -> None:
    """The benchmark harness: pbuffer bench [--quick] [--json FILE] ... (pbuffer bench --help)."""
    from importlib import import_module

    import_module("pbuffer.benchmarks.cli").main(list(args))


COMMANDS = (demo, echo, bench)
