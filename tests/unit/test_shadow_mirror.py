"""The shadow mirror in isolation: coalesced, fire-and-forget, capped, counted, never raising."""

import asyncio
import logging
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


class FakeCandidate:
    """Answers each mirrored item by its `kind` field; records how many calls it received."""

    def __init__(self, release: asyncio.Event | None = None, raise_on_call: bool = False) -> None:
        self.calls: list[int] = []
        self.release = release
        self.raise_on_call = raise_on_call

    async def send(self, items):
        self.calls.append(len(items))
        if self.release is not None:
            await self.release.wait()
        if self.raise_on_call:
            raise RuntimeError("candidate unreachable")
        return [_answer(inputs["kind"]) for inputs, _ in items]


def _answer(kind):
    return {
        "agree": FakeOutcome("ok", {"prediction": "legit", "confidence": 0.8}),
        "disagree": FakeOutcome("ok", {"prediction": "fraud", "confidence": 0.6}),
        "contract": FakeOutcome("contract", {"prediction": "legit"}),
        "timeout": FakeOutcome("timeout"),
        "error": FakeOutcome("error"),
    }[kind]


def make_mirror(candidate, cap=64, batch_size=16, wait_s=0.001):
    window = Window()
    answers = []
    mirror = ShadowMirror(
        window, candidate.send, lambda arm, o, segs: answers.append((arm, o.status)), random.Random(1)
    )
    mirror.percent, mirror.max_in_flight, mirror.batch_size, mirror.batch_wait_s = (
        100,
        cap,
        batch_size,
        wait_s,
    )
    return mirror, window, answers


def resolved(outcome=STABLE):
    future = asyncio.get_running_loop().create_future()
    future.set_result(outcome)
    return future


def test_counters_add_up_over_every_kind_of_outcome():
    async def scenario():
        candidate = FakeCandidate()
        mirror, window, answers = make_mirror(candidate)
        segs = [("tenant", "acme")]
        for kind in ("disagree", "agree", "contract", "timeout", "error"):
            mirror.mirror({"kind": kind}, {}, resolved(), segs)
        await mirror.drain(5)
        failing, w2, _ = make_mirror(FakeCandidate(raise_on_call=True))
        failing.mirror({"kind": "agree"}, {}, resolved(), segs)
        await failing.drain(5)
        window.merge(w2)
        return window, answers, candidate.calls

    window, answers, calls = asyncio.run(scenario())
    assert calls == [5]  # coalesced into one call
    for segment in (ALL, ("tenant", "acme")):
        s = window.shadow_in(segment)
        assert s.mirrored == 6 == s.completed + s.dropped + s.timed_out + s.failed
        assert (s.completed, s.timed_out, s.failed, s.compared, s.agreed) == (3, 1, 2, 2, 1)
    assert len(answers) == 5  # the unreachable call produced no answer to record


def test_batches_are_sent_at_batch_size_or_after_the_wait():
    async def scenario():
        candidate = FakeCandidate()
        mirror, _, _ = make_mirror(candidate, batch_size=4, wait_s=0.01)
        for _ in range(10):
            mirror.mirror({"kind": "agree"}, {}, resolved(), [])
        await asyncio.sleep(0.05)
        await mirror.drain(5)
        return candidate.calls

    assert asyncio.run(scenario()) == [4, 4, 2]


def test_in_flight_cap_drops_and_counts_instead_of_queueing():
    async def scenario():
        release = asyncio.Event()
        mirror, window, _ = make_mirror(FakeCandidate(release), cap=3, batch_size=1)
        for _ in range(10):
            mirror.mirror({"kind": "agree"}, {}, resolved(), [])
        await asyncio.sleep(0)
        peak = mirror.in_flight
        release.set()
        await mirror.drain(5)
        return peak, window.shadow_in(ALL), mirror.in_flight

    peak, stats, after = asyncio.run(scenario())
    assert peak == 3 and after == 0
    assert stats.mirrored == 10 and stats.dropped == 7 and stats.completed == 3


def test_a_mirror_returns_at_once_and_leaves_the_call_running():
    async def scenario():
        never = asyncio.Event()
        mirror, window, _ = make_mirror(FakeCandidate(never), batch_size=1)
        result = mirror.mirror({"kind": "agree"}, {}, resolved(), [])  # a plain call: nothing to await
        await asyncio.sleep(0)
        return result, mirror.in_flight, window.shadow_in(ALL).completed

    result, in_flight, completed = asyncio.run(scenario())
    assert result is None and in_flight == 1 and completed == 0


def test_sampling_follows_the_percent():
    mirror, _, _ = make_mirror(FakeCandidate())
    mirror.percent = 10
    share = sum(mirror.sampled() for _ in range(20_000)) / 20_000
    assert 0.09 < share < 0.11
    mirror.percent = 0
    assert not any(mirror.sampled() for _ in range(1000))


