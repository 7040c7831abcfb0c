"""Demo traffic: a bounded stream of requests from several tenants, with live per-arm numbers.

Traffic goes to loopback only and stops by itself (a request count and a time limit, whichever comes first).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

from models.data import demo_requests


@dataclass(frozen=True)
class Tenant:
    name: str
    tier: str
    region: str
    share: float  # of all requests


TENANTS = (
    Tenant("acme", "gold", "us-east", 0.30),
    Tenant("globex", "silver", "eu-west", 0.25),
    Tenant("initech", "bronze", "us-west", 0.20),
    Tenant("umbrella", "gold", "ap-south", 0.15),
    Tenant("hooli", "silver", "eu-west", 0.10),
)
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def require_loopback(url: str) -> None:
    """Refuses any target but this machine: demo and load traffic never leave loopback."""
    host = urlparse(url).hostname or ""
    if host not in _LOOPBACK and not host.startswith("127."):
        raise ValueError(f"traffic goes to loopback only (127.0.0.1, localhost, ::1), got host {host!r}")


@dataclass
class ArmStats:
    requests: int = 0
    failures: int = 0
    fallbacks: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=5000))

    def quantile(self, q: float) -> float | None:
        values = sorted(self.latencies_ms)
        return values[min(len(values) - 1, int(q * len(values)))] if values else None


@dataclass
class TrafficStats:
    """What the client saw, per arm and per tenant; safe to update from many threads."""

    arms: dict[str, ArmStats] = field(default_factory=lambda: defaultdict(ArmStats))
    tenant_arms: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    statuses: Counter[int] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def record(self, tenant: str, status: int, arm: str | None, fallback: bool, latency_ms: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            stats = self.arms[arm or "none"]
            stats.requests += 1
            stats.failures += status != 200
            stats.fallbacks += fallback
            stats.latencies_ms.append(latency_ms)
            if arm:
                self.tenant_arms[tenant][arm] += 1

    def candidate_share(self) -> float:
        answered = sum(s.requests for a, s in self.arms.items() if a in ("stable", "candidate"))
        return 100.0 * self.arms["candidate"].requests / answered if answered else 0.0


def drive(
    url: str,
    *,
    requests: int,
    duration_s: float,
    concurrency: int = 8,
    seed: int = 0,
    stats: TrafficStats | None = None,
    stop: threading.Event | None = None,
    on_tick: Callable[[TrafficStats], None] | None = None,
    feedback_rate: float = 0.0,
) -> TrafficStats:
    """Sends up to ``requests`` demo requests within ``duration_s`` seconds from ``concurrency`` workers.

    Each tenant has a pool of users; a user's id is the sticky routing key, so the same user keeps its arm.
    With ``feedback_rate`` > 0 that share of answers gets a simulated human review score (the same
    distribution for both arms) through ``POST /feedback``, as a labelling team would send it.
    """
    require_loopback(url)
    stats = stats or TrafficStats()
    stop = stop or threading.Event()
    bodies = demo_requests(512, seed=seed, kind="features")
    deadline = time.monotonic() + duration_s
    budget = iter(range(requests))
    budget_lock = threading.Lock()

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        with httpx.Client(base_url=url, timeout=30.0) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                with budget_lock:
                    if next(budget, None) is None:
                        return
                tenant = rng.choices(TENANTS, weights=[t.share for t in TENANTS])[0]
                headers = {
                    "X-Routing-Key": f"{tenant.name}-user-{rng.randrange(2000)}",
                    "X-Tenant": tenant.name,
                    "X-Tenant-Tier": tenant.tier,
                    "X-Region": tenant.region,
                }
                started = time.perf_counter()
                try:
                    response = client.post("/predict", json=rng.choice(bodies), headers=headers)
                    status, arm = response.status_code, response.headers.get("x-canary-arm")
                    fallback = "x-canary-fallback" in response.headers
                except httpx.HTTPError:
                    status, arm, fallback = 0, None, False
                stats.record(tenant.name, status, arm, fallback, 1000 * (time.perf_counter() - started))
                if status == 200 and rng.random() < feedback_rate:
                    review = {
                        "request_id": response.headers.get("x-request-id", ""),
                        "metric": "human_review_score",
                        "value": round(rng.uniform(0.85, 0.95), 3),
                    }
                    with contextlib.suppress(httpx.HTTPError):  # a lost score is a lost label, not a failure
                        client.post("/feedback", json=review)

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker, i) for i in range(concurrency)]
        while not all(f.done() for f in futures):
            time.sleep(0.25)
            if on_tick:
                on_tick(stats)
        for f in futures:
            f.result()
    return stats
