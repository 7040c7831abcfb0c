"""The store's own thread: the rollout controller never waits on its store.

Everything the controller keeps (events with their state, telemetry windows, the request log, feedback)
is handed to a `StoreWorker` as a job. Writes run in the order they were given, each until it succeeds:
one that fails is kept at the head and tried again after a back-off, so nothing is reordered or lost while
the store is away (request-log rows are bounded; events and windows are not). Calls (reads, and the
feedback write whose answer a client waits for) run in the same order when the store is healthy, so they
see every earlier write; while writes are failing, a call may run between their retries.

With ``background=True`` the jobs run on one daemon thread, so a store that hangs (a lost network, a
table lock held elsewhere, a stuck disk) holds up only that thread, never the judgement loop or the
routing push; `problem` says so once a job has run for `STALL_AFTER_S`. With ``background=False`` (the
unit tests) a write runs at once in the caller and a failed one waits for `retry`, as the supervisor did
before it had a thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("canary.controller")

STALL_AFTER_S = 5.0  # a store job running this long freezes promotion, as a failing write does
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # back-off between tries of a failing write (the last one repeats)


@dataclass
class _Job:
    run: Callable[[], Any]
    then: Callable[[Any], None] | None = None  # a write's continuation, run where `deliver` runs it
    result: concurrent.futures.Future[Any] | None = None  # a call's answer; None for a write
    row: bool = False  # a request-log or feedback row: dropped past the bound rather than kept


class StoreWorker:
    """Runs store jobs in order, off the controller's event loop (see the module docstring).

    Args:
        clock: seconds since the epoch (the supervisor's clock, so tests can freeze it).
        background: run the jobs on a thread of the worker's own; else in the caller.
        max_rows: request-log and feedback writes kept at most while the store fails; later ones are
            dropped and counted in `dropped`.
        deliver: runs a write's continuation; the controller passes its event loop's
            ``call_soon_threadsafe``, so continuations never run on the store's thread.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        background: bool = False,
        max_rows: int = 100_000,
        deliver: Callable[[Callable[[], None]], Any] | None = None,
    ) -> None:
        self._clock = clock
        self._background = background
        self._max_rows = max_rows
        self.deliver: Callable[[Callable[[], None]], Any] = deliver or (lambda fn: fn())
        self._jobs: collections.deque[_Job] = collections.deque()
        self._rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._retry_at = 0.0
        self._failures = 0
        self.error: str | None = None  # the last write's failure while writes are failing
        self.failed_since: float | None = None
        self.busy_since: float | None = None  # when the running job started, on the background thread
        self.dropped = 0
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._serve, name="canary-store", daemon=True)
            self._thread.start()

    # --- the caller's side ---------------------------------------------------------------------------------

    def write(
        self, run: Callable[[], Any], then: Callable[[Any], None] | None = None, row: bool = False
    ) -> None:
        """Queues a write; ``then(result)`` runs once it has succeeded (through `deliver`)."""
        job = _Job(run, then, row=row)
        with self._cond:
            if row and self._rows >= self._max_rows:
                self.dropped += 1
                if self.dropped in (1, 1000, 100_000):
                    logger.error("rollout store: %d request-log or feedback writes dropped", self.dropped)
                return
            self._rows += row
            self._jobs.append(job)
            self._cond.notify()
        if not self._background and self.error is None and len(self._jobs) == 1:
            self._drain()

    def call(self, run: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Runs ``run`` after the writes queued before it (between retries while writes fail); its result or
        exception lands in the returned future. Without a thread, it runs at once, in the caller."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if not self._background:
            _settle(future, run)
            return future
        with self._cond:
            self._jobs.append(_Job(run, result=future))
            self._cond.notify()
        return future

    def retry(self) -> None:
        """Tries the writes kept while the store failed (the background thread does so by itself)."""
        if not self._background:
            self._drain()

    @property
    def pending(self) -> int:
        return sum(job.result is None for job in list(self._jobs))

    def problem(self, now: float) -> tuple[str, float] | None:
        """(why, since when) promotion should stay frozen: writes failing, or a job stuck in the store."""
        if self.error is not None and self.failed_since is not None:
            return self.error, self.failed_since
        return self.stalled(now)

    def stalled(self, now: float) -> tuple[str, float] | None:
        """(why, since when) a job has been running for `STALL_AFTER_S` or more: nothing queued behind it
        can run until it returns, so a caller need not wait to know that."""
        busy = self.busy_since
        if busy is not None and now - busy >= STALL_AFTER_S:
            return f"the store has not answered for {now - busy:.0f} s", busy
        return None

    def close(self, timeout: float = 5.0) -> None:
        """Stops the thread once the queue is empty, or after ``timeout`` seconds."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- running jobs --------------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Without a thread: runs the queued writes in order, stopping at the first that fails."""
        while self._jobs:
            if not self._run(self._jobs[0]):
                return

    def _run(self, job: _Job) -> bool:
        """Runs one write at the head of the queue; True when it succeeded (and left the queue)."""
        try:
            result = job.run()
        except Exception as exc:
            with self._cond:
                self._failed(exc)
            return False
        with self._cond:
            self._jobs.popleft()
            self._rows -= job.row
            self._failures = 0
            if self.error is not None and not any(j.result is None for j in self._jobs):
                logger.info("the rollout store is writable again after %s", self.error)
                self.error = self.failed_since = None
        if job.then is not None:
            try:
                self.deliver(lambda: job.then(result))  # type: ignore[misc]
            except RuntimeError as exc:  # the event loop closed: the actor is stopping
                logger.warning("a stored event could not be announced: %r", exc)
        return True

    def _failed(self, exc: Exception) -> None:
        if self.error is None:
            self.failed_since = self._clock()
            logger.error("the rollout store cannot be written (%r): promotion is frozen until it can", exc)
        self.error = f"{type(exc).__name__}: {exc}"
        self._retry_at = self._clock() + RETRY_S[min(self._failures, len(RETRY_S) - 1)]
        self._failures += 1

    def _next(self) -> _Job | None:
        """The job to run now (the head, or a call while the head write waits to be retried), else None."""
        if not self._jobs:
            return None
        head = self._jobs[0]
        if head.result is not None or self.error is None or self._clock() >= self._retry_at:
            return head
        return next((job for job in self._jobs if job.result is not None), None)

    def _serve(self) -> None:
        while True:
            with self._cond:
                job = self._next()
                while job is None:
                    if self._closing:
                        return
                    wait = max(self._retry_at - self._clock(), 0.05) if self._jobs else None
                    self._cond.wait(wait)
                    job = self._next()
                self.busy_since = self._clock()
            try:
                if job.result is None:
                    self._run(job)
                else:
                    with self._cond:
                        self._jobs.remove(job)
                    if job.result.set_running_or_notify_cancel():
                        _settle(job.result, job.run)
            finally:
                self.busy_since = None


def _settle(future: concurrent.futures.Future[Any], run: Callable[[], Any]) -> None:
    try:
        future.set_result(run())
    except Exception as exc:
        future.set_exception(exc)
