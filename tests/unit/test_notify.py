"""Webhooks and external checks through httpx.MockTransport (no network) with a sleep that only records."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from rollout.notify import (
    MAX_BACKOFF_S,
    CheckOutcome,
    CheckSpec,
    Delivery,
    Notifier,
    WebhookSpec,
    run_check,
)

Answer = httpx.Response | Exception


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Receiver:
    """Answers requests in turn from `answers` (the last one repeats); an exception is raised instead."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers) or [httpx.Response(200)]
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def bodies(self, url: str | None = None) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if url is None or str(r.url) == url]


def deliver(
    webhooks: Iterable[WebhookSpec],
    events: Iterable[dict[str, Any]],
    receiver: Receiver,
    sleep: FakeSleep | None = None,
    **kwargs: Any,
) -> Notifier:
    async def main() -> Notifier:
        notifier = Notifier(
            list(webhooks), transport=receiver.transport, sleep=sleep or FakeSleep(), **kwargs
        )
        for event in events:
            notifier.send(event)
        await notifier.drain()
        await notifier.aclose()
        return notifier

    return asyncio.run(main())


def hook(url: str = "http://hooks.test/canary", **kwargs: Any) -> WebhookSpec:
    return WebhookSpec(url=url, **kwargs)


EVENT = {"kind": "promotion", "app": "demo", "seq": 12, "from": "canary", "to": "promoted", "weight": 100.0}


def test_delivered_at_the_first_attempt_with_the_event_as_json_body():
    receiver, sleep = Receiver(httpx.Response(204)), FakeSleep()
    notifier = deliver([hook(headers={"Authorization": "Bearer s3cret"})], [EVENT], receiver, sleep)

    assert notifier.deliveries == [Delivery("http://hooks.test/canary", "promotion", 1, True, 204, None)]
    assert sleep.delays == [] and notifier.dropped == 0
    [request] = receiver.requests
    assert request.method == "POST" and json.loads(request.content) == EVENT
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "canary-serve"
    assert request.headers["Authorization"] == "Bearer s3cret"


def test_5xx_and_429_are_retried_with_exponential_backoff_until_delivered():
    receiver, sleep = Receiver(httpx.Response(500), httpx.Response(429), httpx.Response(200)), FakeSleep()
    notifier = deliver([hook()], [EVENT], receiver, sleep, backoff_s=0.5)

    assert notifier.deliveries == [Delivery("http://hooks.test/canary", "promotion", 3, True, 200, None)]
    assert sleep.delays == [0.5, 1.0]
    assert receiver.bodies() == [EVENT] * 3  # every attempt carries the same event


def test_backoff_is_capped():
    sleep = FakeSleep()
    notifier = deliver([hook(retries=10)], [EVENT], Receiver(httpx.Response(503)), sleep, backoff_s=1.0)

    assert sleep.delays == [1, 2, 4, 8, 16, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S, 30]
    assert notifier.deliveries[0].attempts == 11
    assert notifier.deliveries[0].error == "answered 503"


def test_4xx_is_final_and_logged_once(caplog: pytest.LogCaptureFixture):
    receiver, sleep = Receiver(httpx.Response(400)), FakeSleep()
    with caplog.at_level(logging.WARNING, logger="canary.notify"):
        notifier = deliver([hook()], [EVENT], receiver, sleep)

    [delivery] = notifier.deliveries
    assert (delivery.attempts, delivery.ok, delivery.status) == (1, False, 400)
    assert delivery.error is not None and "refused" in delivery.error
    assert len(receiver.requests) == 1 and sleep.delays == []
    assert [r.name for r in caplog.records] == ["canary.notify"]


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx.ReadTimeout("read timed out"), "timed out after 5s"),
        (httpx.ConnectError("connection refused"), "ConnectError: connection refused"),
    ],
)
def test_no_answer_is_retried_then_reported_with_one_log_line(
    failure: Exception, error: str, caplog: pytest.LogCaptureFixture
):
    sleep = FakeSleep()
    with caplog.at_level(logging.WARNING, logger="canary.notify"):
        notifier = deliver([hook(retries=2)], [EVENT], Receiver(failure), sleep)

    assert notifier.deliveries == [Delivery("http://hooks.test/canary", "promotion", 3, False, None, error)]
    assert sleep.delays == [0.5, 1.0]
    [record] = caplog.records
    assert "3 attempt(s)" in record.getMessage() and error in record.getMessage()


