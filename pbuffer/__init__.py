"""pbuffer: a durable client-side buffer for NATS JetStream publishers.

Save every outgoing message to a local buffer first; a relay drains it into JetStream oldest-first and deletes a
message only after the server's PubAck, sending a stable ``Nats-Msg-Id`` so a retry is deduplicated.

>>> import pbuffer
>>> with pbuffer.open("memory://") as buf:
...     saved = buf.save(b"hello", subject="orders.created")
...     buf.pop() == saved
True
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .aio import AsyncBuffer
from .buffer import Buffer
from .errors import (
    BackendError,
    BufferFullError,
    CommitUnknownError,
    ConfigurationError,
    CorruptDatabaseError,
    NotABufferDatabaseError,
    PBufferError,
    PublishError,
    SchemaChangedError,
    SchemaTooNewError,
    SchemaTooOldError,
    StorageFullError,
    StoragePermissionError,
    ValidationError,
)
from .limits import BufferStats, ClaimStats, Limits, SubjectStats
from .message import DeadLetter, Message, Outgoing
from .registry import default_url, known_schemes, open_buffer
from .relay.drain import Relay, RelayStats
from .relay.sending import send
from .relay.transport import MockTransport, PublishResult, Transport
from .schema import (
    Revision,
    alembic_include_name,
    alembic_include_object,
    check,
    current,
    downgrade,
    history,
    upgrade,
)

__all__ = [
    "AsyncBuffer",
    "BackendError",
    "Buffer",
    "BufferFullError",
    "BufferStats",
    "ClaimStats",
    "CommitUnknownError",
    "ConfigurationError",
    "CorruptDatabaseError",
    "DeadLetter",
    "Limits",
    "Message",
    "NotABufferDatabaseError",
    "Outgoing",
    "PBufferError",
    "MockTransport",
    "PublishError",
    "PublishResult",
    "Relay",
    "RelayStats",
    "Revision",
    "SchemaChangedError",
    "SchemaTooNewError",
    "SchemaTooOldError",
    "StorageFullError",
    "StoragePermissionError",
    "SubjectStats",
    "Transport",
    "ValidationError",
    "__version__",
    "alembic_include_name",
    "alembic_include_object",
    "check",
    "current",
    "default_url",
    "downgrade",
    "history",
    "known_schemes",
    "open",
    "open_async",
    "send",
    "upgrade",
]


def open(url: str | None = None, **options: Any) -> Buffer:
    """Open a buffer by URL.

    ``memory://`` (in-process), ``sqlite:///path/to/buffer.db``, ``postgresql+psycopg://...``,
    ``mysql+pymysql://...``, or a scheme a plug-in registered under the ``pbuffer.backends`` entry points.
    Without a URL: ``$PBUFFER_URL``, else ``buffer.db`` in the user's data directory. Options (``subject``,
    ``durability``, ``max_messages``, ``ttl``, ...; the options table is in the README and docs/backends.md) may be
    keyword arguments or URL query parameters; a memory:// or sqlite:// URL with any other query parameter raises
    :class:`ConfigurationError`. ``postgres://`` is accepted as ``postgresql://``. System subjects (``$...``,
    ``_INBOX.``) are refused unless allowed by prefix: ``allow_subject_prefixes=("$KV.orders.",)``.
    """
    return open_buffer(url, **options)


async def open_async(url: str | None = None, **options: Any) -> AsyncBuffer:
    """:func:`open`, awaitable: opening (which may migrate or check a file) runs off the event loop."""
    import asyncio

    buffer = await asyncio.get_running_loop().run_in_executor(None, lambda: open_buffer(url, **options))
    return AsyncBuffer(buffer)
