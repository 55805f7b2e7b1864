"""``pbuffer.jetstream.JetStreamTransport``, the path the README shows; the module is :mod:`pbuffer.relay.jetstream`."""

from __future__ import annotations

from .relay.jetstream import JetStreamTransport, classify, parse_reply

__all__ = ["JetStreamTransport", "classify", "parse_reply"]
