"""What the Ingress needs for feedback and operators, kept out of the deployment class: the bounded log of
which arm served each request id, the admin bearer token, and strict parsing of feedback and admin bodies.
Pure apart from reading/creating the token file.
"""

from __future__ import annotations

import hmac
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.admintoken import admin_token as admin_token
from serving.http import HTTPProblem
from serving.segments import Segment

MAX_SHARED_SEGMENT_LISTS = 10_000
ACTIONS = ("pause", "resume", "promote", "rollback", "set-weight", "acknowledge")


@dataclass(frozen=True, slots=True)
class Served:
    arm: str
    ts: float
    segments: tuple[Segment, ...]
    slot: int = -1  # where the log keeps it, for `RequestLog.given` and `RequestLog.give`


class RequestLog:
    """The last requests this replica answered (id → arm and segments), bounded in count and age.

    A ring of ``max_entries`` slots in flat arrays: the id's 64-bit hash, the time, and references to the
    arm name and to a shared segment list. About 32 bytes a request, allocated once, so the default 200,000
    cost ~6 MB per Ingress replica whatever the traffic (a dict of records cost ~250 bytes each, ~50 MB).
    ``find`` scans the hashes with numpy (~0.1 ms at 200,000): it runs per feedback call, ``add`` per
    request. The hash is Python's keyed SipHash of the id, so a client cannot aim its ids at another's; the
    chance that an unknown id matches a logged one by accident is ~``max_entries`` / 2⁶⁴.

    It also keeps the feedback given to each answer (`give`, `given`): one float array per metric named,
    allocated at its first value (8 bytes a slot, ~1.6 MB per metric at 200,000), so a client's retry of
    POST /feedback is recognised at once rather than counted twice.

    Example:
        >>> log = RequestLog(max_entries=2, max_age_s=60)
        >>> for i, request_id in enumerate("abc"):
        ...     log.add(request_id, "stable", float(i), [])
        >>> log.find("a", now=2.0) is None, log.find("c", now=2.0).arm
        (True, 'stable')
    """

    def __init__(self, max_entries: int = 200_000, max_age_s: float = 3600.0) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries, self.max_age_s = max_entries, max_age_s
        self._hashes = np.zeros(max_entries, dtype=np.int64)
        self._ts = np.zeros(max_entries, dtype=np.float64)
        self._arms: list[str | None] = [None] * max_entries
        self._segments: list[tuple[Segment, ...]] = [()] * max_entries
        self._next = 0  # the slot written next; the oldest entry once the ring is full
        self._size = 0
        # Segment values are capped per label, so few distinct segment lists exist: each is kept once and
        # the slots refer to it.
        self._shared: dict[tuple[Segment, ...], tuple[Segment, ...]] = {}
        self._given: dict[str, np.ndarray] = {}  # metric -> the value given per slot, NaN for none

    def __len__(self) -> int:
        return self._size

    def add(self, request_id: str, arm: str, ts: float, segments: list[Segment]) -> None:
        key = tuple(segments)
        shared = self._shared.get(key)
        if shared is None:
            if len(self._shared) >= MAX_SHARED_SEGMENT_LISTS:
                self._shared.clear()  # a pathological spread of values: start sharing afresh
            shared = self._shared[key] = key
        slot = self._next
        self._hashes[slot] = hash(request_id)
        self._ts[slot] = ts
        self._arms[slot] = arm
        self._segments[slot] = shared
        for values in self._given.values():
            values[slot] = np.nan
        self._next = (slot + 1) % self.max_entries
        self._size = min(self._size + 1, self.max_entries)

    def find(self, request_id: str, now: float) -> Served | None:
        """The newest entry for ``request_id`` (a client may reuse its id) unless it is over ``max_age_s``."""
        hits = np.flatnonzero(self._hashes[: self._size] == hash(request_id))
        if hits.size == 0:
            return None
        # Slots were written in ring order: the newest hit is the one fewest steps behind the write position.
        slot = int(hits[np.argmin((self._next - 1 - hits) % self.max_entries)])
        arm = self._arms[slot]
        if arm is None or now - self._ts[slot] > self.max_age_s:
            return None
        return Served(arm, float(self._ts[slot]), self._segments[slot], slot)

    def given(self, served: Served, metric: str) -> float | None:
        """The ``metric`` value given to this answer already, or None."""
        values = self._given.get(metric)
        if values is None or math.isnan(values[served.slot]):
            return None
        return float(values[served.slot])

    def give(self, served: Served, metric: str, value: float) -> None:
        """Remembers a ``metric`` value given to this answer (``metric`` is one of the config's, so the
        arrays stay few)."""
        values = self._given.get(metric)
        if values is None:
            values = self._given[metric] = np.full(self.max_entries, np.nan)
        values[served.slot] = value


