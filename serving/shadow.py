"""The shadow mirror: sends a sample of stable's requests to the candidate as well, compares the two
answers, and never touches the answer the client gets.

Each mirrored call is fire-and-forget with a strong reference (a task held in a set until it ends), bounded
by an in-flight cap (beyond it a mirror is dropped and counted, never queued), cut by a time-out that cancels
the downstream call, and wrapped in a catch-all: nothing a shadow does can reach the client or the log line
per request.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from serving.segments import ALL, Segment
from serving.telemetry import ShadowStats, Window

logger = logging.getLogger("ray.serve")


class CallOutcome(Protocol):
    status: str
    output: dict[str, Any] | None
    latency_s: float


class ShadowMirror:
    """Mirrors requests to the candidate and records the comparisons into a `Window`.

    Args:
        window: where counts and comparisons go (shared with the primary path's telemetry).
        record_answer: records the candidate's own answer under the ``shadow`` arm for each segment.
        rng: decides which requests are sampled.
    """

    def __init__(
        self,
        window: Window,
        record_answer: Callable[[str, CallOutcome, list[Segment]], None],
        rng: random.Random,
    ) -> None:
        self.window = window
        self.percent = 0.0
        self.max_in_flight = 64
        self._record_answer = record_answer
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def sampled(self) -> bool:
        return self.percent > 0 and (self.percent >= 100 or self._rng.random() * 100 < self.percent)

    def mirror(
        self,
        call_candidate: Callable[[], Awaitable[CallOutcome]],
        stable_answer: asyncio.Future[CallOutcome | None],
        segments: list[Segment],
    ) -> None:
        """Starts one mirrored call, or drops it (counted) when ``max_in_flight`` calls are running."""
        cells = self._cells(segments)
        for cell in cells:
            cell.mirrored += 1
        if len(self._tasks) >= self.max_in_flight:
            for cell in cells:
                cell.dropped += 1
            return
        task = asyncio.create_task(self._run(call_candidate, stable_answer, segments))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cells(self, segments: list[Segment]) -> list[ShadowStats]:
        # Looked up when counted, not when launched: the window may have been flushed and replaced meanwhile.
        return [self.window.shadow_in(ALL)] + [self.window.shadow_in(s) for s in segments]

    async def _run(self, call_candidate, stable_answer, segments) -> None:  # type: ignore[no-untyped-def]
        outcome = None
        try:
            outcome = await call_candidate()
            stable = await stable_answer
        except Exception:  # a shadow never fails loudly: count it and move on
            logger.debug("shadow call failed", exc_info=True)
            outcome_status = "failed"
        else:
            outcome_status = {"ok": "completed", "contract": "completed", "timeout": "timed_out"}.get(
                outcome.status, "failed"
            )
            self._record_answer("shadow", outcome, segments)
            if outcome.status == "ok" and stable is not None and stable.status == "ok":
                for cell in self._cells(segments):
                    cell.compare(stable.output or {}, outcome.output or {})
        for cell in self._cells(segments):
            setattr(cell, outcome_status, getattr(cell, outcome_status) + 1)

    async def drain(self, timeout_s: float) -> None:
        """Waits for running mirrors (at shutdown), at most ``timeout_s``."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
