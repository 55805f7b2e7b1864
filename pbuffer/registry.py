"""Backends chosen by URL scheme: the one place a scheme is tied to a storage class.

Each built-in class declares the schemes it serves (:attr:`pbuffer.Buffer.schemes`); a third-party backend is
found through the ``pbuffer.backends`` entry-point group, whose entry names are its schemes.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .buffer import Buffer
from .errors import ConfigurationError

__all__ = ["BUILTIN_BACKENDS", "ENTRY_POINT_GROUP", "SQL_SCHEMES", "backend_for", "default_url", "display_url",
           "known_schemes", "open_buffer", "parse_options", "scheme_of"]

ENTRY_POINT_GROUP = "pbuffer.backends"

#: The built-in storage classes, in the order a scheme is looked for among their ``schemes``; each is imported only
#: when the ones before it do not serve the scheme (opening memory:// never imports SQLAlchemy).
BUILTIN_BACKENDS = ("pbuffer.backends.memory:MemoryBuffer", "pbuffer.backends.sql:SQLBuffer")
# Other spellings of a built-in scheme: postgres:// is what Heroku, libpq and many tools write (SQLAlchemy dropped
# it in 1.4). The URL is rewritten before anything reads it, so the driver is the one postgresql:// gets.
_ALIASES = {"postgres": "postgresql"}
# Schemes whose URLs carry nothing for a database driver: any query parameter that is not a pbuffer option is a
# mistake (a typo, or an unescaped "?" in a file name) and is refused rather than ignored.
_NO_DRIVER_OPTIONS = ("memory", "sqlite")


def _truthy(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


def _seconds(text: str) -> float:
    # float() takes "nan", "inf" and "1e400": none is a number of seconds (NaN passes every "< 0" check).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number of seconds, not {text!r}")
    return value


def _prefixes(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


#: Options a URL's query may carry, with how each is parsed. Any other query parameter goes to the driver of a
#: PostgreSQL or MariaDB URL (``sslmode=require``, ``charset=utf8mb4``); memory:// and sqlite:// URLs refuse it.
URL_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "subject": str,
    "durability": str,
    "busy_timeout": _seconds,
    "pool_size": int,
    "integrity_check": _truthy,
    "auto_upgrade": _truthy,
    "serialize_writes": _truthy,
    "max_messages": int,
    "max_bytes": int,
    "overflow": str,
    "ttl": _seconds,
    "block_timeout": _seconds,
    "group_commit": _truthy,
    "allow_subject_prefixes": _prefixes,  # comma-separated: ?allow_subject_prefixes=$KV.orders.,$KV.users.
    "propagate_trace": _truthy,
}


def default_url() -> str:
    """``$PBUFFER_URL``, or a sqlite file in the user's data directory."""
    from_env = os.environ.get("PBUFFER_URL")
    if from_env:
        return from_env
    from platformdirs import user_data_path

    return f"sqlite:///{Path(user_data_path('pbuffer')) / 'buffer.db'}"


def display_url(url: str) -> str:
    """``url`` fit to print or log: a password in it is shown as ``***``."""
    # Split by hand rather than through SQLAlchemy's URL parser: this must work on any text a user typed (a password
    # with an unescaped "/" or "@" included), and a sqlite path may hold characters that parser rejects.
    scheme, sep, rest = url.partition("://")
    if not sep or scheme_of(url) in ("sqlite", "memory"):
        return url
    address, question, query = rest.partition("?")
    at = address.rfind("@")
    user, colon, _password = address[:max(at, 0)].partition(":")
    if at < 0 or not colon:
        return url
    return f"{scheme}://{user}:***{address[at:]}{question}{query}"


#: The schemes the SQLAlchemy backend serves (after aliases: ``postgres://`` is ``postgresql``).
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb")


