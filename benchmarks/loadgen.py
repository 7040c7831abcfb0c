"""The benchmarks' load generator: async HTTP (httpx) to loopback only, closed or open loop, bounded in time
and in count.

- Closed loop: ``concurrency`` clients each send one request, wait for its answer, send the next. What it
  measures is the service time the system gives that many clients; it cannot show queueing the clients
  themselves avoid by waiting (coordinated omission).
- Open loop: requests are scheduled at a fixed arrival rate (``t0 + i / rate``) whatever the answers do, and a
  request's latency runs from its *scheduled* send time. When the system (or this generator, at its in-flight
  cap) falls behind, the wait shows up in the latency instead of silently lowering the offered load.

Both measure the requests sent (or scheduled) inside ``[warm-up end, warm-up end + duration)``; throughput
is the successful answers that arrived inside that window per second. After the window, requests still in
flight get ``drain_s`` to finish; the rest are cancelled and counted as ``incomplete`` with their latency so
far, so a stuck tail cannot hide.

    result = closed_loop("http://127.0.0.1:8000", lambda rng: {"features": [0.1] * 30},
                         concurrency=8, duration_s=10)
    print(result.throughput, result.p99_ms)

Each request in flight has an `httpx.AsyncClient` of its own with one keep-alive connection: one client
shared by many connections spends CPU per request that grows with its pool (measured here: 1.4 ms at 8
connections, 13 ms at 64, 28 ms at 128), which on a small machine would starve the system under test.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

import httpx

BodyFactory = Callable[[random.Random], Any]
HeadersFactory = Callable[[random.Random], dict[str, str]]


class LoadError(ValueError):
    """A load setting that cannot be run (non-loopback target, zero rate, no bound); the message names it."""


def routing_key_headers(rng: random.Random) -> dict[str, str]:
    """A fresh sticky key per request, so a canary's weighted routing sees many users."""
    return {"X-Routing-Key": f"u{rng.getrandbits(40)}"}


def require_loopback(url: str) -> None:
    """Refuses any target but this machine (127.0.0.0/8, ::1, localhost)."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LoadError(f"load goes to loopback only (127.0.0.1, ::1, localhost); got host {host!r} in {url}")


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile by nearest rank (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class LoadResult:
    """What one load run measured. Latencies in ms; ``throughput`` is successful answers per second.

    Attributes:
        mode: ``closed`` or ``open``.
        requests: requests sent (closed) or scheduled (open) inside the measured window.
        ok: of those, answered 2xx.
        non_2xx: answered with another status.
        errors: transport errors and per-request time-outs.
        incomplete: still unanswered when the drain ended (cancelled; their latency so far is counted).
        sent: every request started, warm-up included (never more than ``max_requests``).
        seconds: the measured window's length.
        latencies_ms: per measured request, from its (scheduled) send to its end.
        send_lag_ms: open loop only: how late each measured request left compared with its schedule.
    """

    mode: Literal["closed", "open"]
    concurrency: int | None
    rate: float | None
    requests: int
    ok: int
    non_2xx: int
    errors: int
    incomplete: int
    sent: int
    seconds: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    send_lag_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-request lists (what results files keep)."""
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("latencies_ms", "send_lag_ms") and v is not None
        }


@dataclass
class _Record:
    measured: bool
    start: float  # scheduled (open) or actual (closed) send time
    sent_at: float
    end: float = math.nan
    status: int | None = None  # None: transport error or time-out
    done: bool = False


class _Run:
    """Shared state of one run: the client, the window, the records."""

    def __init__(
        self,
        url: str,
        path: str,
        body: BodyFactory,
        headers: HeadersFactory | None,
        *,
        duration_s: float,
        warmup_s: float,
        max_requests: int,
        timeout_s: float,
        drain_s: float | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        require_loopback(url)
        if not duration_s > 0:
            raise LoadError(f"duration_s must be > 0, got {duration_s}")
        if warmup_s < 0:
            raise LoadError(f"warmup_s must be >= 0, got {warmup_s}")
        if max_requests < 1:
            raise LoadError(f"max_requests must be >= 1, got {max_requests}")
        if not timeout_s > 0:
            raise LoadError(f"timeout_s must be > 0, got {timeout_s}")
        self.path, self.body, self.headers = path, body, headers
        self.duration_s, self.warmup_s, self.max_requests = duration_s, warmup_s, max_requests
        self.drain_s = timeout_s if drain_s is None else drain_s
        self.url, self.timeout_s, self.transport = url, timeout_s, transport
        self.tls = ssl.create_default_context()  # one for all clients: building one costs ~30 ms of CPU
        self.idle: list[httpx.AsyncClient] = []
        self.clients: list[httpx.AsyncClient] = []
        self.records: list[_Record] = []
        self.sent = 0
        self.t0 = time.perf_counter()
        self.window_start = self.t0 + warmup_s
        self.window_end = self.window_start + duration_s

    def client(self) -> httpx.AsyncClient:
        """An idle client, or a new one (the callers bound how many are in use at once)."""
        if self.idle:
            return self.idle.pop()
        client = httpx.AsyncClient(
            base_url=self.url,
            timeout=self.timeout_s,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            transport=self.transport,
            verify=self.tls,
        )
        self.clients.append(client)
        return client

    async def send(self, record: _Record, rng: random.Random) -> None:
        headers = self.headers(rng) if self.headers is not None else {}
        body = self.body(rng)
        client = self.client()
        record.sent_at = time.perf_counter()
        try:
            response = await client.post(self.path, json=body, headers=headers)
            record.status = response.status_code
        except httpx.HTTPError:
            record.status = None
        finally:
            self.idle.append(client)
        record.end = time.perf_counter()
        record.done = True

    async def drain(self, tasks: set[asyncio.Task[None]]) -> None:
        """Waits for in-flight requests until ``drain_s`` after the window; cancels the rest."""
        if tasks:
            remaining = self.window_end + self.drain_s - time.perf_counter()
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, remaining))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(client.aclose() for client in self.clients), return_exceptions=True)

    def result(
        self, mode: Literal["closed", "open"], concurrency: int | None, rate: float | None
    ) -> LoadResult:
        ended = time.perf_counter()
        measured = [r for r in self.records if r.measured]
        latencies = [1000 * ((r.end if r.done else ended) - r.start) for r in measured]
        statuses = Counter(str(r.status) if r.done and r.status is not None else "error" for r in measured)
        ok_in_window = sum(
            1
            for r in self.records
            if r.done
            and r.status is not None
            and 200 <= r.status < 300
            and self.window_start <= r.end < self.window_end
        )
        done = [r for r in measured if r.done]
        lag = [1000 * (r.sent_at - r.start) for r in measured] if mode == "open" else []
        return LoadResult(
            mode=mode,
            concurrency=concurrency,
            rate=rate,
            requests=len(measured),
            ok=sum(1 for r in done if r.status is not None and 200 <= r.status < 300),
            non_2xx=sum(1 for r in done if r.status is not None and not 200 <= r.status < 300),
            errors=sum(1 for r in done if r.status is None),
            incomplete=sum(1 for r in measured if not r.done),
            sent=self.sent,
            seconds=self.duration_s,
            throughput=ok_in_window / self.duration_s,
            p50_ms=quantile(latencies, 0.50),
            p95_ms=quantile(latencies, 0.95),
            p99_ms=quantile(latencies, 0.99),
            max_ms=max(latencies) if latencies else math.nan,
            send_lag_p99_ms=quantile(lag, 0.99) if mode == "open" else None,
            statuses=dict(sorted(statuses.items())),
            latencies_ms=latencies,
            send_lag_ms=lag,
        )