def test_no_answer_then_an_answer_is_delivered():
    receiver = Receiver(httpx.ConnectError("refused"), httpx.Response(200))
    notifier = deliver([hook()], [EVENT], receiver)
    assert notifier.deliveries[0].ok and notifier.deliveries[0].attempts == 2


def test_each_event_goes_to_the_webhooks_subscribed_to_its_kind_or_group():
    urls = {
        "every": (),
        "rollbacks": ("rollback",),
        "forward": ("promotion",),
        "decisions": ("decision",),
        "overrides": ("override",),
        "moves": ("transition",),
        "exact": ("paused", "check"),
    }
    hooks = [hook(f"http://hooks.test/{name}", **({"events": ev} if ev else {})) for name, ev in urls.items()]
    events = [
        {"kind": kind, "actor": actor, "seq": i}
        for i, (kind, actor) in enumerate(
            [
                ("started", "controller"),
                ("stage", "controller"),
                ("check", "external-check"),
                ("paused", "alice"),
                ("resumed", "alice"),
                ("override", "config"),
                ("rolled_back", "controller"),
                ("rolled_back", "bob"),
                ("promoted", "controller"),
                ("redeployed", "config"),
            ]
        )
    ]
    receiver = Receiver()
    notifier = deliver(hooks, events, receiver)

    def got(name: str) -> list[tuple[str, str]]:
        return sorted((b["kind"], b["actor"]) for b in receiver.bodies(f"http://hooks.test/{name}"))

    assert len(got("every")) == len(events)
    assert got("rollbacks") == [("rolled_back", "bob"), ("rolled_back", "controller")]
    assert got("forward") == [("promoted", "controller"), ("stage", "controller")]
    assert got("decisions") == [
        ("check", "external-check"),
        ("promoted", "controller"),
        ("rolled_back", "controller"),
        ("stage", "controller"),
    ]
    assert got("overrides") == [
        ("override", "config"),
        ("paused", "alice"),
        ("resumed", "alice"),
        ("rolled_back", "bob"),
    ]
    assert [k for k, _ in got("moves")] == sorted(
        ["started", "stage", "paused", "resumed", "override", "rolled_back", "rolled_back", "promoted"]
    )
    assert got("exact") == [("check", "external-check"), ("paused", "alice")]
    assert all(d.ok for d in notifier.deliveries)


def test_an_event_without_a_kind_goes_only_to_all():
    receiver = Receiver()
    deliver([hook("http://hooks.test/a"), hook("http://hooks.test/r", events=("rollback",))], [{}], receiver)
    assert [str(r.url) for r in receiver.requests] == ["http://hooks.test/a"]


def test_events_beyond_max_pending_are_dropped_and_counted():
    receiver = Receiver()
    # send() schedules without yielding, so all five arrive while the first two are still pending.
    notifier = deliver([hook()], [{**EVENT, "seq": i} for i in range(5)], receiver, max_pending=2)

    assert notifier.dropped == 3
    assert sorted(b["seq"] for b in receiver.bodies()) == [0, 1]


def test_the_event_is_serialised_when_sent_not_when_delivered():
    async def main(receiver: Receiver) -> None:
        notifier = Notifier([hook()], transport=receiver.transport)
        event = {"kind": "transition", "to": "canary"}
        notifier.send(event)
        event["to"] = "changed afterwards"
        await notifier.drain()
        await notifier.aclose()

    receiver = Receiver()
    asyncio.run(main(receiver))
    assert receiver.bodies() == [{"kind": "transition", "to": "canary"}]


