"""Transport and relay: getting buffered messages into JetStream.

- :mod:`.transport`: the :class:`Transport` contract a relay publishes through, and :class:`MockTransport`;
- :mod:`.drain`: the :class:`Relay` that drains a buffer through a transport, and :mod:`.sending` its :func:`send`;
- :mod:`.jetstream`: :class:`JetStreamTransport`, the transport over nats-py (also ``pbuffer.jetstream``);
- :mod:`.fast_ingest`: JetStream's fast-ingest batch protocol, which the JetStream transport can use;
- :mod:`.natscompat`: the two nats-py internals the transport relies on, checked at connect.

Importing this package does not import nats-py; :mod:`.jetstream` does.
"""

from __future__ import annotations

from .drain import Relay, RelayObserver, RelayStats
from .sending import send

__all__ = ["Relay", "RelayObserver", "RelayStats", "send"]
