"""The `RolloutController`: one detached, named, async Ray actor per application. A thin shell around
`RolloutSupervisor`: it runs the judgement loop, asks external checks, sends webhooks, and pushes routing
tables to every Ingress replica by long poll (a replica waits in `watch` until the table changes, so a
rollback reaches it in milliseconds). Ray restarts it after a crash, on any node; it resumes from its store
(SQLite on one machine, PostgreSQL on a cluster).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray

from rollout.machine import ActionError
from rollout.metrics import SnapshotCollector
from rollout.notify import Notifier, run_check
from rollout.report import build_report
from rollout.store import Retention, RolloutStore
from rollout.store_url import parse_store_location
from rollout.store_worker import StoreWorker
from rollout.supervisor import MAX_UNSTORED_WRITES, CheckAsk, FeedbackError, RolloutSupervisor
from serving.errors import ControllerUnavailableError

NAMESPACE = "canary"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("canary.controller")


def _code_digest() -> str:
    """Identifies the code a controller runs: the sources of `rollout` and `serving`, which it imports."""
    digest = hashlib.blake2b(digest_size=8)
    for package in ("rollout", "serving"):
        for path in sorted((PROJECT_ROOT / package).glob("*.py")):
            digest.update(f"{package}/{path.name}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


CODE_DIGEST = _code_digest()

# How long an answer waits for the store's thread. The judgement loop and the routing push never wait.
CONFIGURE_READ_S = 8.0  # within the Ingress's 10 s; a config not taken is offered again by the Ingress
FEEDBACK_STORE_S = 2.0  # POST /feedback: 503 (the client retries) rather than a hanging request
REPORT_READ_S = 30.0
STARTING_WAIT_S = 2.0  # how long a call waits for a controller still opening its store before it says so


def controller_name(app: str) -> str:
    return f"canary-controller-{app}"


def resolve_store_location(location: str) -> str:
    """A PostgreSQL URL as given; a SQLite file (a path or a ``sqlite:///`` URL) made absolute, a relative
    one under the project root (where `make up` runs), never a worker's cwd."""
    parsed = parse_store_location(location)
    if parsed.backend != "sqlite":
        return parsed.target
    candidate = Path(parsed.target).expanduser()
    return str(candidate if candidate.is_absolute() else PROJECT_ROOT / candidate)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class RolloutController:
    """The application's rollout controller (see the module docstring).

    Args:
        app: the Serve application name.
        store_location: the store (state, events, windows, request log, feedback): a SQLite file, or a
            ``sqlite:///`` or ``postgresql://`` URL.
        retention: `Retention` values as a dict.
    """

    def __init__(self, app: str, store_location: str, retention: dict[str, Any] | None = None) -> None:
        self._app = app
        self._identity = controller_identity(store_location, retention)
        self._location, self._retention = self._identity["store"], Retention(**(retention or {}))
        # the store's own thread: a store that hangs holds up writes and reads, never this event loop
        self._worker = StoreWorker(time.time, background=True, max_rows=MAX_UNSTORED_WRITES)
        self._core: RolloutSupervisor | None = None  # once the store is open and the rollout resumed
        self._configuring = asyncio.Lock()
        self._pruning: concurrent.futures.Future[Any] | None = None
        self._changed = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._checking = False
        self._pruned_at = 0.0
        # Opening the store and resuming from it is the store thread's first job, tried again (with its
        # back-off) until it works: a store down or hanging when the controller starts (or restarts after
        # a crash) leaves it up and saying why, rather than dead with its name gone, or stuck here.
        self._worker.write(self._start)

    def _start(self) -> None:
        """On the store's thread: opens the store and resumes the application's latest rollout from it."""
        store = RolloutStore(self._location, self._retention)
        try:
            core = RolloutSupervisor(
                self._app, store, time.time, lambda hooks: Notifier(hooks) if hooks else None, self._worker
            )
        except BaseException:
            store.close()
            raise
        core.on_table = lambda table: self._table_changed()
        logger.info("rollout store: %s (%s)", store.location, store.backend)  # a URL's password masked
        self._core = core

    async def _started(self, wait_s: float = STARTING_WAIT_S) -> RolloutSupervisor:
        """The supervisor, once the store is open; `ControllerStartingError` (saying why) after ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while self._core is None:
            if time.monotonic() >= deadline:
                problem = self._worker.problem(time.time())
                raise ControllerStartingError(
                    "the rollout controller is starting: its store is not open yet"
                    + (f" ({problem[0]}); it tries again every few seconds" if problem else "")
                )
            await asyncio.sleep(0.05)
        return self._core

    def _table_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _ensure_loop(self) -> None:
        if self._loop is None or self._loop.done():
            loop = asyncio.get_running_loop()
            self._worker.deliver = loop.call_soon_threadsafe  # stored events are notified on this loop
            self._loop = loop.create_task(self._run())

    async def _store_call(self, run: Any, timeout_s: float) -> Any:
        """``run()`` on the store's thread, in order with its writes; TimeoutError after ``timeout_s``, or at
        once while the store has not answered a job for `STALL_AFTER_S` (it would wait behind it)."""
        stalled = self._worker.stalled(time.time())
        if stalled is not None:
            raise TimeoutError(stalled[0])
        future = self._worker.call(run)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            future.cancel()  # not run yet: it never will be
            raise

    async def _run(self) -> None:
        """The judgement loop: one step per `judge_interval_s`, external checks off the loop."""
        while True:
            config = self._core.config if self._core is not None else None
            await asyncio.sleep(config.rollout.judge_interval_s if config else 1.0)
            core = self._core
            if core is None:  # still opening the store
                continue
            try:
                core.step()
                wanted = core.wants_check()
                if wanted is not None and not self._checking:
                    self._checking = True
                    asyncio.get_running_loop().create_task(self._ask(core, *wanted))
                while core.retired:
                    asyncio.get_running_loop().create_task(_retire(core.retired.pop()))
                if time.time() - self._pruned_at > 60 and (self._pruning is None or self._pruning.done()):
                    self._pruned_at = time.time()  # big deletes take ~0.5 s: on the store's thread
                    self._pruning = self._worker.call(core.store.prune)
                    self._pruning.add_done_callback(_log_prune_failure)
            except Exception:  # one bad step must not stop the controller; it is logged and retried
                logger.exception("rollout step failed")

    async def _ask(self, core: RolloutSupervisor, ask: CheckAsk, spec: Any) -> None:
        try:
            payload = {"app": self._app, "stage_index": ask.stage_index, "rollout": ask.key}
            outcome, reason = await run_check(spec, payload)
            core.checked(ask, outcome, reason)
        finally:
            self._checking = False

    async def describe(self) -> dict[str, Any]:
        """What this controller is: its code (`CODE_DIGEST`), its store (resolved) and its retention."""
        return self._identity

    async def ready(self) -> int:
        """The actor's PID once it is up, whether or not its store is open yet (tests and the acceptance
        checks find it this way)."""
        self._ensure_loop()
        return os.getpid()

    async def configure(self, section: dict[str, Any], versions: dict[str, str]) -> dict[str, Any]:
        """Takes a deployed Ingress config. What the store holds of its rollout identity is read first, on
        the store's thread; a store that does not answer in time refuses the config (the Ingress offers it
        again) rather than starting over a rollout that may be half done."""
        self._ensure_loop()
        started = time.monotonic()
        core = await self._started(CONFIGURE_READ_S / 2)
        async with self._configuring:  # one at a time: what was read is what is applied
            key = core.identity_to_read(section, versions)
            stored = None
            if key is not None:
                try:
                    stored = await self._store_call(
                        functools.partial(core.read_identity, key),
                        CONFIGURE_READ_S - (time.monotonic() - started),
                    )
                except TimeoutError as exc:
                    why = str(exc) or f"the store did not answer within {CONFIGURE_READ_S:g} s"
                    raise StoreUnavailableError(f"{why}; the config is offered again") from None
            return core.configure(section, versions, stored)

    async def ingest(
        self,
        replica_id: str,
        window: dict[str, Any],
        in_flight: int,
        requests: list[Any] | None = None,
        feedback: list[Any] | None = None,
        propagation_s: list[float] | None = None,
        rollout: str | None = None,
    ) -> None:
        """One Ingress replica's counts (see `RolloutSupervisor.ingest`); while the store is not open yet,
        `ControllerStartingError`, and the replica keeps them for its next flush."""
        self._ensure_loop()
        core = await self._started()
        core.ingest(
            replica_id, window, in_flight, requests or (), feedback or (), propagation_s or (), rollout
        )

    async def report_replica(self, arm: str, replica_id: str, report: dict[str, Any]) -> None:
        """A model replica's report; ignored while the store is not open (the next one says as much)."""
        self._ensure_loop()
        if self._core is not None:
            self._core.report_replica(arm, replica_id, report)

    async def watch(self, known_version: int, timeout_s: float = 30.0) -> dict[str, Any]:
        """Long poll: returns the routing table as soon as its version differs from ``known_version``."""
        self._ensure_loop()
        core = await self._started(timeout_s)
        table = core.table()
        if table["version"] != known_version:
            return table
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)
        return core.table()

    async def snapshot(self) -> dict[str, Any]:
        self._ensure_loop()
        core = await self._started()
        core.telemetry.expire(time.time())
        return {
            # the current rollout's numbers (every window since it started, kept in the store, so a restarted
            # controller shows them too); everything since start-up only before any config arrived.
            # /metrics stays cumulative, as Prometheus counters must.
            **core.telemetry.summary(core.window if core.machine is not None else None),
            **(core.replica_events() if core.machine is not None else {}),
            "shadow_in_flight": core.telemetry.shadow_in_flight(),
            "rollout": core.view(),
        }

    async def series(self) -> list[dict[str, Any]]:
        """Per-arm numbers over time (`rollout.series.ArmSeries.points`)."""
        self._ensure_loop()
        return self._core.telemetry.series.points() if self._core is not None else []

    async def metrics(self, rollout: dict[str, Any]) -> bytes:
        self._ensure_loop()
        core = await self._started()
        s = core.telemetry
        s.expire(time.time())
        verdicts = core.gates()[0]
        current = core.window if core.machine is not None else None
        return SnapshotCollector(
            self._app, s.total, rollout, s.replica_reports(), s.per_arm(), verdicts, current
        ).render()

    async def feedback(self, request_id: str, metric: str, value: float) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body). An id the Ingress has not flushed yet gets ~2 s to arrive before a 404."""
        try:
            core = await self._started(FEEDBACK_STORE_S)
        except ControllerStartingError as exc:  # the client retries
            return 503, FeedbackError(503, "request_id", str(exc)).body()
        for attempt in range(9):
            try:
                core.check_feedback(metric, value)
                try:
                    stored = await self._store_call(
                        functools.partial(core.store_feedback, request_id, metric, value), FEEDBACK_STORE_S
                    )
                except Exception:  # the client retries: a score is refused, never silently dropped
                    raise FeedbackError(
                        503, "request_id", "the rollout store is unavailable; retry later"
                    ) from None
                return 200, core.feedback_stored(stored, request_id, metric, value)
            except FeedbackError as exc:
                if exc.status != 404 or attempt == 8:
                    return exc.status, exc.body()
                await asyncio.sleep(0.25)
        raise AssertionError("unreachable")

    async def act(
        self, action: str, actor: str, reason: str, weight: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 with the events and the new state, 409 when the state forbids it, 503
        while the store is not open yet (the state is not known until it is)."""
        try:
            return 200, (await self._started(5.0)).act(action, actor, reason, weight)
        except ActionError as exc:
            return 409, {"error": "action_refused", "detail": str(exc)}
        except ControllerStartingError as exc:
            return 503, {"error": "controller_starting", "detail": str(exc)}

    async def report(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 with the post-rollout report (Markdown, HTML and the PNG plots as bytes),
        409 before any rollout, 503 when the store does not answer in time."""
        self._ensure_loop()
        try:
            core = await self._started()
        except ControllerStartingError as exc:
            return 503, {"error": "store_unavailable", "detail": str(exc)}
        if core.machine is None or core.config is None:
            return 409, {"error": "no_rollout", "detail": "no rollout yet: deploy a config first"}
        core.persist()  # the windows since the last write first, then both read after them
        try:
            stored = await self._store_call(
                functools.partial(core.read_report, core.machine.state.key), REPORT_READ_S
            )
        except Exception as exc:
            logger.warning("the report could not read the rollout store: %r", exc)
            why = str(exc) if isinstance(exc, TimeoutError) and str(exc) else type(exc).__name__
            detail = f"the rollout store did not answer ({why}); retry later"
            return 503, {"error": "store_unavailable", "detail": detail}
        # the plots take ~0.3 s for ten minutes of rollout, more for a long one: off the event loop
        report = await asyncio.to_thread(build_report, core.report_input(stored))
        return 200, {"markdown": report.markdown, "html": report.html, "images": report.images}


class StoreUnavailableError(ControllerUnavailableError):
    """The rollout store did not answer in time for a config to be taken."""


class ControllerStartingError(ControllerUnavailableError):
    """The controller has not opened its store yet (it is down, or hangs); the message says why."""


def _log_prune_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("pruning the rollout store failed: %r", future.exception())


async def _retire(notifier: Notifier) -> None:
    await notifier.drain(10)
    await notifier.aclose()


def find_controller(app: str) -> Any | None:
    """The application's controller if the Ingress has created it, else None. Only the Ingress creates it,
    because only the Ingress's config knows the store path; model replicas look it up when they report."""
    try:
        return ray.get_actor(controller_name(app), namespace=NAMESPACE)
    except ValueError:
        return None


def controller_identity(store_location: str, retention: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "code": CODE_DIGEST,
        "store": resolve_store_location(store_location),
        "retention": retention or {},
    }


async def ensure_controller(app: str, store_location: str, retention: dict[str, Any] | None = None) -> Any:
    """The application's controller, running this code on this store with this retention.

    The controller is detached, so it outlives redeploys: one started by an older canary-serve, or for
    another store or retention, is replaced (it is killed and a new one resumes from the configured store,
    as after a crash), so that an upgrade or a move of the store takes effect with the deploy that asks for
    it. A controller that does not answer in time (still starting) is kept.
    """
    wanted = controller_identity(store_location, retention)
    replaced = False
    for _ in range(3):  # another replica, still on the previous config, may have created one meanwhile
        handle = get_or_create_controller(app, store_location, retention)
        try:
            running = await asyncio.wait_for(handle.describe.remote(), 60)
        except AttributeError:  # a controller from before `describe`
            running = {}
        except Exception as exc:
            logger.warning("the rollout controller did not say what it runs (%r); keeping it", exc)
            return handle
        changed_names = [n for n in ("code", "store", "retention") if running.get(n) != wanted[n]]
        if not changed_names or (replaced and changed_names == ["code"]):
            # the code a new controller runs is its node's: while nodes run different images (an upgrade
            # rolling through a cluster) replacing it again could land it on another old node
            return handle
        replaced = True
        changed = ", ".join(changed_names)
        logger.warning("replacing the rollout controller (%s changed); it resumes from the store", changed)
        ray.kill(handle, no_restart=True)
        for _ in range(150):  # the name is free once the old actor is dead (or taken by a new one already)
            found = await asyncio.to_thread(find_controller, app)
            if found is None or found._actor_id != handle._actor_id:
                break
            await asyncio.sleep(0.2)
    return get_or_create_controller(app, store_location, retention)


def get_or_create_controller(
    app: str, store_location: str = ".canary/rollout.db", retention: dict[str, Any] | None = None
) -> Any:
    """The application's controller, created on first use (detached: it outlives any one replica). The store
    location (a SQLite path, or a ``sqlite:///`` or ``postgresql://`` URL) and retention are read when it is
    created; a running controller keeps its own (`ensure_controller` replaces one that differs)."""
    return RolloutController.options(  # type: ignore[attr-defined]
        name=controller_name(app),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(app, store_location, retention)
