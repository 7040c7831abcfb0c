"""What the rollout controller does, without Ray: takes the deployed rollout config and every replica's
telemetry, judges the gates, runs the state machine, keeps the store and publishes the routing table that
every Ingress replica follows. The clock, the store and the notifier are passed in, so tests drive it with a
fake clock and a temporary SQLite file; `rollout.controller` is the thin Ray actor around it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rollout.judge import Evidence, Judgement, judge
from rollout.machine import JUDGED, ActionError, Counts, Phase, RolloutMachine, RolloutState
from rollout.matching import MATCHED_CANDIDATE, MATCHED_STABLE, Matcher
from rollout.notify import CheckOutcome, Notifier
from rollout.policy import rollout_key
from rollout.report import ReportInput
from rollout.state import METRIC_VALUES_PER_TOP_N, TelemetryState
from rollout.store import LoggedRequest, RolloutRecord, RolloutStore
from rollout.store_url import redact
from rollout.store_worker import StoreWorker
from serving.config import IngressConfig
from serving.operators import feedback_conflict
from serving.segments import ALL, SegmentsSection
from serving.sketch import LatencySketch
from serving.telemetry import Window

logger = logging.getLogger("canary.controller")

PERSIST_EVERY_S = 5.0  # per-window aggregates go to the store this often
MAX_LEFT_ROLLOUTS = 16  # rollouts this controller switched away from, whose late windows it still files
MAX_UNSTORED_WRITES = 100_000  # request-log and feedback batches kept while the store cannot be written
EVENTS_SHOWN = 200
EVENTS_KEPT = 1000  # the current rollout's latest events held in memory for GET /rollout (all are stored)
FEEDBACK_RANGE = (0.0, 1.0)


class FeedbackError(Exception):
    """POST /feedback refused; ``status`` is the HTTP status to answer with and ``field`` the bad field."""

    ERRORS = {
        404: "unknown_request_id",
        409: "feedback_exists",
        422: "invalid_input",
        503: "store_unavailable",
    }

    def __init__(self, status: int, field: str, message: str) -> None:
        self.status, self.field = status, field
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        """The answer's body, shaped as the Ingress's own (`serving.http.HTTPProblem`): a field's problem
        as ``[{field, message}]``, the others as text."""
        if self.status in (409, 422):
            problem = [{"field": self.field, "message": str(self)}]
            return {"error": self.ERRORS[self.status], "detail": problem}
        return {"error": self.ERRORS.get(self.status, "feedback_refused"), "detail": str(self)}


@dataclass(frozen=True)
class StoredFeedback:
    """What storing one feedback value found: the logged request (None: never logged), and the value
    stored before for that request and metric (None: this one was stored)."""

    request: LoggedRequest | None
    earlier: float | None


def without_secrets(section: dict[str, Any]) -> dict[str, Any]:
    """The Ingress section as the store keeps it: a password in the store's URL masked (the hash is
    still taken over what was deployed, so the same config deployed again is recognised)."""
    store = section.get("rollout", {}).get("store") or {}
    masked = {key: redact(store[key]) for key in ("url", "path") if isinstance(store.get(key), str)}
    if not masked:
        return section
    return {**section, "rollout": {**section["rollout"], "store": {**store, **masked}}}


CHECK_FRESH_S = 5.0
"""A check's PASS lets the rollout promote for its time-out plus this long; then it is asked again."""


