"""The admin API's bearer token, shared by the Ingress and the ``canary`` CLI. Standard library only, so the
CLI's operator commands start fast (no Ray, torch or web framework to import)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_ENV = "CANARY_ADMIN_TOKEN"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKEN_FILE = PROJECT_ROOT / ".canary" / "admin-token"


class AdminTokenError(OSError):
    """The token file cannot be read or created; ``filename`` names it, the message says how to go on."""


def admin_token(path: Path | None = None) -> str:
    """``$CANARY_ADMIN_TOKEN`` when set, else the token file (default `DEFAULT_TOKEN_FILE`), created with a
    random token (mode 0600) the first time, so the CLI on the same machine can read it.

    Raises:
        AdminTokenError: the file cannot be read or created (permissions, a file where its directory goes).
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = path or DEFAULT_TOKEN_FILE
    try:
        return _from_file(path)
    except OSError as exc:
        cause = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc)
        raise AdminTokenError(
            exc.errno,
            f"cannot read or create the admin token file ({cause}); fix that or set ${TOKEN_ENV}",
            str(path),
        ) from None


def _from_file(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