def test_send_never_raises():
    receiver = Receiver(RuntimeError("bug in a transport"))
    circular: dict[str, Any] = {"kind": "decision"}
    circular["self"] = circular

    async def main() -> Notifier:
        notifier = Notifier([hook()], transport=receiver.transport, sleep=FakeSleep())
        notifier.send(EVENT)  # the transport raises: recorded, not retried
        notifier.send(circular)  # not JSON: dropped
        await notifier.drain()
        await notifier.aclose()
        notifier.send(EVENT)  # closed: dropped
        return notifier

    notifier = asyncio.run(main())
    assert notifier.deliveries == [
        Delivery("http://hooks.test/canary", "promotion", 1, False, None, "RuntimeError: bug in a transport")
    ]
    assert notifier.dropped == 2

    outside = Notifier([hook()], transport=receiver.transport)
    outside.send(EVENT)  # no running loop: dropped, not raised
    assert outside.dropped == 1


def test_only_the_last_hundred_deliveries_are_kept():
    notifier = deliver([hook()], [{**EVENT, "seq": i} for i in range(130)], Receiver())
    assert len(notifier.deliveries) == 100 and notifier.dropped == 0


def test_drain_returns_at_its_time_out_and_aclose_cancels_what_is_pending():
    async def main() -> Notifier:
        never = asyncio.Event()

        async def hang(request: httpx.Request) -> httpx.Response:
            await never.wait()
            return httpx.Response(200)

        notifier = Notifier([hook()], transport=httpx.MockTransport(hang))
        notifier.send(EVENT)
        await notifier.drain(timeout=0)
        await notifier.aclose()
        return notifier

    notifier = asyncio.run(main())
    assert notifier.deliveries == []


