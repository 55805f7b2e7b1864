"""Checks every message passes before anything is written.

nats-py does not validate subjects or header values (a CR/LF in either would inject into the NATS protocol), so
pbuffer refuses them at ``save()``: a message that cannot be published must never enter the buffer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from .errors import ValidationError
from .message import NO_HEADERS

__all__ = ["MAX_SUBJECT_LENGTH", "RESERVED_HEADERS", "check_headers", "check_payload", "check_reason", "check_subject"]

#: Longest subject accepted, in characters (the database column is sized for it).
MAX_SUBJECT_LENGTH = 512

#: Headers pbuffer sets itself; a caller may not set them.
RESERVED_HEADERS = frozenset({"nats-msg-id"})

# Whitespace, control characters (C0, DEL, C1) and the wildcards: none may appear anywhere in a subject.
_SUBJECT_BAD = re.compile(r"[\s\x00-\x1f\x7f-\x9f*>]")
# RFC 7230 token characters: the header names NATS and HTTP agree on.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than horizontal tab.
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_payload(payload: object) -> bytes:
    """Return the payload as ``bytes``; raise :class:`TypeError` if it is not bytes-like."""
    if type(payload) is bytes:
        return payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes-like (bytes, bytearray, memoryview), not {type(payload).__name__}")


# Subjects already found valid; producers reuse a few subjects, and the check is on every save.
_valid_subjects: set[str] = set()
_VALID_SUBJECTS_KEPT = 4096


def check_subject(subject: object) -> str:
    """Return ``subject`` if it is a valid NATS subject to publish to, else raise :class:`ValidationError`."""
    if not isinstance(subject, str):
        raise ValidationError(f"subject must be a str, not {type(subject).__name__}")
    if subject in _valid_subjects:
        return subject
    if not subject:
        raise ValidationError("subject must not be empty")
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise ValidationError(f"subject is longer than {MAX_SUBJECT_LENGTH} characters")
    bad = _SUBJECT_BAD.search(subject)
    if bad:
        raise ValidationError(f"subject {subject!r} contains {bad.group()!r}: whitespace, control characters "
                              "and wildcards (*, >) are not allowed")
    if "" in subject.split("."):
        raise ValidationError(f"subject {subject!r} has an empty token")
    try:
        subject.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"subject {subject!r} is not valid UTF-8") from exc
    if len(_valid_subjects) >= _VALID_SUBJECTS_KEPT:
        _valid_subjects.clear()
    _valid_subjects.add(subject)
    return subject


def check_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """Return a read-only copy of ``headers`` or raise :class:`ValidationError`."""
    if headers is None:
        return NO_HEADERS
    if not isinstance(headers, Mapping):
        raise ValidationError(f"headers must be a mapping of str to str, not {type(headers).__name__}")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValidationError("header names and values must be str")
        if not _HEADER_NAME.fullmatch(name):
            raise ValidationError(f"header name {name!r} is not a token (letters, digits and !#$%&'*+-.^_`|~)")
        if name.lower() in RESERVED_HEADERS:
            raise ValidationError(f"header {name!r} is set by pbuffer itself")
        if value != value.strip():
            # nats-py strips header values: the stream would get something else than the buffer holds.
            raise ValidationError(f"value of header {name!r} has leading or trailing whitespace, which NATS "
                                  "clients strip")
        if _HEADER_VALUE_BAD.search(value):
            raise ValidationError(f"value of header {name!r} contains a control character (CR/LF are refused)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError(f"value of header {name!r} is not valid UTF-8") from exc
        checked[name] = value
    return MappingProxyType(checked) if checked else NO_HEADERS


def check_reason(reason: object) -> str:
    """A dead-letter reason: any text every database can store (no NUL, valid UTF-8)."""
    if not isinstance(reason, str):
        raise ValidationError(f"reason must be a str, not {type(reason).__name__}")
    if "\x00" in reason:
        raise ValidationError("reason must not contain NUL characters")
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError("reason is not valid UTF-8") from exc
    return reason
