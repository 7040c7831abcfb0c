"""The benchmarks' load generator against an in-process fake server (httpx's MockTransport): counts add up,
bounds hold, and the open loop charges queueing to the requests that waited. Latencies are compared with
each other, never with a speed the machine must reach."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest

from benchmarks.loadgen import LoadError, require_loopback, run_closed, run_open

URL = "http://127.0.0.1:9"  # never contacted: the transport answers


def server(handler):
    return httpx.MockTransport(handler)


def body(rng):
    return {"features": [rng.random() for _ in range(3)]}


def test_closed_loop_counts_add_up_and_every_status_is_kept():
    seen = itertools.count(1)

    async def handler(request: httpx.Request) -> httpx.Response:
        n = next(seen)
        await asyncio.sleep(0)
        if n % 7 == 0:
            raise httpx.ConnectError("refused", request=request)
        assert request.headers["X-Routing-Key"].startswith("u")
        return httpx.Response(503 if n % 5 == 0 else 200, json={"ok": True})

    result = asyncio.run(
        run_closed(URL, body, concurrency=4, duration_s=1.0, warmup_s=0.2, transport=server(handler))
    )
    assert result.requests > 0 and result.sent >= result.requests
    assert result.requests == result.ok + result.non_2xx + result.errors + result.incomplete
    assert result.non_2xx > 0 and result.errors > 0
    assert sum(result.statuses.values()) == result.requests
    assert (
        result.statuses.get("503", 0) == result.non_2xx and result.statuses.get("error", 0) == result.errors
    )
    assert next(seen) - 1 == result.sent  # every request the generator started reached the server once
    assert len(result.latencies_ms) == result.requests


def test_closed_loop_stops_at_max_requests():
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    result = asyncio.run(
        run_closed(
            URL, body, concurrency=3, duration_s=30, warmup_s=0, max_requests=25, transport=server(handler)
        )
    )
    assert result.sent == len(calls) == 25
    assert result.requests == result.ok == 25


def test_a_server_that_never_answers_ends_the_run_at_the_drain_and_counts_the_wait():
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()  # never set
        return httpx.Response(200)

    result = asyncio.run(
        run_closed(
            URL, body, concurrency=5, duration_s=0.1, warmup_s=0, drain_s=0.1, transport=server(handler)
        )
    )
    assert result.requests == result.incomplete == 5 and result.ok == 0
    assert result.throughput == 0
    assert min(result.latencies_ms) >= 200 * 0.9  # window + drain: the wait is counted, not dropped


def test_open_loop_sends_on_schedule_and_measures_only_the_window():
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    # 40 req/s: sends at 0, 25, 50, ... ms; the window [110 ms, 410 ms) holds sends 5..16.
    result = asyncio.run(
        run_open(URL, body, rate=40, duration_s=0.3, warmup_s=0.11, transport=server(handler))
    )
    assert result.sent == 17
    assert result.requests == result.ok == 12
    assert result.mode == "open" and result.rate == 40


def test_open_loop_latency_includes_the_wait_a_closed_loop_hides():
    """One request at a time, 10 ms each, offered 200/s: the server keeps up with a closed loop, but an open
    loop's requests queue behind each other, and their latency (from the scheduled send) shows it."""
    busy = asyncio.Lock()

    async def handler(request: httpx.Request) -> httpx.Response:
        async with busy:  # a server that serves one request at a time
            await asyncio.sleep(0.01)
        return httpx.Response(200)

    closed = asyncio.run(
        run_closed(URL, body, concurrency=1, duration_s=0.4, warmup_s=0, transport=server(handler))
    )
    busy = asyncio.Lock()  # bound to the next loop
    opened = asyncio.run(run_open(URL, body, rate=200, duration_s=0.4, warmup_s=0, transport=server(handler)))
    assert opened.requests == 80 and opened.ok == 80  # all answered in the drain
    # Half the offered load gets served in the window, the rest queues: the last ones wait ~0.4 s.
    assert opened.p99_ms > 5 * closed.p99_ms
    assert opened.p50_ms > 3 * closed.p50_ms


def test_open_loop_in_flight_cap_shows_up_as_send_lag_and_latency():
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        return httpx.Response(200)

    result = asyncio.run(
        run_open(URL, body, rate=200, duration_s=0.3, warmup_s=0, max_in_flight=1, transport=server(handler))
    )
    assert result.requests == result.ok == 60
    served = [latency - lag for latency, lag in zip(result.latencies_ms, result.send_lag_ms, strict=True)]
    # Sent late (held at the cap), yet each one's own service stayed short: the lag is counted in latency.
    assert result.send_lag_p99_ms is not None and result.send_lag_p99_ms > 10 * max(min(served), 1.0)
    assert result.p99_ms >= result.send_lag_p99_ms


def test_only_successes_inside_the_window_count_as_throughput():
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    result = asyncio.run(
        run_closed(URL, body, concurrency=2, duration_s=0.1, warmup_s=0, transport=server(handler))
    )
    assert result.requests > 0 and result.non_2xx == result.requests
    assert result.throughput == 0


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://127.5.0.1", "http://localhost:8000/x", "http://[::1]:8000"]
)
def test_loopback_targets_are_allowed(url):
    require_loopback(url)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:8000", "http://example.com", "http://0.0.0.0:8000", "/predict"]
)
def test_anything_but_loopback_is_refused_before_a_request(url):
    with pytest.raises(LoadError, match="loopback only"):
        asyncio.run(run_closed(url, body, concurrency=1, duration_s=0.1))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 1, "duration_s": 0}, "duration_s"),
        ({"concurrency": 1, "max_requests": 0}, "max_requests"),
        ({"concurrency": 1, "warmup_s": -1}, "warmup_s"),
    ],
)
def test_closed_loop_settings_that_cannot_run_are_refused_by_name(kwargs, named):
    kwargs = {"duration_s": 0.1, **kwargs}
    with pytest.raises(LoadError, match=named):
        asyncio.run(run_closed(URL, body, **kwargs))


@pytest.mark.parametrize(
    ("rate", "cap", "named"), [(0, 4, "rate"), (float("inf"), 4, "rate"), (10, 0, "max_in_flight")]
)
def test_open_loop_settings_that_cannot_run_are_refused_by_name(rate, cap, named):
    with pytest.raises(LoadError, match=named):
        asyncio.run(run_open(URL, body, rate=rate, max_in_flight=cap, duration_s=0.1))