def test_an_attempt_is_bounded_by_timeout_s_as_a_whole():
    async def trickle(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()  # a receiver that never finishes answering
        return httpx.Response(200)

    async def main() -> Notifier:
        notifier = Notifier([hook(timeout_s=0.01, retries=0)], transport=httpx.MockTransport(trickle))
        notifier.send(EVENT)
        await notifier.drain()
        await notifier.aclose()
        return notifier

    [delivery] = asyncio.run(main()).deliveries
    assert (delivery.ok, delivery.error) == (False, "timed out after 0.01s")


def test_delivery_urls_hide_credentials_and_query_strings():
    url = "https://user:pw@hooks.test:8443/canary?token=abc"
    notifier = deliver([hook(url)], [EVENT], Receiver())
    assert notifier.deliveries[0].url == "https://hooks.test:8443/canary"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"url": "ftp://hooks.test/x"},
            "URL with a host, like 'https://hooks.example.com/canary', got 'ftp:",
        ),
        ({"url": "hooks.test/x"}, "got 'hooks.test/x'"),
        ({"url": "http://hooks.test:port/"}, "got 'http://hooks.test:port/'"),
        ({"url": "http://h.test", "timeout_s": 0}, "greater than 0"),
        ({"url": "http://h.test", "retries": 11}, "less than or equal to 10"),
        ({"url": "http://h.test", "events": ("promote",)}, "'rollback', 'decision', 'override', 'started'"),
        ({"url": "http://h.test", "events": ()}, "at least 1 item"),
        ({"url": "http://h.test", "headers": {"X-Token": "a\r\nX-Evil: 1"}}, "without line breaks"),
        ({"url": "http://h.test", "headers": {"Bad Name": "x"}}, "'Bad Name' is not a valid HTTP token"),
        ({"url": "http://h.test", "secret": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_webhook_specs_are_validated_at_load_time(fields: dict[str, Any], message: str):
    with pytest.raises(ValidationError) as info:
        WebhookSpec(**fields)
    assert message in str(info.value)


def test_a_header_value_is_not_quoted_back_in_the_message():
    with pytest.raises(ValidationError) as info:
        CheckSpec(url="http://h.test", headers={"Authorization": "Bearer s3cret\n"})
    [error] = info.value.errors()
    assert "'Authorization'" in error["msg"] and "s3cret" not in error["msg"]


def run(spec: CheckSpec, *answers: Answer, payload: dict[str, Any] | None = None) -> tuple[Any, ...]:
    receiver, sleep = Receiver(*answers), FakeSleep()
    outcome, reason = asyncio.run(
        run_check(spec, payload or {"stage": "canary"}, transport=receiver.transport, sleep=sleep)
    )
    return outcome, reason, len(receiver.requests), sleep.delays


CHECK = CheckSpec(url="http://checks.test/confirm")


@pytest.mark.parametrize(
    ("answers", "outcome", "reason", "attempts"),
    [
        ([httpx.Response(200)], "PASS", "answered 200", 1),
        ([httpx.Response(204)], "PASS", "answered 204", 1),
        ([httpx.Response(200, text="ok")], "PASS", "answered 200", 1),
        ([httpx.Response(200, json={"pass": True})], "PASS", "answered 200", 1),
        ([httpx.Response(200, json={"pass": False})], "FAIL", "answered 200 with pass: false", 1),
        (
            [httpx.Response(200, json={"status": "FAIL", "reason": "freeze"})],
            "FAIL",
            "status: FAIL: freeze",
            1,
        ),
        ([httpx.Response(200, json={"status": "ok", "message": "go"})], "PASS", "answered 200: go", 1),
        ([httpx.Response(403)], "FAIL", "answered 403", 1),
        ([httpx.Response(404)], "FAIL", "answered 404", 1),
        ([httpx.Response(302, headers={"Location": "/elsewhere"})], "FAIL", "answered 302", 1),
        ([httpx.Response(503)], "ERROR", "answered 503 after 2 attempts", 2),
        ([httpx.Response(429)], "ERROR", "answered 429 after 2 attempts", 2),
        ([httpx.Response(500), httpx.Response(200)], "PASS", "answered 200", 2),
        ([httpx.ReadTimeout("slow")], "ERROR", "timed out after 5s after 2 attempts", 2),
        ([httpx.ConnectError("refused")], "ERROR", "ConnectError: refused after 2 attempts", 2),
        ([ValueError("a bug")], "ERROR", "ValueError: a bug after 1 attempt", 1),
    ],
)
def test_run_check_reads_the_answer(answers: list[Answer], outcome: str, reason: str, attempts: int):
    got, why, requests, delays = run(CHECK, *answers)
    assert (got, requests) == (CheckOutcome(outcome), attempts)
    assert why.startswith("http://checks.test/confirm") and why.endswith(reason), why
    assert delays == [0.5] * (attempts - 1)


def test_run_check_posts_the_payload_as_json_and_hides_credentials_in_its_reason():
    receiver = Receiver(httpx.Response(403))
    spec = CheckSpec(url="https://ci:pw@checks.test/confirm?token=t0k", headers={"X-Team": "ml"})
    payload = {"app": "demo", "stage": "canary", "stage_index": 2}

    outcome, reason = asyncio.run(run_check(spec, payload, transport=receiver.transport, sleep=FakeSleep()))

    assert (outcome, reason) == (CheckOutcome.FAIL, "https://checks.test/confirm answered 403")
    assert receiver.bodies() == [payload] and receiver.requests[0].headers["X-Team"] == "ml"


def test_run_check_never_passes_what_it_cannot_send():
    circular: dict[str, Any] = {}
    circular["self"] = circular
    outcome, reason = asyncio.run(run_check(CHECK, circular, transport=Receiver().transport))
    assert outcome is CheckOutcome.ERROR and "Circular reference" in reason
