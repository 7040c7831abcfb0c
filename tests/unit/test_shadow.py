"""The shadow mirror in isolation: fire-and-forget, capped, counted, never raising."""

import asyncio
import random
from dataclasses import dataclass

from serving.segments import ALL
from serving.shadow import ShadowMirror
from serving.telemetry import Window


@dataclass
class FakeOutcome:
    status: str
    output: dict | None = None
    latency_s: float = 0.01


STABLE = FakeOutcome("ok", {"prediction": "legit", "confidence": 0.9, "model_version": "v1"})


def make_mirror(cap=64):
    window = Window()
    answers = []
    mirror = ShadowMirror(
        window, lambda arm, outcome, segs: answers.append((arm, outcome.status)), random.Random(1)
    )
    mirror.percent = 100
    mirror.max_in_flight = cap
    return mirror, window, answers


def resolved(outcome=STABLE):
    future = asyncio.get_running_loop().create_future()
    future.set_result(outcome)
    return future


def test_counters_add_up_over_every_kind_of_outcome():
    async def scenario():
        mirror, window, answers = make_mirror()

        async def answer(status, output=None, raise_=False):
            await asyncio.sleep(0)
            if raise_:
                raise RuntimeError("boom")
            return FakeOutcome(status, output)

        segs = [("tenant", "acme")]
        mirror.mirror(lambda: answer("ok", {"prediction": "fraud", "confidence": 0.6}), resolved(), segs)
        mirror.mirror(lambda: answer("ok", {"prediction": "legit", "confidence": 0.8}), resolved(), segs)
        mirror.mirror(lambda: answer("contract", {"prediction": "legit"}), resolved(), segs)
        mirror.mirror(lambda: answer("timeout"), resolved(), segs)
        mirror.mirror(lambda: answer("error"), resolved(), segs)
        mirror.mirror(lambda: answer("ok", raise_=True), resolved(), segs)
        await mirror.drain(5)
        return window, answers

    window, answers = asyncio.run(scenario())
    for segment in (ALL, ("tenant", "acme")):
        s = window.shadow_in(segment)
        assert s.mirrored == 6 == s.completed + s.dropped + s.timed_out + s.failed
        assert (s.completed, s.timed_out, s.failed, s.compared, s.agreed) == (3, 1, 2, 2, 1)
    assert len(answers) == 5  # the raised one never produced an answer to record


def test_in_flight_cap_drops_and_counts_instead_of_queueing():
    async def scenario():
        mirror, window, _ = make_mirror(cap=3)
        release = asyncio.Event()

        async def slow():
            await release.wait()
            return FakeOutcome("ok", {"prediction": "legit", "confidence": 0.9})

        for _ in range(10):
            mirror.mirror(slow, resolved(), [])
        peak = mirror.in_flight
        release.set()
        await mirror.drain(5)
        return peak, window.shadow_in(ALL), mirror.in_flight

    peak, stats, after = asyncio.run(scenario())
    assert peak == 3 and after == 0
    assert stats.mirrored == 10 and stats.dropped == 7 and stats.completed == 3


def test_a_mirror_returns_at_once_and_leaves_the_call_running():
    async def scenario():
        mirror, window, _ = make_mirror()
        never = asyncio.Event()

        async def hangs():
            await never.wait()

        result = mirror.mirror(hangs, resolved(), [])  # a plain call: nothing for the caller to await
        await asyncio.sleep(0)
        return result, mirror.in_flight, window.shadow_in(ALL).completed

    result, in_flight, completed = asyncio.run(scenario())
    assert result is None and in_flight == 1 and completed == 0


def test_sampling_follows_the_percent():
    mirror, _, _ = make_mirror()
    mirror.percent = 10
    share = sum(mirror.sampled() for _ in range(20_000)) / 20_000
    assert 0.09 < share < 0.11
    mirror.percent = 0
    assert not any(mirror.sampled() for _ in range(1000))