def test_a_mirror_is_counted_with_its_result_so_every_flushed_window_balances():
    async def scenario():
        release = asyncio.Event()
        mirror, first, _ = make_mirror(FakeCandidate(release), cap=4, batch_size=8)
        for _ in range(6):  # 4 queued, 2 over the cap: dropped, counted at once
            mirror.mirror({"kind": "agree"}, {}, resolved(), [("tenant", "acme")])
        await asyncio.sleep(0.01)  # the batch is on its way
        second = Window()
        mirror.window = second  # what a flush does
        release.set()
        await mirror.drain(5)
        return first, second

    first, second = asyncio.run(scenario())
    for segment in (ALL, ("tenant", "acme")):
        a, b = first.shadow_in(segment), second.shadow_in(segment)
        assert (a.mirrored, a.dropped, a.completed) == (2, 2, 0)
        assert (b.mirrored, b.dropped, b.completed, b.compared) == (4, 0, 4, 4)
        for s in (a, b):
            assert s.mirrored == s.completed + s.dropped + s.timed_out + s.failed


class HangingCandidate:
    """Never answers; remembers the calls that were cancelled."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def send(self, items):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def test_drain_cancels_what_runs_past_its_time_out_and_counts_it_failed():
    async def scenario():
        candidate = HangingCandidate()
        mirror, window, answers = make_mirror(candidate, batch_size=2, wait_s=60)
        for _ in range(5):  # two calls on their way, one request still waiting for company
            mirror.mirror({"kind": "agree"}, {}, resolved(), [])
        await asyncio.sleep(0.01)
        assert mirror.in_flight == 5
        cancelled = await mirror.drain(0.05)
        return cancelled, window.shadow_in(ALL), mirror.in_flight, candidate.cancelled, answers

    cancelled, stats, in_flight, calls_cancelled, answers = asyncio.run(scenario())
    assert cancelled == 5 and in_flight == 0 and calls_cancelled == 3
    assert stats.mirrored == stats.failed == 5 and stats.completed == 0
    assert answers == []  # no answer came, so none is recorded under the shadow arm


def test_drain_waits_for_a_mirror_that_ends_within_its_time_out():
    async def scenario():
        release = asyncio.Event()
        mirror, window, _ = make_mirror(FakeCandidate(release), batch_size=1)
        mirror.mirror({"kind": "disagree"}, {}, resolved(), [])
        asyncio.get_running_loop().call_later(0.05, release.set)
        return await mirror.drain(5), window.shadow_in(ALL)

    cancelled, stats = asyncio.run(scenario())
    assert cancelled == 0 and stats.mirrored == stats.completed == 1 and stats.agreed == 0


class _Unequal:
    """A prediction no comparison can read: comparing it raises."""

    def __eq__(self, other):
        raise ValueError("the truth value of an array is ambiguous")

    __hash__ = None


def _balanced(window, segments):
    for segment in segments:
        s = window.shadow_in(segment)
        assert s.mirrored == s.completed + s.dropped + s.timed_out + s.failed, segment
    return [window.shadow_in(segment) for segment in segments]


def test_answers_without_a_numeric_confidence_are_compared_for_agreement_only(caplog):
    # a custom contract (LLM / RAG) that does not require `confidence`
    answers = {
        "plain": FakeOutcome("ok", {"prediction": "yes", "model_version": "v2"}),
        "text": FakeOutcome("ok", {"prediction": "no", "confidence": "high"}),
        "nan": FakeOutcome("ok", {"prediction": "yes", "confidence": float("nan")}),
        "huge": FakeOutcome("ok", {"prediction": "yes", "confidence": 10**400}),
    }

    async def send(items):
        return [answers[inputs["kind"]] for inputs, _ in items]

    async def scenario():
        mirror, window, _ = make_mirror(FakeCandidate(), batch_size=4)
        mirror._send_batch = send
        for kind in answers:
            mirror.mirror({"kind": kind}, {}, resolved(), [("tenant", "acme")])
        await mirror.drain(5)
        return window

    window = asyncio.run(scenario())
    for s in _balanced(window, [ALL, ("tenant", "acme")]):
        assert (s.mirrored, s.completed, s.failed, s.compared, s.agreed) == (4, 4, 0, 4, 0)
        assert s.summary()["confidence_diff_mean"] is None and s.summary()["confidence_psi"] is None
    assert "never retrieved" not in caplog.text


def test_a_comparison_that_raises_counts_each_mirror_once_and_logs_no_error(caplog):
    async def send(items):
        return [FakeOutcome("ok", {"prediction": _Unequal(), "confidence": 0.5}) for _ in items]

    async def scenario():
        mirror, window, answers = make_mirror(FakeCandidate(), batch_size=3)
        mirror._send_batch = send
        for _ in range(3):
            mirror.mirror({}, {}, resolved(), [("tenant", "acme"), ("tier", "gold")])
        await mirror.drain(5)
        await asyncio.sleep(0)
        return window, answers

    window, answers = asyncio.run(scenario())
    for s in _balanced(window, [ALL, ("tenant", "acme"), ("tier", "gold")]):
        assert (s.mirrored, s.completed, s.failed, s.compared) == (3, 3, 0, 0)
    assert len(answers) == 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