def config_hash(section: dict[str, Any], versions: dict[str, str]) -> str:
    """Identifies a deployed config, so that N Ingress replicas reporting it count once."""
    text = json.dumps({"config": section, "versions": versions}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class StoredIdentity:
    """What the store holds of one rollout identity, read (on the store's thread) before a config for it
    is applied: its row, its telemetry and its events."""

    key: str
    record: RolloutRecord | None
    window: Window
    events: list[dict[str, Any]]


@dataclass(frozen=True)
class CheckAsk:
    """Which visit to a stage an external check is asked about: its answer counts for that one only (not for
    another rollout deployed meanwhile, nor for the same stage entered again after a pause)."""

    key: str
    stage_index: int
    entered_at: float


@dataclass
class CheckState:
    ask: CheckAsk
    outcome: CheckOutcome
    reason: str
    at: float

    @property
    def stage_index(self) -> int:
        return self.ask.stage_index


class RolloutSupervisor:
    """One application's rollout: config in, telemetry in, decisions and routing tables out.

    Args:
        app: the Serve application name.
        store: the SQLite store (state, events, windows, request log, feedback).
        clock: seconds since the epoch; injected for tests.
        notifier_factory: builds the webhook notifier from a policy's webhooks (none in unit tests).
        worker: runs the store's jobs; by default in the caller (the controller gives it a thread, so that
            a store that hangs never holds up the judgement or the routing push).
    """

    def __init__(
        self,
        app: str,
        store: RolloutStore,
        clock: Callable[[], float],
        notifier_factory: Callable[[Sequence[Any]], Notifier | None] = lambda hooks: None,
        worker: StoreWorker | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.app, self.store, self.clock = app, store, clock
        self.rng = rng or np.random.default_rng()  # the time-matched baseline's sampling
        self._notifier_factory = notifier_factory
        self.notifier: Notifier | None = None
        self._hooks: tuple[Any, ...] = ()
        self.retired: list[Notifier] = []  # replaced notifiers, for the actor to drain and close
        self.telemetry = TelemetryState()
        self.machine: RolloutMachine | None = None
        self.config: IngressConfig | None = None
        self.versions: dict[str, str] = {}
        self._hash: str | None = None
        self.window = Window()  # the current rollout's telemetry, every window since it started
        self._unsaved = Window()
        self._left: dict[str, str] = {}  # rollout key -> its stage when another rollout was deployed
        self._saved_at = clock()
        self.judgement: Judgement | None = None
        self._final_gates: list[dict[str, Any]] = []
        self._final_worse: list[str] = []
        self.check: CheckState | None = None
        self.propagation = LatencySketch()
        self._matching: tuple[str | None, Matcher] | None = None  # (rollout key, its sampler)
        # (arm, model version) -> peak GPU memory of one replica: a new candidate is not held to an old one's
        self._gpu_peak: dict[tuple[str, str | None], float] = {}
        self._reported_arms: set[str] = set()
        # the controller's OOM and restart totals when last added to the current rollout's own counts
        self._counted_at: dict[str, dict[str, int]] = {}
        self.on_table: Callable[[dict[str, Any]], None] = lambda table: None
        # Every write goes through the worker, in order. While writes fail (or the store hangs), promotion
        # is frozen (nothing advances on evidence that cannot be kept), rollback still acts, and what could
        # not be written waits there, in order, bounded.
        self.worker = worker or StoreWorker(clock, max_rows=MAX_UNSTORED_WRITES)
        self._events: list[dict[str, Any]] = []  # the current rollout's latest events, stored or on their way
        self._events_total = 0
        self.feedback_conflicts = 0  # values an Ingress accepted that differed from one stored first
        self._resume()

    # --- start-up ------------------------------------------------------------------------------------------

    def _resume(self) -> None:
        """Picks up the application's latest rollout from the store (after a crash or a restart)."""
        record = self.store.latest_rollout(self.app)
        if record is None:
            return
        try:
            config = IngressConfig.model_validate(record.policy["config"])
            state = RolloutState.from_dict(record.state)
        except Exception:  # a store written by an incompatible version: start clean rather than crash-loop
            logger.exception("cannot resume rollout %s from the store; waiting for a config", record.key)
            return
        self.config, self.versions, self._hash = config, record.policy["versions"], record.policy["hash"]
        self.machine = RolloutMachine(config.rollout, state)
        self.window = Window()
        for _, window in self.store.windows(record.key):
            self.window.merge(window)
            self.telemetry.series.add(window, window.end or window.start)  # the charts keep its history
        self._keep_events(self.store.events(record.key))
        self._load_final_evidence()
        self._left = self._stored_left(record.key)
        self._set_webhooks(config.rollout.webhooks)
        self.telemetry.known_replicas(state.replica_ooms)
        state.table_version += 1  # every Ingress re-reads the table after a restart
        logger.info(
            "resumed rollout %s at %s (weight %s)", state.key, state.phase.value, state.candidate_weight
        )

    def _stored_left(self, current: str) -> dict[str, str]:
        """The application's other recent rollouts and the stage each was left at, oldest first: a restarted
        controller files their late counts under them too (a redeploy may still be rolling out)."""
        left: dict[str, str] = {}
        for record in reversed(self.store.rollouts(self.app, limit=MAX_LEFT_ROLLOUTS + 1)):
            if record.key == current:
                continue
            try:
                config = IngressConfig.model_validate(record.policy["config"])
                machine = RolloutMachine(config.rollout, RolloutState.from_dict(record.state))
            except Exception:  # written by an incompatible version: its late counts stay unfiled
                continue
            left[record.key] = machine.stage.name if machine.stage else machine.state.phase.value
        return left

    def _keep_events(self, events: list[dict[str, Any]]) -> None:
        self._events, self._events_total = events[-EVENTS_KEPT:], len(events)

    def _load_final_evidence(self) -> None:
        for event in reversed(self._events):
            gates = (event.get("evidence") or {}).get("gates")
            if gates:
                self._final_gates, self._final_worse = gates, (event.get("evidence") or {}).get("worse", [])
                return

    # --- config --------------------------------------------------------------------------------------------

    def identity_to_read(self, section: dict[str, Any], versions: dict[str, str]) -> str | None:
        """The rollout key whose stored identity `configure` needs for this config, or None when it needs
        nothing from the store (a change within the running rollout's identity)."""
        rollout = IngressConfig.model_validate(section).rollout
        key = rollout_key(self.app, rollout.rollout_id, versions)
        return None if self.machine is not None and self.machine.state.key == key else key

    def read_identity(self, key: str) -> StoredIdentity:
        """Store reads only, so the controller runs it on the store's thread."""
        return StoredIdentity(
            key, self.store.load_rollout(key), self.store.merged_window(key), self.store.events(key)
        )

    def configure(
        self, section: dict[str, Any], versions: dict[str, str], stored: StoredIdentity | None = None
    ) -> dict[str, Any]:
        """A deployed Ingress ``user_config`` (already validated by the Ingress); returns the routing table.

        A new rollout identity (id + both model versions) starts over at the first stage; the same identity
        resumes. In auto mode, weights edited in the config pause the automation (an operator override).
        ``stored`` is `read_identity` of `identity_to_read`'s key, read beforehand off the event loop;
        without it, the store is read here.
        """
        digest = config_hash(section, versions)
        if digest == self._hash and self.machine is not None:
            return self.table()
        self._count_replica_events()  # what happened until now belongs to the rollout that was running
        wanted = self.identity_to_read(section, versions)
        if wanted is not None and (stored is None or stored.key != wanted):
            stored = self.read_identity(wanted)
        config = IngressConfig.model_validate(section)
        rollout = config.rollout
        now = self.clock()
        key = rollout_key(self.app, rollout.rollout_id, versions)
        events: list[dict[str, Any]] = []
        machine = self.machine
        new_key = machine is None or machine.state.key != key
        known = self._stored_machine(stored, rollout) if stored is not None and new_key else None
        if machine is not None and (
            known is not None or machine.state.key != key or machine.state.mode != rollout.mode
        ):
            self._close_window(machine, now)
        if known is not None:  # the same identity deployed again: it resumes where it was
            assert stored is not None
            if machine is not None and machine.state.phase not in (Phase.CLOSED, Phase.MANUAL):
                self._record(machine, [self._superseded(machine, key, now)])
            machine = self.machine = known
            self.window, self._unsaved = stored.window, Window(start=now)
            self.judgement, self.check = None, None
            self._keep_events(stored.events)
            self._load_final_evidence()
            reason = f"the same rollout deployed again; it resumes {known.state.phase.value}"
            events.append(self._note(known, "redeployed", now, reason))
            events += known.restage(rollout, now, self.counts())
            if rollout.mode == "auto":
                events += known.override(now, (rollout.candidate_weight, rollout.shadow_percent))
        elif machine is None or machine.state.key != key or machine.state.mode != rollout.mode:
            if machine is not None and machine.state.phase not in (Phase.CLOSED, Phase.MANUAL):
                self._record(machine, [self._superseded(machine, key, now)])
            machine, started = RolloutMachine.start(
                rollout, key, rollout.mode, now, (rollout.weight, rollout.shadow)
            )
            machine.state.config_weights = [rollout.candidate_weight, rollout.shadow_percent]
            if self.machine is not None:
                machine.state.table_version = self.machine.state.table_version
            # a manual rollout (or a change of mode) starts a new machine, but the identity's telemetry
            # continues: what a restarted controller would read from the store (the same identity in
            # another mode has all of it in memory already, some of it perhaps not yet written)
            if stored is not None:
                self.window = stored.window
                self._keep_events(stored.events)
            self.machine, self._unsaved = machine, Window(start=now)
            self.judgement, self._final_gates, self._final_worse, self.check = None, [], [], None
            events.append(started)
        else:
            events += machine.restage(rollout, now, self.counts())
            if rollout.mode == "auto":
                events += machine.override(now, (rollout.candidate_weight, rollout.shadow_percent))
            else:
                events += machine.manual_weights(now, (rollout.weight, rollout.shadow), "config")
        self.config, self.versions, self._hash = config, dict(versions), digest
        self._gpu_peak = {k: v for k, v in self._gpu_peak.items() if k[1] == versions.get(k[0])}
        self._set_webhooks(rollout.webhooks)
        # taken all the same while the store fails: the row is written, before anything of this rollout,
        # once the store recovers
        self.worker.write(
            functools.partial(
                self.store.save_rollout,
                key,
                app=self.app,
                policy={"config": without_secrets(section), "versions": versions, "hash": digest},
                state=machine.state.to_dict(),
            )
        )
        self._record(machine, events)
        self.publish()
        return self.table()

    def _set_webhooks(self, hooks: Sequence[Any]) -> None:
        """A new notifier only when the webhooks change; the old one is retired (drained, then closed)."""
        if self.notifier is not None and tuple(hooks) == self._hooks:
            return
        if self.notifier is not None:
            self.retired.append(self.notifier)
        self._hooks = tuple(hooks)
        self.notifier = self._notifier_factory(hooks)

    def _stored_machine(self, stored: StoredIdentity, rollout: Any) -> RolloutMachine | None:
        """The stored rollout with this identity and mode, if there is one."""
        record = stored.record
        if record is None:
            return None
        try:
            state = RolloutState.from_dict(record.state)
        except (KeyError, TypeError, ValueError):
            return None
        if state.mode != rollout.mode or state.phase is Phase.MANUAL:
            return None
        try:  # under the policy it ran with, so `restage` sees a change of stages
            policy = IngressConfig.model_validate(record.policy["config"]).rollout
        except Exception:
            policy = rollout
        return RolloutMachine(policy, state)

    def _superseded(self, machine: RolloutMachine, key: str, now: float) -> dict[str, Any]:
        return self._note(machine, "superseded", now, f"a config for rollout {key} was deployed")

    def _note(self, machine: RolloutMachine, kind: str, now: float, reason: str) -> dict[str, Any]:
        """An event that records something without changing the state."""
        state = machine.state
        return {
            "ts": now,
            "kind": kind,
            "from": state.phase.value,
            "to": state.phase.value,
            "stage": machine.stage.name if machine.stage else None,
            "stage_index": state.stage_index,
            "weight": state.candidate_weight,
            "shadow_percent": state.shadow_percent,
            "actor": "config",
            "reason": reason,
            "evidence": {},
        }

    # --- telemetry -----------------------------------------------------------------------------------------

    def ingest(
        self,
        replica_id: str,
        window: dict[str, Any],
        in_flight: int,
        requests: Sequence[tuple[str, float, str, list[tuple[str, str]]]] = (),
        feedback: Sequence[Sequence[Any]] = (),
        propagation_s: Sequence[float] = (),
        rollout: str | None = None,
    ) -> None:
        """One Ingress replica's counts since its last flush, the request ids it served, feedback it joined
        itself (request id, metric, value, ts, arm, segments) and how long its routing-table updates took
        to arrive. Feedback counts in the evidence once it is stored (`_count_feedback`), so a value sent
        twice counts once.

        ``rollout`` is the key of the rollout the replica served them under. While a redeploy rolls out, a
        replica still on the previous config serves the previous models, so when that key is a rollout this
        controller has left, its window is filed under it, not counted for the new candidate.
        """
        now = self.clock()
        if not self.telemetry.first_delivery(window.get("seq")):
            return  # counted already: its first call outlived the replica's wait, which sent it again
        delta = Window.from_dict(window)
        self.telemetry.ingest(replica_id, delta, in_flight, now, self._metric_values())
        for lag in propagation_s:
            self.propagation.add(max(lag, 0.0))
        if self.machine is None:
            return
        key = self.machine.state.key
        if rollout is not None and rollout != key and rollout in self._left:
            key = rollout
            self.worker.write(functools.partial(self.store.append_window, key, self._left[key], delta))
        else:
            self.window.merge(delta)
            self._unsaved.merge(delta)
            matcher = self._matcher()
            if matcher is not None:
                matcher.add(delta, (self.window, self._unsaved))
        if requests:
            rows = [(rid, ts, arm, [(s[0], s[1]) for s in segs]) for rid, ts, arm, segs in requests]
            self.worker.write(functools.partial(self.store.log_requests, key, rows), row=True)
        for row in feedback:
            self.worker.write(functools.partial(self._add_feedback, key, *row), row=True)

    def _add_feedback(
        self,
        key: str,
        rid: str,
        metric: str,
        value: float,
        ts: float,
        arm: str | None = None,
        segments: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """Store work: one value an Ingress joined itself, counted in the evidence once stored. An Ingress
        older than arm and segments in the row (four fields, during an upgrade) counted it in its own window
        already; the request log has its arm."""
        found = self.store.find_request(rid)
        key = found.key if found else key
        counted = arm is None or segments is None
        if arm is None or segments is None:
            arm, segments = (found.arm if found else "?"), []
        earlier = self.store.add_feedback(key, rid, arm, metric, value, ts)
        if earlier is None and not counted:
            self.worker.deliver(functools.partial(self._count_feedback, key, arm, segments, metric, value))
        elif earlier != value:
            self.feedback_conflicts += 1
            if self.feedback_conflicts in (1, 10, 100) or self.feedback_conflicts % 1000 == 0:
                logger.warning(
                    "feedback %s for request %r not stored: %s was stored first (%d such so far)",
                    metric,
                    rid,
                    earlier,
                    self.feedback_conflicts,
                )

    def _count_feedback(
        self, key: str, arm: str, segments: Sequence[Sequence[str]], metric: str, value: float
    ) -> None:
        """Counts a value just stored: in `/metrics` (everything since the controller started), and in the
        current rollout's evidence when it is that rollout's (on the event loop)."""
        if arm == "?":
            return
        current = self.machine is not None and key == self.machine.state.key
        matcher = self._matcher() if current else None
        matched = matcher.feedback_arm(arm) if matcher is not None else None
        cap = self._metric_values()
        for segment in [ALL, *((s[0], s[1]) for s in segments)]:
            self.telemetry.total.arm(arm, self.telemetry.metric_segment(segment, cap)).record_feedback(
                metric, value
            )
            if not current:
                continue
            for window in (self.window, self._unsaved):
                window.arm(arm, segment).record_feedback(metric, value)
                if matched is not None:
                    window.arm(matched, segment).record_feedback(metric, value)

    def _metric_values(self) -> int:
        """Values per label `/metrics` keeps over the controller's life (`TelemetryState.ingest`)."""
        top_n = self.config.segments.top_n if self.config is not None else SegmentsSection().top_n
        return METRIC_VALUES_PER_TOP_N * top_n

    def _matcher(self) -> Matcher | None:
        """The current rollout's time-matched sampler, when its policy asks for a matched baseline."""
        rollout = self.config.rollout if self.config is not None else None
        if rollout is None or rollout.baseline != "matched":
            return None
        key = self.machine.state.key if self.machine is not None else None
        if self._matching is None or self._matching[0] != key:
            self._matching = key, Matcher(self.rng)
        return self._matching[1]

    def _close_window(self, machine: RolloutMachine, now: float) -> None:
        """Writes the outgoing rollout's telemetry since the last write under its own key (kept in order
        while the store fails), before another rollout takes the window."""
        stage = machine.stage.name if machine.stage else machine.state.phase.value
        self._left.pop(machine.state.key, None)
        self._left[machine.state.key] = stage
        while len(self._left) > MAX_LEFT_ROLLOUTS:
            self._left.pop(next(iter(self._left)))
        if self._unsaved.empty():
            return
        window, self._unsaved = self._unsaved, Window(start=now)
        window.end = now
        self.worker.write(functools.partial(self.store.append_window, machine.state.key, stage, window))

    @property
    def store_error(self) -> str | None:
        """Why promotion is frozen: the store's writes fail, or it has not answered for a while."""
        problem = self.worker.problem(self.clock())
        return problem[0] if problem else None

    @property
    def store_failed_since(self) -> float | None:
        problem = self.worker.problem(self.clock())
        return problem[1] if problem else None

    def report_replica(self, arm: str, replica_id: str, report: dict[str, Any]) -> None:
        self.telemetry.report_replica(arm, replica_id, report, self.clock())
        self._count_replica_events()
        memory = _replica_memory(report)
        if memory is not None:
            peak = (arm, report.get("model_version") or self.versions.get(arm))
            self._gpu_peak[peak] = max(self._gpu_peak.get(peak, 0.0), memory)

    def replica_events(self) -> dict[str, dict[str, int]]:
        """OOM events and replica restarts per arm since the current rollout started. An arm whose replicas
        report counts 0 until one happens: that is data, not NODATA."""
        self._count_replica_events()
        reporting = {r.arm for r in self.telemetry.replicas.values()} | set(self._reported_arms)
        self._reported_arms |= reporting
        counted = self.machine.state.counted if self.machine is not None else {}
        return {
            name: {arm: counted.get(name, {}).get(arm, 0) for arm in reporting | set(counted.get(name, {}))}
            for name in ("oom_events", "restarts")
        }

    def _count_replica_events(self) -> None:
        """Adds the OOM events and replica restarts the controller counted since the last call to the current
        rollout's own counts, and notes each replica's OOM count, all in the rollout's state (stored with
        it): the gates count since the rollout started, across controller restarts."""
        totals = self.telemetry.per_arm()
        if self.machine is not None:
            state = self.machine.state
            for name, now in totals.items():
                seen, counted = self._counted_at.get(name, {}), state.counted.setdefault(name, {})
                for arm, n in now.items():
                    if n > seen.get(arm, 0):
                        counted[arm] = counted.get(arm, 0) + n - seen.get(arm, 0)
            state.replica_ooms = self.telemetry.replica_ooms()
        self._counted_at = totals

    def feedback(self, request_id: str, metric: str, value: float) -> dict[str, Any]:
        """Joins feedback to the arm that served ``request_id`` (an Ingress that served it itself records it
        locally instead). Raises `FeedbackError` for an unknown id, metric or an out-of-range value."""
        self.check_feedback(metric, value)
        try:
            stored = self.store_feedback(request_id, metric, value)
        except Exception:  # the client retries: a score is refused, never silently dropped
            raise FeedbackError(503, "request_id", "the rollout store is unavailable; retry later") from None
        return self.feedback_stored(stored, request_id, metric, value)

    def store_feedback(self, request_id: str, metric: str, value: float) -> StoredFeedback:
        """Store work only (the controller runs it on the store's thread): the logged request, and the value
        stored against the arm that served it, counted in the evidence once stored (even when the client
        that sent it stopped waiting)."""
        found = self.store.find_request(request_id)
        if found is None:
            return StoredFeedback(None, None)
        earlier = self.store.add_feedback(found.key, request_id, found.arm, metric, value, self.clock())
        if earlier is None:
            self.worker.deliver(
                functools.partial(self._count_feedback, found.key, found.arm, found.segments, metric, value)
            )
        return StoredFeedback(found, earlier)

    def feedback_stored(
        self, stored: StoredFeedback, request_id: str, metric: str, value: float
    ) -> dict[str, Any]:
        """The answer to POST /feedback once the store has it: 404 for an id never logged, 409 for a
        different value than the one stored first, 200 (``duplicate``: true) for the same one again."""
        found = stored.request
        if found is None:
            raise FeedbackError(
                404, "request_id", f"unknown request_id {request_id!r} (or older than retention)"
            )
        answer = {"request_id": request_id, "arm": found.arm, "metric": metric, "value": value}
        if stored.earlier is None:
            return answer
        if stored.earlier != value:
            raise FeedbackError(409, "value", feedback_conflict(metric, stored.earlier))
        return {**answer, "duplicate": True}

    def check_feedback(self, metric: str, value: float) -> None:
        metrics = self.config.rollout.feedback_metrics if self.config else ("human_review_score",)
        if metric not in metrics:
            raise FeedbackError(422, "metric", f"unknown metric {metric!r}; expected one of {list(metrics)}")
        low, high = FEEDBACK_RANGE
        if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
            raise FeedbackError(422, "value", f"value must be a number in [{low:g}, {high:g}], got {value!r}")

    # --- decisions -----------------------------------------------------------------------------------------

    def counts(self) -> Counts:
        return Counts(live=self.window.arm("candidate").requests, shadow=self.window.arm("shadow").requests)

    def evidence(self) -> Evidence:
        assert self.machine is not None
        state = self.machine.state
        stage = self.machine.stage
        live = state.candidate_weight > 0 or (stage is not None and not stage.is_shadow)
        counted = self.replica_events()
        return Evidence(
            window=self.window,
            live=live,
            oom_events=counted["oom_events"],
            restarts=counted["restarts"],
            gpu_memory_bytes={
                arm: peak
                for (arm, version), peak in self._gpu_peak.items()
                if version == self.versions.get(arm)
            },
            matched=self.config is not None and self.config.rollout.baseline == "matched",
        )

    def step(self) -> list[dict[str, Any]]:
        """One judgement and one automatic step; returns the events it caused."""
        now = self.clock()
        self.telemetry.expire(now)
        machine = self.machine
        if machine is None or self.config is None:
            return []
        judgement = None
        if machine.state.mode == "auto" and machine.state.phase in JUDGED:
            rollout = self.config.rollout
            judgement = judge(
                rollout.gate_specs(tuple(f.name for f in self.config.fields)),
                self.evidence(),
                alpha=rollout.alpha,
                labels=rollout.judge_segments,
                max_values_per_label=self.config.segments.top_n + 2,  # the named values, "other", "unset"
            )
            self.judgement = judgement
        current = self._current_check(now)
        check = current.outcome if current is not None else None
        if self.store_error is not None and not (judgement is not None and judgement.rollback):
            events: list[dict[str, Any]] = []  # frozen: no step on evidence that cannot be kept
        else:
            events = machine.tick(now, judgement, self.counts(), check)
        self._record(machine, events)
        if events:
            if judgement is not None and machine.state.phase not in JUDGED:
                self._final_gates = [r.to_dict() for r in judgement.results]
                self._final_worse = list(judgement.worse)
            self.publish()
        if now - self._saved_at >= PERSIST_EVERY_S:
            self.persist()
        return events

    def _asking(self) -> CheckAsk | None:
        state = self.machine.state if self.machine is not None else None
        if state is None or state.stage_index is None:
            return None
        return CheckAsk(state.key, state.stage_index, state.stage_started_at)

    def _current_check(self, now: float) -> CheckState | None:
        """The external check's answer for this visit to this stage, while fresh: an answer older than the
        check's time-out + 5 s is asked again before it lets the rollout promote."""
        check, stage = self.check, self.machine.stage if self.machine else None
        if check is None or stage is None or stage.check is None or check.ask != self._asking():
            return None
        return check if now - check.at <= stage.check.timeout_s + CHECK_FRESH_S else None

    def wants_check(self) -> tuple[CheckAsk, Any] | None:
        """(what is asked, check spec) when the stage's external check should be asked (again) now."""
        machine, now = self.machine, self.clock()
        if machine is None or not machine.wants_check(now, self.judgement, self.counts()):
            return None
        stage, ask = machine.stage, self._asking()
        assert stage is not None and stage.check is not None and ask is not None
        if self._current_check(now) is not None:
            return None
        return ask, stage.check

    def checked(self, ask: CheckAsk, outcome: CheckOutcome, reason: str) -> None:
        """Records an external check's answer to ``ask``; a change of answer becomes an event. An answer to a
        question no longer asked (another rollout deployed, the stage left or entered again while it was on
        its way) is logged and dropped."""
        if ask != self._asking():
            logger.info("external check answered %s for %s, no longer current; ignored", outcome.value, ask)
            return
        previous = self.check
        self.check = CheckState(ask, outcome, reason, self.clock())
        if self.machine and (previous is None or (previous.ask, previous.outcome) != (ask, outcome)):
            event = self._note(self.machine, "check", self.clock(), f"{outcome.value}: {reason}")
            event["actor"] = "external-check"
            self._record(self.machine, [event])

    def act(self, action: str, actor: str, reason: str, weight: float | None = None) -> dict[str, Any]:
        """An operator action (pause, resume, promote, rollback, set_weight, acknowledge), recorded with who
        and why. Raises `ActionError` when the state does not allow it."""
        if self.machine is None:
            raise ActionError("no rollout yet: deploy a config first")
        if self.store_error is not None and action in ("promote", "resume", "set_weight"):
            raise ActionError(
                f"{action} is refused while the rollout store cannot be written ({self.store_error}); "
                "rollback and pause still work"
            )
        events = self.machine.act(action, self.clock(), actor, reason, self.counts(), weight)
        if events and self.machine.state.phase in (Phase.ROLLED_BACK, Phase.PROMOTED) and self.judgement:
            self._final_gates = [r.to_dict() for r in self.judgement.results]
            self._final_worse = list(self.judgement.worse)
        self._record(self.machine, events)
        self.publish()
        return {"events": events, "state": self.view()}

    def _record(self, machine: RolloutMachine, events: list[dict[str, Any]]) -> None:
        """Every event is stored with the state it produced, in one transaction, in order (kept until the
        store takes it), and heard of (webhooks) only once stored."""
        for event in events:
            key, state = machine.state.key, machine.state.to_dict()
            logger.info("rollout %s: %s → %s (%s)", key, event["from"], event["to"], event["reason"])
            if machine is self.machine:
                self._events.append(event)
                self._events_total += 1
                if len(self._events) >= 2 * EVENTS_KEPT:
                    del self._events[:-EVENTS_KEPT]
            self.worker.write(
                functools.partial(self.store.save_state_and_event, key, state, event),
                then=functools.partial(self._stored, key, event),
            )

    def _stored(self, key: str, event: dict[str, Any], seq: int) -> None:
        event["seq"] = seq
        if self.notifier is not None:
            self.notifier.send({"app": self.app, "rollout": key, **event})

    def persist(self) -> None:
        """Writes the telemetry since the last write as one window aggregate, and the state."""
        machine = self.machine
        self._saved_at = now = self.clock()
        if machine is None:
            return
        self.worker.retry()
        if not self._unsaved.empty():
            self._unsaved.end = now
            stage = machine.stage.name if machine.stage else machine.state.phase.value
            self.worker.write(
                functools.partial(self.store.append_window, machine.state.key, stage, self._unsaved)
            )
            self._unsaved = Window(start=now)
        self.worker.write(
            functools.partial(
                self.store.save_rollout,
                machine.state.key,
                app=self.app,
                policy={
                    "config": self.config.model_dump(mode="json") if self.config else {},
                    "versions": self.versions,
                    "hash": self._hash,
                },
                state=machine.state.to_dict(),
            )
        )

    # --- routing -------------------------------------------------------------------------------------------

    def table(self) -> dict[str, Any]:
        """The routing table every Ingress replica follows."""
        state = self.machine.state if self.machine else None
        return {
            "version": state.table_version if state else 0,
            "key": state.key if state else None,
            "mode": state.mode if state else "manual",
            "stage": state.phase.value if state else "manual",
            "candidate_weight": state.candidate_weight if state else 0.0,
            "shadow_percent": state.shadow_percent if state else 0.0,
            "published_at": self.clock(),
        }

    def publish(self) -> None:
        if self.machine is None:
            return
        self.machine.state.table_version += 1
        self.on_table(self.table())

    # --- views ---------------------------------------------------------------------------------------------

    def gates(self) -> tuple[list[dict[str, Any]], list[str], list[list[str]]]:
        machine = self.machine
        if machine is not None and machine.state.phase in JUDGED and self.judgement is not None:
            j = self.judgement
            gates, worse, skipped = (
                [r.to_dict() for r in j.results],
                list(j.worse),
                [list(s) for s in j.skipped],
            )
        else:
            gates, worse, skipped = list(self._final_gates), self._final_worse, []
        if self.store_error is not None:
            gates.append(
                {
                    "gate": "store",
                    "segment": "all",
                    "verdict": "ERROR",
                    "evidence": {
                        "rule": "while the store cannot be written, nothing is promoted; rollback still acts",
                        "reason": self.store_error,
                        "since": self.store_failed_since,
                    },
                }
            )
        return gates, worse, skipped

    def view(self) -> dict[str, Any]:
        """The rollout part of ``GET /rollout``."""
        machine = self.machine
        if machine is None or self.config is None:
            return {
                "mode": "manual",
                "stage": "manual",
                "candidate_weight": 0.0,
                "shadow_percent": 0.0,
                "gates": [],
                "events": [],
                "worse": [],
            }
        state, rollout = machine.state, self.config.rollout
        gates, worse, skipped = self.gates()
        events = self._events
        counts = self.counts()
        return {
            "rollout_key": state.key,
            "rollout_id": rollout.rollout_id,
            "versions": self.versions,
            "mode": state.mode,
            "stage": state.phase.value,
            "stage_index": state.stage_index,
            "stage_name": machine.stage.name if machine.stage else None,
            "stages": [
                {"name": s.name, **s.model_dump(mode="json", exclude_none=True)} for s in rollout.stages
            ],
            "candidate_weight": state.candidate_weight,
            "shadow_percent": state.shadow_percent,
            "started_at": state.started_at,
            "stage_started_at": state.stage_started_at,
            "stage_requests": machine.stage_requests(counts),
            "outcome": state.outcome,
            "owner": rollout.owner,
            "rollback_condition": rollout.rollback_condition,
            "impact": rollout.impact,
            "change": rollout.change,
            "alpha": rollout.alpha,
            "baseline": self._baseline_view(),
            "gates": gates,
            "store": {
                "ok": self.store_error is None,
                "error": self.store_error,
                "since": self.store_failed_since,
                "unstored": self.worker.pending,
            },
            "worse": worse,
            "skipped": skipped,
            "check": None
            if self.check is None
            else {
                "stage_index": self.check.stage_index,
                "outcome": self.check.outcome.value,
                "reason": self.check.reason,
                "at": self.check.at,
            },
            "events": events[-EVENTS_SHOWN:],
            "events_total": self._events_total,
            "routing_table_version": state.table_version,
            "propagation_ms": {
                "count": self.propagation.count,
                "p50": _ms(self.propagation.quantile(0.5)),
                "p99": _ms(self.propagation.quantile(0.99)),
            },
            "notifications": None
            if self.notifier is None
            else {
                "delivered": sum(d.ok for d in self.notifier.deliveries),
                "failed": sum(not d.ok for d in self.notifier.deliveries),
                "dropped": self.notifier.dropped,
            },
        }

    def _baseline_view(self) -> dict[str, Any]:
        """What the comparative gates compare: all of stable, or the time-matched sample and its size."""
        matcher = self._matcher()
        if matcher is None:
            return {"mode": "all"}
        return {
            "mode": "matched",
            "ratio": matcher.ratio,
            **{
                f"{side}_requests": stats.requests if stats is not None else 0
                for side, stats in (
                    ("stable", self.window.arms.get((MATCHED_STABLE, ALL))),
                    ("candidate", self.window.arms.get((MATCHED_CANDIDATE, ALL))),
                )
            },
        }

    def read_report(self, key: str) -> tuple[list[dict[str, Any]], list[tuple[str, Window]]]:
        """Store reads only (the controller runs them on the store's thread): the events and windows."""
        return self.store.events(key), self.store.windows(key)

    def report_input(
        self, stored: tuple[list[dict[str, Any]], list[tuple[str, Window]]] | None = None
    ) -> ReportInput:
        """What the post-rollout report is built from; ``stored`` is `read_report` of the current rollout
        after a `persist`, read beforehand off the event loop; without it, both are done here."""
        if self.machine is None or self.config is None:
            raise ActionError("no rollout yet: deploy a config first")
        key = self.machine.state.key
        if stored is None:
            self.persist()
            stored = self.read_report(key)
        gates, worse, _ = self.gates()
        return ReportInput(
            app=self.app,
            key=key,
            policy=self.config.rollout.model_dump(mode="json"),
            state={
                **self.machine.state.to_dict(),
                "stage": self.machine.state.phase.value,
                "versions": self.versions,
                "rollout_id": self.config.rollout.rollout_id,
            },
            events=stored[0],
            windows=stored[1],
            gates=gates,
            worse=worse,
        )


def _replica_memory(report: dict[str, Any]) -> float | None:
    """This replica's own GPU memory: NVML's per-process number, else what torch reserved."""
    gpus = report.get("gpus") or []
    process = [g.get("process_memory_bytes") for g in gpus if g.get("process_memory_bytes") is not None]
    if process:
        return float(sum(process))
    reserved = report.get("torch_reserved_bytes")
    return float(reserved) if reserved is not None else None


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None