def scheme_of(url: str) -> str:
    """The backend scheme of ``url``: lower case, without the driver (``+psycopg``), aliases resolved
    (``postgres`` is ``postgresql``); ``""`` when there is none. The one place a URL's scheme is read."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    base = scheme.split("+", 1)[0].lower()
    return _ALIASES.get(base, base)


def _unalias(url: str) -> str:
    """``url`` with an alias scheme (``postgres://``, ``postgres+psycopg://``) spelled the canonical way."""
    scheme, sep, rest = url.partition("://")
    base, plus, driver = scheme.partition("+")
    canonical = _ALIASES.get(base.lower()) if sep else None
    return f"{canonical}{plus}{driver}://{rest}" if canonical else url


def _plugins() -> dict[str, str]:
    """Third-party backends: scheme -> ``"module:Class"``, from the ``pbuffer.backends`` entry points."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backend_for(scheme: str) -> type[Buffer] | None:
    """The class that opens ``scheme`` URLs (a built-in one first: a plug-in cannot take over a built-in scheme),
    or ``None``."""
    for target in BUILTIN_BACKENDS:
        backend = _load(target)
        if scheme in backend.schemes:
            return backend
    plugin = _plugins().get(scheme)
    return None if plugin is None else _load(plugin)


def known_schemes() -> list[str]:
    """Every URL scheme :func:`pbuffer.open` can open here: the built-in backends' and the installed plug-ins'."""
    builtin = {scheme for target in BUILTIN_BACKENDS for scheme in _load(target).schemes}
    return sorted(builtin | set(_plugins()))


def _load(target: str) -> type[Buffer]:
    module_name, _, attribute = target.partition(":")
    try:
        backend = getattr(import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load buffer backend {target!r}: {exc}") from exc
    if not (isinstance(backend, type) and issubclass(backend, Buffer)):
        raise ConfigurationError(f"buffer backend {target!r} is not a pbuffer.Buffer subclass")
    return backend


def parse_options(url: str) -> tuple[str, dict[str, Any]]:
    """Split pbuffer's options out of ``url``'s query; return the remaining URL and the parsed options.

    An alias scheme is rewritten (``postgres://`` becomes ``postgresql://``). A memory:// or sqlite:// URL whose
    query holds anything but pbuffer's options raises :class:`ConfigurationError` naming it; other URLs pass
    the rest of their query on to the database driver.
    """
    # Only the query is touched: re-assembling a parsed URL would mangle forms like sqlite:////absolute/path.
    base, _, query = _unalias(url).partition("?")
    options: dict[str, Any] = {}
    rest = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        parse = URL_OPTIONS.get(name)
        if parse is None:
            rest.append((name, value))
            continue
        try:
            options[name] = parse(value)
        except ValueError as exc:
            raise ConfigurationError(f"URL option {name}={value!r}: {exc}") from exc
    scheme = scheme_of(url)
    if rest and scheme in _NO_DRIVER_OPTIONS:
        raise ConfigurationError(_unknown_options(scheme, [name for name, _ in rest]))
    return (f"{base}?{urlencode(rest)}" if rest else base), options


def _unknown_options(scheme: str, names: list[str]) -> str:
    unknown = ", ".join(repr(name) for name in names)
    close = {match for name in names for match in difflib.get_close_matches(name, URL_OPTIONS, n=1)}
    guess = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
    hint = (" A '?' that belongs to the file name must be percent-encoded as %3F (sqlite:///what%3F.db)."
            if scheme == "sqlite" else "")
    return (f"unknown option(s) {unknown} in a {scheme}:// URL{guess}; known options: "
            f"{', '.join(sorted(URL_OPTIONS))}.{hint}")


def open_buffer(url: str | None = None, **options: Any) -> Buffer:
    """Open the buffer at ``url`` (see :func:`pbuffer.open`)."""
    if url is None:
        url = default_url()
    if not isinstance(url, str):
        raise ConfigurationError(f"buffer URL must be a str, not {type(url).__name__}")
    scheme = scheme_of(url)
    backend = backend_for(scheme) if scheme else None
    if backend is None:
        raise ConfigurationError(f"unknown buffer URL scheme {scheme or url!r}; known schemes: "
                                 f"{', '.join(known_schemes())}")
    stripped, from_url = parse_options(url)
    clash = set(from_url) & set(options)
    if clash:
        raise ConfigurationError(f"option(s) {', '.join(sorted(clash))} given both in the URL and as arguments")
    try:
        return backend.from_url(stripped, **from_url, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ConfigurationError(f"{backend.__name__} does not take that option: {exc}") from exc
        raise
