"""The dashboard's files: one HTML page, its script and stylesheet, shipped inside the package (no CDN: the
page must work on a machine with no internet). The page reads ``GET /rollout`` and ``GET /rollout/series``
and calls ``POST /admin/{action}`` with the token the user types; it holds no state of its own."""

from __future__ import annotations

from functools import cache
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


@cache
def asset(name: str) -> tuple[bytes, str] | None:
    """(body, media type) of a shipped file, or None for any other name (so no path reaches the disk)."""
    media_type = MEDIA_TYPES.get(name)
    if media_type is None:
        return None
    return (STATIC / name).read_bytes(), media_type
