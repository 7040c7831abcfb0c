"""Where the rollout store lives, written as a path or a URL, and how to show it without its password.

- a plain path, or ``sqlite:///relative.db`` / ``sqlite:////absolute.db`` (SQLAlchemy's spelling: what follows
  ``sqlite:///`` is the path): a SQLite file, the default for one machine;
- ``postgresql://[user[:password]@]host[:port]/database[?param=value...]`` (``postgres://`` too): PostgreSQL,
  for clusters, where a controller restarted on another node must still find its store.

Pure: no database, no network. A password may appear in a URL; `redact` masks it wherever a location is
shown (errors, logs, ``stats()``, config dumps).

Example:
    >>> parse_store_location("sqlite:///.canary/rollout.db")
    StoreLocation(backend='sqlite', target='.canary/rollout.db')
    >>> redact("postgresql://canary:s3cret@db.internal:5432/canary?sslmode=require")
    'postgresql://canary:***@db.internal:5432/canary?sslmode=require'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
MASK = "***"
EXPECTED = (
    "sqlite:///<file> (relative to the project root; sqlite:////<absolute file>) or "
    "postgresql://[user@]host[:port]/database"
)


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store location: the backend and what it opens (a file path, or the URL as given)."""

    backend: Literal["sqlite", "postgresql"]
    target: str


def is_url(value: str) -> bool:
    """Whether ``value`` is written as a URL (``scheme://...``) rather than a file path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


def parse_store_location(value: str | os.PathLike[str]) -> StoreLocation:
    """The backend and target of a store location (a path, or a ``sqlite:///`` or ``postgresql://`` URL).

    Raises:
        ValueError: an unknown scheme or an empty file path; the message shows the value with its
            password masked and says what is expected.
    """
    text = os.fspath(value)
    if not is_url(text):
        if not text:
            raise ValueError(f"the store location is empty; expected a file path or {EXPECTED}")
        return StoreLocation("sqlite", text)
    if text.startswith(SQLITE_PREFIX):
        path = text.removeprefix(SQLITE_PREFIX).split("?", 1)[0]
        if not path:
            raise ValueError(f"{redact(text)!r} names no file; expected {EXPECTED}")
        return StoreLocation("sqlite", path)
    if text.startswith(POSTGRES_PREFIXES):
        return StoreLocation("postgresql", text)
    raise ValueError(f"unsupported store URL {redact(text)!r}; expected {EXPECTED}")


def password_of(url: str) -> str | None:
    """The password a URL carries (in its user info or as ``?password=``), or None."""
    try:
        parts = urlsplit(url)
        password = parts.password
        for name, value in parse_qsl(parts.query):
            if name == "password":
                password = value
    except ValueError:  # a malformed netloc (a bad port): fall back to the raw user info below
        match = re.match(r"^[^:]+://[^:@/]*:([^@/]*)@", url)
        password = match.group(1) if match else None
    return password or None


def redact(location: str) -> str:
    """``location`` with any password replaced by ``***``; a file path comes back unchanged."""
    if not is_url(location):
        return location
    masked = re.sub(r"^([^:]+://[^:@/]*:)[^@/]*@", rf"\g<1>{MASK}@", location)
    return re.sub(r"([?&]password=)[^&]*", rf"\g<1>{MASK}", masked)


def scrub(message: str, location: str) -> str:
    """``message`` with the location's password masked wherever it appears (a driver may echo the URL)."""
    password = password_of(location)
    for secret in (password, unquote(password)) if password else ():
        message = message.replace(secret, MASK)
    return message
