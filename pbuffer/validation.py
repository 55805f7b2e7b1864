"""Checks every message passes before anything is written.

nats-py does not validate subjects or header values (a CR/LF in either would inject into the NATS protocol), so
pbuffer refuses them at ``save()``: a message that cannot be published must never enter the buffer.

System subjects (any subject beginning with ``$``: ``$JS.API.``, ``$KV.``, ``$O.``, ``$SYS.``..., and inboxes,
``_INBOX.``) are refused too unless the buffer allows their prefix: a buffered ``$JS.API.STREAM.DELETE.X`` would
otherwise be "published" by the relay and delete a stream. See :func:`check_subject_prefixes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from .errors import ConfigurationError, ValidationError
from .message import NO_HEADERS

__all__ = [
    "MAX_SUBJECT_LENGTH",
    "NEVER_ALLOWED_PREFIXES",
    "RESERVED_HEADERS",
    "check_attempts",
    "check_headers",
    "check_lease",
    "check_limit",
    "check_message_id",
    "check_payload",
    "check_reason",
    "check_size",
    "check_skip_subjects",
    "check_subject",
    "check_subject_prefixes",
    "check_window",
    "is_system_subject",
    "valid_subjects",
]

#: Longest subject accepted, in characters (the database column is sized for it).
MAX_SUBJECT_LENGTH = 512

#: Headers pbuffer sets itself; a caller may not set them.
RESERVED_HEADERS = frozenset({"nats-msg-id"})

# Whitespace, control characters (C0, DEL, C1) and the wildcards: none may appear anywhere in a subject.
_SUBJECT_BAD = re.compile(r"[\s\x00-\x1f\x7f-\x9f*>]")
# RFC 7230 token characters: the header names NATS and HTTP agree on.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters (C0 other than horizontal tab, DEL, C1): the README promises they are refused, and a C1 such
# as NEL (\x85) is a line break to some parsers.
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
#: Subjects the server itself acts on when anything publishes to them (the JetStream API, acks and flow control,
#: cluster-internal and system-account requests). No stream can hold them, so a buffer has no use for them, and
#: :func:`check_subject_prefixes` refuses an opt-in that would allow any of them.
NEVER_ALLOWED_PREFIXES = ("$JS.API", "$JS.ACK", "$JS.FC", "$JSC", "$SYS")


def check_payload(payload: object) -> bytes:
    """Return the payload as ``bytes``; raise :class:`TypeError` if it is not bytes-like."""
    if type(payload) is bytes:
        return payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes-like (bytes, bytearray, memoryview), not {type(payload).__name__}")


#: Ordinary subjects already found valid (never a system subject: whether one passes depends on the buffer);
#: producers reuse a few subjects, and the check is on every save. Only :func:`check_subject` adds to it.
valid_subjects: set[str] = set()
_VALID_SUBJECTS_KEPT = 4096


def is_system_subject(subject: str) -> bool:
    """Whether ``subject`` is a system subject (``$...``) or an inbox (``_INBOX.``)."""
    return subject.startswith(("$", "_INBOX."))


def is_server_api_subject(subject: str) -> bool:
    """Whether ``subject`` reaches the server's own APIs (``$JS.API``, ``$SYS``...): never published, whatever the
    buffer allows (a message saved before pbuffer refused these is dead-lettered by the relay instead)."""
    return any(_covers(prefix, subject) for prefix in NEVER_ALLOWED_PREFIXES)


def _covers(prefix: str, subject: str) -> bool:
    """Whether the token prefix ``prefix`` (no trailing dot) covers ``subject``: equal, or followed by a dot."""
    return subject == prefix or subject.startswith(prefix + ".")


def check_subject_prefixes(prefixes: object) -> tuple[str, ...]:
    """Check a buffer's ``allow_subject_prefixes`` opt-in; return it as a tuple of prefixes without trailing dots.

    Each prefix is one or more whole subject tokens (``"$KV.orders."`` and ``"$KV.orders"`` are the same: they
    allow ``$KV.orders.<key>``, never ``$KV.orders2.x``) that begins with ``$`` or ``_INBOX.``: other subjects
    need no opt-in. Matching is by token, so ``"$"`` allows only subjects whose first token is ``$`` itself, never
    every system subject. A prefix that would allow any of :data:`NEVER_ALLOWED_PREFIXES` (``"$JS"``,
    ``"$JS.API.STREAM."``, ``"$SYS"``...) raises :class:`ConfigurationError`: nothing can open a buffer that
    sends JetStream API requests.
    """
    if isinstance(prefixes, str):
        # A lone string would otherwise be taken as a sequence of one-character prefixes.
        prefixes = (prefixes,)
    if isinstance(prefixes, (bytes, bytearray, Mapping)) or not isinstance(prefixes, Iterable):
        raise ConfigurationError("allow_subject_prefixes must be a sequence of str (e.g. ('$KV.orders.',)), not "
                                 f"{type(prefixes).__name__}")
    checked: list[str] = []
    for prefix in prefixes:
        if not isinstance(prefix, str):
            raise ConfigurationError(f"allow_subject_prefixes holds {prefix!r}: each prefix must be a str")
        bare = prefix[:-1] if prefix.endswith(".") else prefix
        bad = _SUBJECT_BAD.search(bare)
        if not bare or bad or "" in bare.split(".") or len(bare) > MAX_SUBJECT_LENGTH:
            raise ConfigurationError(f"allow_subject_prefixes: {prefix!r} is not a subject prefix (whole tokens, no "
                                     "whitespace, control characters or wildcards)")
        if not is_system_subject(bare + "."):
            raise ConfigurationError(f"allow_subject_prefixes: {prefix!r} is not a system prefix; only subjects "
                                     "beginning with '$' or '_INBOX.' need allowing")
        for never in NEVER_ALLOWED_PREFIXES:
            if _covers(bare, never) or _covers(never, bare):
                raise ConfigurationError(f"allow_subject_prefixes: {prefix!r} would allow {never}.* subjects, which "
                                         "the server acts on (JetStream API, acks, system requests); a buffer "
                                         "never sends them")
        checked.append(bare)
    return tuple(dict.fromkeys(checked))


def check_subject(subject: object, allowed_prefixes: tuple[str, ...] = ()) -> str:
    """Return ``subject`` if it is a valid NATS subject to publish to, else raise :class:`ValidationError`.

    A system subject (``$...``, ``_INBOX.``) passes only when one of ``allowed_prefixes`` (as returned by
    :func:`check_subject_prefixes`) covers it.
    """
    if not isinstance(subject, str):
        raise ValidationError(f"subject must be a str, not {type(subject).__name__}")
    if subject in valid_subjects:
        # Only ordinary subjects are remembered: whether a system subject passes depends on the buffer.
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
    if is_system_subject(subject):
        if any(_covers(prefix, subject) for prefix in allowed_prefixes):
            return subject
        raise ValidationError(f"subject {subject!r} is a system subject ('$...' or '_INBOX.'): publishing to it "
                              "asks the server to act (e.g. $JS.API.* purges or deletes streams); to buffer "
                              "messages for one on purpose (e.g. KV puts on $KV.<bucket>.<key>), open the buffer "
                              "with allow_subject_prefixes=(\"$KV.<bucket>.\",)")
    if len(valid_subjects) >= _VALID_SUBJECTS_KEPT:
        valid_subjects.clear()
    valid_subjects.add(subject)
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
            raise ValidationError(f"value of header {name!r} contains a control character (C0, DEL or C1; "
                                  "only horizontal tab is allowed)")
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


# ----------------------------------------------------------------------------------- the other call arguments

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: The largest attempts count mark_dead() takes (the dead-letter table's 32-bit INTEGER column).
MAX_ATTEMPTS = 2**31 - 1


def check_message_id(message_id: object) -> str:
    """A message id (also a relay's owner name): a lowercase UUID string."""
    if not isinstance(message_id, str) or not _ID.fullmatch(message_id):
        raise ValidationError(f"not a message id (a lowercase UUID string): {message_id!r}")
    return message_id


def check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValidationError(f"limit must be a non-negative int or None, not {limit!r}")
    # No buffer holds 2**62 messages; a larger limit would overflow the databases' 64-bit LIMIT.
    return min(limit, 2**62)


def check_attempts(attempts: object) -> int:
    # The dead-letter column is a 32-bit INTEGER on PostgreSQL and MariaDB: every backend takes the same range.
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 0 <= attempts <= MAX_ATTEMPTS:
        raise ValidationError(f"attempts must be an int from 0 to {MAX_ATTEMPTS}, not {attempts!r}")
    return attempts


def check_lease(lease: object) -> float:
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease < 10**6:
        raise ValidationError(f"lease must be a positive number of seconds, not {lease!r}")
    return float(lease)


def check_skip_subjects(skip_subjects: Iterable[str]) -> frozenset[str]:
    if isinstance(skip_subjects, str):
        raise ValidationError("skip_subjects takes a collection of subjects, not one str")
    skip = frozenset(skip_subjects)
    if not all(isinstance(subject, str) for subject in skip):
        raise ValidationError("skip_subjects must hold str subjects")
    return skip


def check_window(window: object) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValidationError(f"window must be a positive int, not {window!r}")
    return window


def check_size(payload: bytes, headers: Mapping[str, str], limit: int, reason: str) -> None:
    """Refuse a message over the storage's ``limit`` (payload plus header names and values, in bytes)."""
    size = len(payload) + sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
    if size > limit:
        raise ValidationError(f"a message of {size:,} bytes (payload and headers) is over what {reason}; nothing "
                              "was written")