def feedback_conflict(metric: str, earlier: float) -> str:
    """Why a second, different value for a request's metric is refused (409)."""
    return (
        f"{metric} for this request_id is already recorded as {earlier:g}; a request has one value per"
        " metric (the first)"
    )


REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def check_request_id(request_id: str | None) -> None:
    """A client may choose its request id (Serve keeps a sent ``X-Request-Id``), but only in a safe format:
    1–128 characters of letters, digits and ``._:-``, so ids stay joinable and printable."""
    if request_id and not REQUEST_ID.fullmatch(request_id):
        raise HTTPProblem(
            400,
            "invalid_request_id",
            [{"field": "X-Request-Id", "message": "1–128 characters: letters, digits and ._:- (or omit it)"}],
        )


def token_from_file(path: str) -> str | None:
    """The token in a file named by config; None when the file is missing, unreadable or empty."""
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError:
        return None
    return token or None


def check_bearer(header: str | None, token: str) -> None:
    """401 without a bearer token, 403 with a wrong one (compared in constant time)."""
    if not header or not header.lower().startswith("bearer "):
        raise HTTPProblem(401, "unauthorized", "send `Authorization: Bearer <token>` (see `canary status`)")
    if not hmac.compare_digest(header[7:].strip().encode(), token.encode()):
        raise HTTPProblem(403, "forbidden", "the bearer token is not the admin token")


def _require(body: Any, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(body, dict):
        raise HTTPProblem(422, "invalid_input", [{"field": "(body)", "message": "send a JSON object"}])
    if name not in body:
        raise HTTPProblem(422, "invalid_input", [{"field": name, "message": f"required: {what}"}])
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HTTPProblem(
            422, "invalid_input", [{"field": name, "message": f"expected {what}, got {value!r}"}]
        )
    return value


def _number_in(body: Any, name: str, low: float, high: float, what: str) -> float:
    """A JSON number in [low, high] as a float; 422 naming the field for any other, however large (an
    integer past a float's range cannot be converted, so it is out of range, not an error of ours)."""
    value = _require(body, name, (int, float), what)
    try:
        number = float(value)
    except OverflowError:
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        if isinstance(value, float) or abs(value) < 10**15:
            shown = repr(value)
        else:  # a long integer is named by its size, not spelled out
            shown = f"{number:.3g}" if math.isfinite(number) else "an integer too large for a float"
        raise HTTPProblem(
            422, "invalid_input", [{"field": name, "message": f"must be in [{low:g}, {high:g}], got {shown}"}]
        )
    return number


def parse_feedback(body: Any) -> tuple[str, str, float]:
    """``{request_id, metric, value}`` → a tuple, or 422 naming the field."""
    request_id = _require(body, "request_id", str, "the X-Request-Id of the answer")
    metric = _require(body, "metric", str, "a feedback metric name, e.g. human_review_score")
    value = _number_in(body, "value", 0, 1, "a number in [0, 1]")
    if not request_id.strip() or len(request_id) > 256:
        raise HTTPProblem(422, "invalid_input", [{"field": "request_id", "message": "1–256 characters"}])
    unknown = sorted(set(body) - {"request_id", "metric", "value"})
    if unknown:
        raise HTTPProblem(422, "invalid_input", [{"field": unknown[0], "message": "unknown field"}])
    return request_id, metric, value


def parse_action(action: str, body: Any) -> tuple[str, str, float | None]:
    """An admin action's body ``{reason, actor?, weight?}`` → (actor, reason, weight), or 422 naming the
    field."""
    reason = _require(body, "reason", str, "why, in words (it goes into the audit trail)")
    if not reason.strip():
        raise HTTPProblem(422, "invalid_input", [{"field": "reason", "message": "must not be blank"}])
    actor = body.get("actor", "operator")
    if not isinstance(actor, str) or not actor.strip():
        raise HTTPProblem(
            422, "invalid_input", [{"field": "actor", "message": "a name, e.g. alice@example.com"}]
        )
    weight = None
    if action == "set-weight":
        weight = _number_in(body, "weight", 0, 100, "a percent in [0, 100]")
    return actor, reason, weight