async def run_closed(
    url: str,
    body: BodyFactory,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    max_requests: int = 1_000_000,
    path: str = "/predict",
    headers: HeadersFactory | None = routing_key_headers,
    timeout_s: float = 30.0,
    drain_s: float | None = None,
    seed: int = 0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LoadResult:
    """Closed loop: ``concurrency`` clients, one request in flight each (see the module's doc)."""
    if concurrency < 1:
        raise LoadError(f"concurrency must be >= 1, got {concurrency}")
    run = _Run(
        url,
        path,
        body,
        headers,
        duration_s=duration_s,
        warmup_s=warmup_s,
        max_requests=max_requests,
        timeout_s=timeout_s,
        drain_s=drain_s,
        transport=transport,
    )

    async def client(i: int) -> None:
        rng = random.Random(seed * 1_000_003 + i)
        while run.sent < run.max_requests:
            now = time.perf_counter()
            if now >= run.window_end:
                return
            run.sent += 1
            record = _Record(measured=now >= run.window_start, start=now, sent_at=now)
            run.records.append(record)
            await run.send(record, rng)

    tasks = {asyncio.create_task(client(i)) for i in range(concurrency)}
    await run.drain(tasks)
    return run.result("closed", concurrency, None)


async def run_open(
    url: str,
    body: BodyFactory,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 1.0,
    max_requests: int = 1_000_000,
    max_in_flight: int = 512,
    path: str = "/predict",
    headers: HeadersFactory | None = routing_key_headers,
    timeout_s: float = 30.0,
    drain_s: float | None = None,
    seed: int = 0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LoadResult:
    """Open loop at ``rate`` requests/s; latency from each request's scheduled send (see the module's doc).

    A request that finds ``max_in_flight`` requests outstanding waits for a slot; that wait is part of its
    latency, as it would be for a real client whose request the system is not ready to take.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise LoadError(f"rate must be a positive number of requests per second, got {rate}")
    if max_in_flight < 1:
        raise LoadError(f"max_in_flight must be >= 1, got {max_in_flight}")
    run = _Run(
        url,
        path,
        body,
        headers,
        duration_s=duration_s,
        warmup_s=warmup_s,
        max_requests=max_requests,
        timeout_s=timeout_s,
        drain_s=drain_s,
        transport=transport,
    )
    slots = asyncio.Semaphore(max_in_flight)
    rng = random.Random(seed)
    tasks: set[asyncio.Task[None]] = set()

    async def one(record: _Record, request_rng: random.Random) -> None:
        async with slots:
            await run.send(record, request_rng)

    i = 0
    while run.sent < run.max_requests:
        scheduled = run.t0 + i / rate
        if scheduled >= run.window_end:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        run.sent += 1
        record = _Record(measured=scheduled >= run.window_start, start=scheduled, sent_at=scheduled)
        run.records.append(record)
        task = asyncio.create_task(one(record, random.Random(rng.getrandbits(64))))
        tasks.add(task)  # a strong reference until done: the loop holds tasks only weakly
        task.add_done_callback(tasks.discard)
        i += 1
    await run.drain(set(tasks))
    return run.result("open", None, rate)


def closed_loop(url: str, body: BodyFactory, **kwargs: Any) -> LoadResult:
    """`run_closed` from synchronous code (its own event loop)."""
    return asyncio.run(run_closed(url, body, **kwargs))


def open_loop(url: str, body: BodyFactory, **kwargs: Any) -> LoadResult:
    """`run_open` from synchronous code (its own event loop)."""
    return asyncio.run(run_open(url, body, **kwargs))
