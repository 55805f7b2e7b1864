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
"""

from __future__ import annotations

import re

from ..message import Message

__all__ = ["CHUNK_BYTES", "ID_HEADER_BYTES", "is_plain"]

#: The header block of a message whose only header is a 36-character Nats-Msg-Id, as nats-py writes it:
#: "NATS/1.0\r\n" + "Nats-Msg-Id: <id>\r\n" + "\r\n".
ID_HEADER_BYTES = 10 + 13 + 36 + 2 + 2
#: Commands are handed to nats-py in pieces of about this many bytes, so a large window starts going out (and
#: acks start coming back) before all of it is built.
CHUNK_BYTES = 128 * 1024

# What nats-py's publish() refuses in a subject (BadSubjectError): nats/aio/client.py, _SUBJECT_INVALID_RE.
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")
_plain_subjects: dict[str, bool] = {}


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
