"""The shadow mirror: sends a sample of stable's requests to the candidate as well, compares the two
answers, and never touches the answer the client gets.

Mirrored requests are latency-insensitive, so they are coalesced: up to ``batch_size`` of them (or whatever
arrived within ``batch_wait_s``) travel to the candidate in one handle call, which spares the Ingress and Ray
one round trip per request; the candidate replica still answers each one through its own batching and fault
path. Each call is fire-and-forget with a strong reference (a task held in a set until it ends), bounded by
an in-flight cap counted in requests (beyond it a mirror is dropped and counted, never queued), cut by a
time-out that cancels the downstream call, and wrapped in a catch-all: nothing a shadow does reaches the
client or writes a log line per request.

A mirror is counted once, with its result, into the window current at that moment: ``mirrored`` together
with one of ``dropped`` (at once), ``completed``, ``timed_out`` or ``failed`` (when its call ends). So every
window the Ingress flushes keeps ``mirrored = completed + dropped + timed_out + failed`` on its own, whichever
rollout it is merged into and whether or not a later window arrives; mirrors still on their way are
`ShadowMirror.in_flight`. At shutdown `drain` sends what is queued and waits; what is still running at its
time-out is cancelled and counted ``failed``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from serving.segments import ALL, Segment
from serving.telemetry import PairComparison, Window

logger = logging.getLogger("ray.serve")


class CallOutcome(Protocol):
    status: str
    output: dict[str, Any] | None
    latency_s: float


@dataclass
class _Mirrored:
    inputs: dict[str, Any]
    headers: dict[str, str]
    stable_answer: asyncio.Future[Any]
    segments: list[Segment]


SendBatch = Callable[[list[tuple[dict[str, Any], dict[str, str]]]], Awaitable[list[CallOutcome]]]
RecordAnswer = Callable[[str, CallOutcome, list[Segment]], None]

_RESULT_COUNTER = {"ok": "completed", "contract": "completed", "timeout": "timed_out"}


class ShadowMirror:
    """Mirrors requests to the candidate and records the comparisons into a `Window`.

    Args:
        window: where counts and comparisons go (shared with the primary path; replaced at each flush).
        send_batch: sends ``[(inputs, headers), ...]`` to the candidate; one outcome per item, in order.
        record_answer: records the candidate's own answer under the ``shadow`` arm for each segment.
        rng: decides which requests are sampled.
    """

    def __init__(
        self, window: Window, send_batch: SendBatch, record_answer: RecordAnswer, rng: random.Random
    ) -> None:
        self.window = window
        self.percent = 0.0
        self.max_in_flight = 256
        self.batch_size = 32
        self.batch_wait_s = 0.5
        self._send_batch = send_batch
        self._record_answer = record_answer
        self._rng = rng
        self._pending: list[_Mirrored] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: dict[asyncio.Task[None], int] = {}  # running batch -> its size

    @property
    def in_flight(self) -> int:
        """Mirrored requests waiting to be sent or on their way (the cap counts these)."""
        return len(self._pending) + sum(self._tasks.values())

    def sampled(self) -> bool:
        return self.percent > 0 and (self.percent >= 100 or self._rng.random() * 100 < self.percent)

    def mirror(
        self,
        inputs: dict[str, Any],
        headers: dict[str, str],
        stable_answer: asyncio.Future[Any],
        segments: list[Segment],
    ) -> None:
        """Queues one request for the candidate, or drops it (counted) at ``max_in_flight`` in flight."""
        if self.in_flight >= self.max_in_flight:
            self._count(segments, "dropped")
            return
        self._pending.append(_Mirrored(inputs, headers, stable_answer, segments))
        if len(self._pending) >= self.batch_size:
            self._send_pending()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.batch_wait_s, self._send_pending)

    def _send_pending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks[task] = len(batch)
            task.add_done_callback(self._tasks.pop)

    def _count(
        self,
        segments: list[Segment],
        result: str,
        pair: tuple[dict[str, Any], dict[str, Any]] | None = None,
    ) -> None:
        """Counts one mirror with its result (and its pair of valid answers) in the window current now.

        The pair is compared before any cell is touched, so answers the comparison cannot read leave the
        mirror counted (not compared) in every cell, never in some and again as ``failed``."""
        comparison = None
        if pair is not None:
            try:
                comparison = PairComparison.of(*pair)
            except Exception:
                logger.debug("shadow comparison failed", exc_info=True)
        for cell in [self.window.shadow_in(ALL)] + [self.window.shadow_in(s) for s in segments]:
            cell.mirrored += 1
            setattr(cell, result, getattr(cell, result) + 1)
            if comparison is not None:
                cell.add(comparison)

    async def _outcomes(self, batch: list[_Mirrored]) -> list[CallOutcome | None]:
        try:
            outcomes: list[CallOutcome | None] = list(
                await self._send_batch([(m.inputs, m.headers) for m in batch])
            )
            if len(outcomes) != len(batch):
                raise ValueError(f"{len(outcomes)} answers for {len(batch)} mirrored requests")
            return outcomes
        except Exception:  # a shadow never fails loudly: count it and move on
            logger.debug("shadow batch failed", exc_info=True)
            return [None] * len(batch)

    async def _run(self, batch: list[_Mirrored]) -> None:
        counted = 0
        try:
            for mirrored, outcome in zip(batch, await self._outcomes(batch), strict=True):
                try:
                    stable: CallOutcome | None = await mirrored.stable_answer
                except Exception:
                    stable = None
                if outcome is None:
                    self._count(mirrored.segments, "failed")
                else:
                    try:
                        self._record_answer("shadow", outcome, mirrored.segments)
                    except Exception:  # an answer its fields cannot be read from: the mirror still counts
                        logger.debug("recording a shadow answer failed", exc_info=True)
                    pair = None
                    if outcome.status == "ok" and stable is not None and stable.status == "ok":
                        pair = (stable.output or {}, outcome.output or {})
                    self._count(mirrored.segments, _RESULT_COUNTER.get(outcome.status, "failed"), pair)
                counted += 1
        finally:  # cancelled (at shutdown, past the drain's time-out): no answer, so each one failed
            for mirrored in batch[counted:]:
                self._count(mirrored.segments, "failed")

    async def drain(self, timeout_s: float) -> int:
        """Sends what is queued and waits for running mirrors (at shutdown), at most ``timeout_s``; then
        cancels the rest, which are counted ``failed``. Returns how many were cancelled."""
        self._send_pending()
        if not self._tasks:
            return 0
        _, running = await asyncio.wait(list(self._tasks), timeout=timeout_s)
        cancelled = sum(self._tasks.get(task, 0) for task in running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        return cancelled
