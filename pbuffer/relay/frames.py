"""Publish commands written by pbuffer, many to one buffer, for the relay's hot path.

nats-py's ``publish()`` costs about 20 us a message in Python: a header dict walked with a regex and
``str.translate`` per header, ``hpub_cmd``, two subject regexes, and a command appended to its pending list per
message. A relay's message has one header, its ``Nats-Msg-Id`` (a 36-character UUIDv7, nothing to strip or
escape), and a subject validated when it was saved; its whole ``HPUB`` command is one f-string. The commands of a
run of messages are joined and handed to nats-py in one piece (:func:`.natscompat.send_publishes`), byte for byte
what nats-py would have written for each.

A message that is not that simple (headers of its own, an id of another length, a subject nats-py would refuse)
goes through nats-py's own ``publish()`` instead, after the commands built so far, so the order on the wire is the
order of the messages and nats-py's checks and exceptions stay what they were.

Here too: the size a message takes on the wire (its payload plus the header block, which the server holds to its
``max_payload``) and whether its subject is one of the server's own APIs, the two things checked before a send.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..message import Message
from ..validation import is_server_api_subject
from .transport import PublishResult

__all__ = ["CHUNK_BYTES", "ID_HEADER_BYTES", "command_head", "header_size", "is_api_subject", "is_plain", "too_large"]

#: The header block of a message whose only header is a 36-character Nats-Msg-Id, as nats-py writes it:
#: "NATS/1.0\r\n" + "Nats-Msg-Id: <id>\r\n" + "\r\n".
ID_HEADER_BYTES = 10 + 13 + 36 + 2 + 2
#: Commands are handed to nats-py in pieces of about this many bytes, so a large window starts going out (and
#: acks start coming back) before all of it is built.
CHUNK_BYTES = 128 * 1024

# What nats-py's publish() refuses in a subject (BadSubjectError): nats/aio/client.py, _SUBJECT_INVALID_RE.
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")
_plain_subjects: dict[str, bool] = {}
_api_subjects: dict[str, bool] = {}  # is_server_api_subject by subject: a relay meets few subjects


def command_head(subject: str, reply: str, message_id: str, size: int) -> bytes:
    """The ``HPUB`` command of a plain message (:func:`is_plain`) up to its payload, with its header block (its
    ``Nats-Msg-Id``); ``size``: payload plus header bytes. The payload and ``\r\n`` follow it on the wire."""
    return (f"HPUB {subject} {reply} {ID_HEADER_BYTES} {size}\r\n"
            f"NATS/1.0\r\nNats-Msg-Id: {message_id}\r\n\r\n").encode()


def is_plain(message: Message) -> bool:
    """Whether ``message`` can be written here: no headers of its own, a 36-character id, a subject nats-py
    publishes to as it is. The others go through nats-py's ``publish()``."""
    if message.headers or len(message.id) != 36:
        return False
    subject = message.subject
    plain = _plain_subjects.get(subject)
    if plain is None:
        if len(_plain_subjects) > 10_000:  # bounded: subjects can be many
            _plain_subjects.clear()
        plain = _plain_subjects[subject] = bool(subject) and _BAD_SUBJECT.search(subject) is None
    return plain


def is_api_subject(subject: str) -> bool:
    """Whether ``subject`` is a NATS server API subject (:func:`pbuffer.validation.is_server_api_subject`),
    remembered per subject."""
    api = _api_subjects.get(subject)
    if api is None:
        if len(_api_subjects) > 10_000:  # bounded: subjects can be many
            _api_subjects.clear()
        api = _api_subjects[subject] = is_server_api_subject(subject)
    return api


def header_size(headers: Mapping[str, str]) -> int:
    """Bytes of the header block nats-py writes for ``headers`` (the server counts them with the payload)."""
    # "NATS/1.0\r\n", then "Name: value\r\n" per header, then "\r\n".
    return 12 + sum(len(k.strip().encode()) + len(v.strip().encode()) + 4 for k, v in headers.items())


def too_large(size: int, max_payload: int) -> PublishResult:
    return PublishResult.failed(
        f"MaxPayload: payload plus headers are {size:,} bytes, over the server's max_payload of "
        f"{max_payload:,} bytes (the server would drop the connection for it)", transient=False)
