"""Webhooks and external checks of a rollout, as Flagger and Argo Rollouts users expect them.

A `Notifier` POSTs each rollout event (a transition, a promotion, a rollback, a decision, an override) as JSON
to every webhook that subscribed to its kind, with retries and a time-out, without ever blocking or failing
the controller. `run_check` asks an external URL whether a stage may be left (Flagger's confirm-promotion)
and answers PASS, FAIL or ERROR; a receiver that is down is an ERROR, never a pass.

No Ray here and no clock: the HTTP transport and the sleep between retries are passed in, so tests use
``httpx.MockTransport`` and a sleep that only records its delays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

logger = logging.getLogger("canary.notify")

EventKind = Literal[
    # groups
    "all", "transition", "promotion", "rollback", "decision", "override",
    # the kinds of event a controller records, for a webhook that wants exactly these
    "started", "stage", "awaiting_approval", "approved", "paused", "resumed", "weight_set", "weights",
    "promoted", "rolled_back", "awaiting_review", "closed", "redeployed", "superseded", "check", "restaged",
]  # fmt: skip

# What each group sends. A kind in several groups is sent once to a webhook that names several.
_TRANSITIONS = frozenset(
    {"started", "stage", "awaiting_approval", "approved", "paused", "resumed", "weight_set", "weights",
     "override", "promoted", "rolled_back", "awaiting_review", "closed", "superseded", "restaged"}
)  # fmt: skip
_FORWARD = frozenset({"stage", "approved", "promoted"})
_JUDGED = frozenset({"stage", "awaiting_approval", "promoted", "rolled_back"})
_OWN_ACTORS = frozenset({"controller", "config", "external-check"})


def event_groups(event: dict[str, Any]) -> frozenset[str]:
    """The names a webhook's ``events`` may list to receive ``event``: its own kind, ``all``, and each group.

    - ``transition``: the rollout's phase, stage or weights changed;
    - ``promotion``: the candidate moved forward (a stage entered, approved, or promoted to 100 %);
    - ``rollback``: the candidate was rolled back, by the controller or by an operator;
    - ``decision``: what the controller decided on the evidence (entered a stage, asked for approval,
      promoted, rolled back) and what an external check answered;
    - ``override``: a person took over: an operator action, or weights edited in the deployed config.

    Example:
        >>> sorted(event_groups({"kind": "rolled_back", "actor": "controller"}))
        ['all', 'decision', 'rollback', 'rolled_back', 'transition']
        >>> sorted(event_groups({"kind": "rolled_back", "actor": "alice"}))
        ['all', 'override', 'rollback', 'rolled_back', 'transition']
    """
    kind, actor = str(event.get("kind", "")), str(event.get("actor", ""))
    groups = {"all", kind}
    if kind in _TRANSITIONS:
        groups.add("transition")
    if kind in _FORWARD:
        groups.add("promotion")
    if kind == "rolled_back":
        groups.add("rollback")
    if (kind in _JUDGED and actor == "controller") or kind == "check":
        groups.add("decision")
    if kind == "override" or (kind in _TRANSITIONS and actor and actor not in _OWN_ACTORS):
        groups.add("override")
    return frozenset(groups)


Sleep = Callable[[float], Awaitable[None]]

MAX_BACKOFF_S = 30.0
"""Longest wait between two attempts: ``backoff_s * 2**n`` with 10 retries would otherwise reach minutes."""

KEPT_DELIVERIES = 100
USER_AGENT = "canary-serve"

# RFC 9110 token characters: what httpx would otherwise reject on the first event, not at load time.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_url(value: str) -> str:
    expected = "an http:// or https:// URL with a host, like 'https://hooks.example.com/canary'"
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a port that is not a number
        httpx.URL(value)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ValueError(f"expected {expected}, got {value!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        raise ValueError(f"expected {expected}, got {value!r}")
    return value


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP token; use letters, digits and '-'")
        # The value is not quoted back: it is usually a secret (an Authorization header).
        if not all(c == "\t" or " " <= c <= "~" for c in value):
            raise ValueError(f"header {name!r}: the value must be printable ASCII without line breaks")
    return headers


class _Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="http:// or https:// URL that receives the POST")
    timeout_s: float = Field(5.0, gt=0, le=60, description="seconds one attempt may take in all, (0, 60]")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra request headers, e.g. an Authorization header"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_headers(value)


class WebhookSpec(_Endpoint):
    """A receiver of rollout events.

    Example:
        >>> spec = WebhookSpec(url="https://hooks.example.com/canary", events=("rollback",))
        >>> spec.retries, spec.timeout_s
        (3, 5.0)
    """

    events: tuple[EventKind, ...] = Field(
        ("all",),
        min_length=1,
        description=(
            "what to send: 'all', a group (transition, promotion, rollback, decision, override) or an "
            "event kind (rolled_back, promoted, stage, ...)"
        ),
    )
    retries: int = Field(
        3, ge=0, le=10, description="attempts after the first on 5xx, 429 or no answer, 0–10"
    )


class CheckSpec(_Endpoint):
    """An external check that must answer pass before the controller leaves a stage (Flagger's
    confirm-promotion). See `run_check` for how its answers are read.
    """

    retries: int = Field(
        1, ge=0, le=10, description="attempts after the first on 5xx, 429 or no answer, 0–10"
    )


@dataclass(frozen=True)
class Delivery:
    """The outcome of one event sent to one webhook.

    Attributes:
        url: the webhook's URL without credentials or query string (they may hold secrets).
        event_kind: the event's ``kind``.
        attempts: requests made, 1 + retries at most; 0 when none could be made.
        ok: whether the receiver answered 2xx.
        status: the last HTTP status received, None when no attempt got an answer.
        error: why it was not delivered, None when ``ok``.
    """

    url: str
    event_kind: str
    attempts: int
    ok: bool
    status: int | None
    error: str | None


class CheckOutcome(StrEnum):
    """What an external check said: PASS (go on), FAIL (the check says no), ERROR (no usable answer)."""

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"


class Notifier:
    """Sends rollout events to webhooks in the background, so a slow or dead receiver never holds the
    controller up.

    Each event goes to every webhook whose ``events`` name its kind or one of its groups (`event_groups`;
    ``"all"`` takes every event), as the JSON body
    of a POST. A 2xx answer delivers it. 5xx, 429, time-outs and connection errors are retried up to
    ``retries`` times, waiting ``backoff_s * 2**n`` seconds (at most `MAX_BACKOFF_S`, no jitter: one
    controller sends, there is no herd to spread) before retry n+1; any other answer is final, the receiver
    refused the event. Deliveries of one event run concurrently, and events may overtake each other while
    retried: receivers order them by the event's own ``seq``.

    Args:
        webhooks: the receivers.
        transport: the HTTP transport (``httpx.MockTransport`` in tests); httpx's default when None.
        sleep: awaited between attempts; tests pass one that records the delays and returns at once.
        backoff_s: the first wait between attempts, seconds.
        max_pending: events being delivered at most; beyond it new events are dropped and counted.

    Example:
        >>> import asyncio, httpx
        >>> async def main() -> list[Delivery]:
        ...     ok = httpx.MockTransport(lambda request: httpx.Response(204))
        ...     notifier = Notifier([WebhookSpec(url="http://hooks.test/canary")], transport=ok)
        ...     notifier.send({"kind": "promoted", "actor": "controller", "app": "demo", "seq": 7})
        ...     await notifier.drain()
        ...     await notifier.aclose()
        ...     return notifier.deliveries
        >>> [(d.url, d.event_kind, d.ok, d.status) for d in asyncio.run(main())]
        [('http://hooks.test/canary', 'promoted', True, 204)]
    """

    def __init__(
        self,
        webhooks: Sequence[WebhookSpec],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        backoff_s: float = 0.5,
        max_pending: int = 1000,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending!r}")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must be 0 or more seconds, got {backoff_s!r}")
        self._webhooks = tuple(webhooks)
        self._transport = transport
        self._sleep = sleep
        self._backoff_s = backoff_s
        self._max_pending = max_pending
        # Created on first use, inside the event loop that will use its connections.
        self._client: httpx.AsyncClient | None = None
        # Strong references: the loop keeps only weak ones, and a collected task is a lost event.
        self._tasks: set[asyncio.Task[None]] = set()
        self._deliveries: deque[Delivery] = deque(maxlen=KEPT_DELIVERIES)
        self._dropped = 0
        self._closed = False

    @property
    def deliveries(self) -> list[Delivery]:
        """The last `KEPT_DELIVERIES` outcomes, oldest first (for ``GET /rollout`` and the report)."""
        return list(self._deliveries)

    @property
    def dropped(self) -> int:
        """Events not sent: over ``max_pending``, outside an event loop, after `aclose`, or not JSON."""
        return self._dropped

    def send(self, event: dict[str, Any]) -> None:
        """Schedules delivery of ``event`` to each webhook subscribed to its kind or group; returns at once.

        Call it from inside the running event loop (the controller's). The event is serialised now, so the
        caller may change the dict afterwards. Never raises: a problem is logged and the event counted in
        `dropped`.
        """
        try:
            self._schedule(event)
        except Exception:
            # Notifying is a side effect of the rollout: it must never break the transition that caused it.
            self._drop("could not be scheduled", event, log_exception=True)

    def _schedule(self, event: dict[str, Any]) -> None:
        kind, groups = str(event.get("kind", "")), event_groups(event)
        targets = [w for w in self._webhooks if groups.intersection(w.events)]
        if not targets:
            return
        if self._closed:
            self._drop("the notifier is closed", event)
            return
        if len(self._tasks) >= self._max_pending:
            self._drop(f"{self._max_pending} events are already pending", event)
            return
        loop = asyncio.get_running_loop()
        # default=str: an enum or a datetime in an event should not cost the whole event.
        body = json.dumps(event, default=str).encode()
        task = loop.create_task(self._deliver_all(targets, kind, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop(self, why: str, event: object, *, log_exception: bool = False) -> None:
        self._dropped += 1
        # The first drop and then one in a hundred: a dead receiver under a flood must not flood the log.
        if self._dropped == 1 or self._dropped % 100 == 0:
            kind = event.get("kind") if isinstance(event, dict) else None
            logger.warning(
                "webhook event %r dropped: %s (%d dropped so far)",
                kind,
                why,
                self._dropped,
                exc_info=log_exception,
            )

    async def _deliver_all(self, targets: list[WebhookSpec], kind: str, body: bytes) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, follow_redirects=False)
        client = self._client
        await asyncio.gather(*(self._deliver(client, spec, kind, body) for spec in targets))

    async def _deliver(self, client: httpx.AsyncClient, spec: WebhookSpec, kind: str, body: bytes) -> None:
        where = _display_url(spec.url)
        try:
            result = await _post(
                client,
                spec.url,
                body,
                _headers(spec.headers),
                timeout_s=spec.timeout_s,
                retries=spec.retries,
                sleep=self._sleep,
                backoff_s=self._backoff_s,
            )
        except Exception as exc:  # e.g. the injected sleep failing: still one recorded, logged outcome
            result = _Attempts(0, None, _describe(exc, spec.timeout_s))
        status = result.response.status_code if result.response is not None else None
        ok = status is not None and 200 <= status < 300
        error = None
        if not ok:
            if result.error is not None:
                error = result.error
            elif status is not None and _retryable(status):
                error = f"answered {status}"
            else:
                error = f"answered {status}, not retried: the receiver refused the event"
        self._deliveries.append(Delivery(where, kind, result.attempts, ok, status, error))
        if not ok:
            logger.warning(
                "webhook %s: %r event not delivered after %d attempt(s): %s",
                where,
                kind,
                result.attempts,
                error,
            )

    async def drain(self, timeout: float | None = None) -> None:
        """Waits until every pending delivery has finished, or ``timeout`` seconds have passed.

        Args:
            timeout: seconds to wait at most; None waits as long as deliveries take (bounded by each
                webhook's ``timeout_s``, ``retries`` and the backoff).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # A loop, not one wait: events sent while draining are waited for too.
        while self._tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)

    async def aclose(self) -> None:
        """Cancels deliveries still pending and closes the HTTP client; later events are dropped.

        For a clean shutdown, ``await drain(timeout)`` first.
        """
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def run_check(
    spec: CheckSpec,
    payload: dict[str, Any],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
    backoff_s: float = 0.5,
) -> tuple[CheckOutcome, str]:
    """Asks an external check whether the rollout may leave its stage; POSTs ``payload`` as JSON.

    How the answer is read:

    - 2xx: PASS, unless the JSON body says ``{"pass": false}`` or ``{"status": "fail"}`` (or ``"failed"``,
      any case): then FAIL. A body that is not JSON, or says nothing of the two, is a PASS.
    - 5xx or 429, a time-out or a connection error, once the ``retries`` are spent: ERROR. Never a pass: the
      controller stays in the stage and asks again.
    - Any other status (4xx, 3xx: redirects are not followed): FAIL, the check says no. A wrong URL
      (404) or missing credentials (401) therefore read as "no": the reason names the status.
    - Anything unexpected (a payload that is not JSON, a library error): ERROR.

    Retries wait ``backoff_s * 2**n`` seconds (at most `MAX_BACKOFF_S`) through ``sleep``.

    Args:
        spec: the check.
        payload: the JSON body, e.g. the app, the rollout id, the stage and the gates' verdicts.
        transport: the HTTP transport (``httpx.MockTransport`` in tests); httpx's default when None.
        sleep: awaited between attempts.
        backoff_s: the first wait between attempts, seconds.

    Returns:
        The outcome and a short reason for people, e.g. ``"http://x/confirm answered 403"``. The reason
        includes the body's ``reason`` or ``message`` string when it has one.

    Example:
        >>> import asyncio, httpx
        >>> no = httpx.MockTransport(lambda r: httpx.Response(200, json={"pass": False, "reason": "freeze"}))
        >>> asyncio.run(run_check(CheckSpec(url="http://checks.test/ok"), {"stage": 2}, transport=no))
        (<CheckOutcome.FAIL: 'FAIL'>, 'http://checks.test/ok answered 200 with pass: false: freeze')
    """
    where = _display_url(spec.url)
    try:
        body = json.dumps(payload, default=str).encode()
        async with httpx.AsyncClient(transport=transport, follow_redirects=False) as client:
            result = await _post(
                client,
                spec.url,
                body,
                _headers(spec.headers),
                timeout_s=spec.timeout_s,
                retries=spec.retries,
                sleep=sleep,
                backoff_s=backoff_s,
            )
    except Exception as exc:  # whatever failed, it is not a yes
        return CheckOutcome.ERROR, f"{where}: {_describe(exc, spec.timeout_s)}"
    return _read_check_answer(where, result)


def _read_check_answer(where: str, result: _Attempts) -> tuple[CheckOutcome, str]:
    tries = f"{result.attempts} attempt{'s' if result.attempts != 1 else ''}"
    if result.response is None:
        return CheckOutcome.ERROR, f"{where}: {result.error} after {tries}"
    status = result.response.status_code
    if _retryable(status):
        return CheckOutcome.ERROR, f"{where} answered {status} after {tries}"
    if not 200 <= status < 300:
        return CheckOutcome.FAIL, f"{where} answered {status}"
    try:
        answer = result.response.json()
    except ValueError:  # an empty or plain-text 200 is a yes, as in Flagger
        return CheckOutcome.PASS, f"{where} answered {status}"
    said = ""
    if isinstance(answer, dict):
        why = answer.get("reason") or answer.get("message")
        said = f": {why[:200]}" if isinstance(why, str) and why else ""
        if answer.get("pass") is False:
            return CheckOutcome.FAIL, f"{where} answered {status} with pass: false{said}"
        if str(answer.get("status", "")).lower() in ("fail", "failed"):
            return CheckOutcome.FAIL, f"{where} answered {status} with status: {answer['status']}{said}"
    return CheckOutcome.PASS, f"{where} answered {status}{said}"


@dataclass(frozen=True)
class _Attempts:
    attempts: int
    response: httpx.Response | None  # the last answer, None when no attempt got one
    error: str | None  # why the last attempt got no answer


async def _post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    retries: int,
    sleep: Sleep,
    backoff_s: float,
) -> _Attempts:
    attempt = 0
    while True:
        attempt += 1
        response: httpx.Response | None = None
        error: str | None = None
        try:
            # httpx's timeout bounds each phase (connect, write, each read); this bounds the whole attempt,
            # so a receiver trickling bytes cannot hold a delivery for minutes.
            async with asyncio.timeout(timeout_s):
                response = await client.post(url, content=body, headers=headers, timeout=timeout_s)
        except (httpx.TransportError, TimeoutError) as exc:
            error = _describe(exc, timeout_s)
        except Exception as exc:  # not a network problem: another attempt would fail the same way
            return _Attempts(attempt, None, _describe(exc, timeout_s))
        if response is not None and not _retryable(response.status_code):
            return _Attempts(attempt, response, None)
        if attempt > retries:
            return _Attempts(attempt, response, error)
        await sleep(min(MAX_BACKOFF_S, backoff_s * 2 ** (attempt - 1)))


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429


def _headers(extra: dict[str, str]) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT, **extra}


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"timed out after {timeout_s:g}s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _display_url(url: str) -> str:
    """The URL without user:password and query string, which often carry tokens."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
