"""The controller's bookkeeping, free of Ray and of the wall clock (``now`` is passed in): merged telemetry
from every Ingress replica, the latest report of every model replica, OOMs and restarts per arm."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from rollout.series import ArmSeries
from serving.segments import ALL, OTHER, UNSET, Segment
from serving.telemetry import Window

STALE_AFTER_S = 10.0  # a replica silent this long is gone
MAX_SENDERS = 4096  # Ingress incarnations whose last flush number is remembered
METRIC_VALUES_PER_TOP_N = 4  # values per label `/metrics` keeps over the controller's life, per top_n
MAX_STOPPED = 1024  # replicas remembered as stopped on purpose, so a report arriving late is ignored


@dataclass
class ReplicaRecord:
    arm: str
    replica_id: str
    first_seen: float
    last_seen: float
    report: dict[str, Any]
    oom_seen: int = 0


@dataclass
class TelemetryState:
    """Everything the controller knows about the numbers; `Window` merges are exact."""

    total: Window = field(default_factory=Window)
    ingress: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # replica id -> {"last_seen", "in_flight"}
    replicas: dict[str, ReplicaRecord] = field(default_factory=dict)
    oom_events: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    _pending_lost: dict[str, list[str]] = field(default_factory=dict)  # arm -> lost, not yet replaced
    _gone: dict[str, int] = field(default_factory=dict)  # replica id -> OOMs already counted from it
    _stopped: dict[str, None] = field(default_factory=dict)  # replicas that said they stopped, oldest first
    series: ArmSeries = field(default_factory=ArmSeries)  # per-arm numbers over time, for the charts
    _flushed: dict[str, int] = field(default_factory=dict)  # Ingress incarnation -> last flush counted
    _metric_values: dict[str, dict[str, None]] = field(default_factory=dict)  # label -> values in the totals
    duplicates: int = 0  # flushes received again after they were counted, and dropped

    def metric_segment(self, segment: Segment, max_values: int | None) -> Segment:
        """The segment a value counts under in the totals: itself, or ``other`` once its label has
        ``max_values`` values."""
        label, value = segment
        if max_values is None or segment == ALL or value in (OTHER, UNSET):
            return segment
        values = self._metric_values.setdefault(label, {})
        if value in values:
            return segment
        if len(values) < max_values:
            values[value] = None
            return segment
        return (label, OTHER)

    def first_delivery(self, seq: object) -> bool:
        """Whether a flush numbered ``seq`` (``[incarnation, n]``, absent from an older Ingress) is new.

        An Ingress sends its flushes in order, each unchanged until one call succeeds, and the next only
        then: so a flush numbered at or below the last one counted from its incarnation is a copy (its first
        call ran after the replica had given up waiting for it and sent it again).
        """
        if not (isinstance(seq, list | tuple) and len(seq) == 2):
            return True
        sender, number = seq
        if not isinstance(sender, str) or not isinstance(number, int) or isinstance(number, bool):
            return True
        last = self._flushed.pop(sender, None)
        if last is not None and number <= last:
            self._flushed[sender] = last
            self.duplicates += 1
            return False
        self._flushed[sender] = number  # most recent last, so the oldest go first
        while len(self._flushed) > MAX_SENDERS:
            self._flushed.pop(next(iter(self._flushed)))
        return True

    def ingest(
        self, replica_id: str, window: Window, in_flight: int, now: float, max_values: int | None = None
    ) -> None:
        """Adds one Ingress replica's window (its counts since its previous report). In the totals (what
        `/metrics` exports) each label keeps at most ``max_values`` values over the controller's life; later
        ones count under ``other``, so the number of series stays bounded however many rollouts name
        values of their own."""
        if self.total.empty():
            self.total.start = window.start
        for (arm, segment), stats in window.arms.items():
            self.total.arm(arm, self.metric_segment(segment, max_values)).merge(stats)
        for segment, pairs in window.shadow.items():
            self.total.shadow_in(self.metric_segment(segment, max_values)).merge(pairs)
        self.total.end = max(self.total.end, window.end)
        self.series.add(window, now)
        self.ingress[replica_id] = {"last_seen": now, "in_flight": in_flight}

    def report_replica(self, arm: str, replica_id: str, report: dict[str, Any], now: float) -> None:
        """Records a model replica's latest report (GPU samples, cumulative OOM count).

        A replica's last report, at its graceful shutdown, carries ``stopping``: ``"shutdown"`` when Serve
        stopped it on purpose (a redeploy, a scale-down), so it is forgotten at once and is no restart;
        ``"unhealthy"`` when it was replaced for failing its health check, which counts as one, like a replica
        that stopped without a word (crashed, killed, its node lost) and was replaced.
        """
        self.expire(now)
        if replica_id in self._stopped:  # a report that was overtaken by its replica's last one
            return
        record = self.replicas.get(replica_id)
        if record is None and replica_id in self._gone:
            # it was only quiet (a long GC pause, a busy controller): not lost after all
            record = self.replicas[replica_id] = ReplicaRecord(arm, replica_id, now, now, report)
            record.oom_seen = self._gone.pop(replica_id)
            with contextlib.suppress(ValueError):
                self._pending_lost.get(arm, []).remove(replica_id)
        if report.get("stopping") == "shutdown":
            self._count_ooms(arm, int(report.get("oom_events", 0)) - (record.oom_seen if record else 0))
            self.replicas.pop(replica_id, None)
            self._stopped[replica_id] = None
            while len(self._stopped) > MAX_STOPPED:
                self._stopped.pop(next(iter(self._stopped)))
            return
        if record is None:
            record = self.replicas[replica_id] = ReplicaRecord(arm, replica_id, now, now, report)
            lost = self._pending_lost.get(arm)
            if lost:  # it replaces one that stopped without a word
                lost.pop(0)
                self.restarts[arm] = self.restarts.get(arm, 0) + 1
        ooms = int(report.get("oom_events", 0))
        self._count_ooms(arm, ooms - record.oom_seen)
        record.oom_seen = max(record.oom_seen, ooms)
        record.last_seen, record.report = now, report

    def _count_ooms(self, arm: str, new: int) -> None:
        if new > 0:
            self.oom_events[arm] = self.oom_events.get(arm, 0) + new

    def expire(self, now: float) -> None:
        """Drops replicas silent for `STALE_AFTER_S`; one replaced by a newer replica counts as a restart."""
        for replica_id, record in list(self.replicas.items()):
            if now - record.last_seen <= STALE_AFTER_S:
                continue
            del self.replicas[replica_id]
            self._gone[replica_id] = record.oom_seen
            # replaced: a newer replica of its arm is reporting now (when every replica is silent, it is the
            # controller that stalled, not they that died)
            replaced = any(
                r.arm == record.arm
                and r.first_seen > record.last_seen - STALE_AFTER_S
                and r.first_seen > record.first_seen
                and now - r.last_seen <= STALE_AFTER_S
                for r in self.replicas.values()
            )
            if replaced:
                self.restarts[record.arm] = self.restarts.get(record.arm, 0) + 1
            else:
                self._pending_lost.setdefault(record.arm, []).append(replica_id)
        for replica_id, info in list(self.ingress.items()):
            if now - info["last_seen"] > STALE_AFTER_S:
                del self.ingress[replica_id]

    def replica_ooms(self) -> dict[str, int]:
        """Each reporting model replica's OOM count, as far as it has been counted."""
        return {replica_id: r.oom_seen for replica_id, r in self.replicas.items()}

    def known_replicas(self, ooms: dict[str, int]) -> None:
        """Replicas a previous controller counted OOMs from (``replica_ooms``): when they report, only OOMs
        beyond those count, and they are no restart."""
        for replica_id, seen in ooms.items():
            if replica_id not in self.replicas:
                self._gone[replica_id] = int(seen)

    def shadow_in_flight(self) -> int:
        return sum(int(info["in_flight"]) for info in self.ingress.values())

    def replica_reports(self) -> list[dict[str, Any]]:
        return [{"arm": r.arm, "replica_id": r.replica_id, **r.report} for r in self.replicas.values()]

    def per_arm(self) -> dict[str, dict[str, int]]:
        return {"oom_events": dict(self.oom_events), "restarts": dict(self.restarts)}

    def summary(self, window: Window | None = None) -> dict[str, Any]:
        """The merged numbers for ``GET /rollout``: per arm, shadow, per segment (of ``window``, by default
        everything since the controller started), and the replicas."""
        w = self.total if window is None else window
        return {
            "arms": {arm: w.arm(arm, ALL).summary() for arm in ("stable", "candidate", "shadow")},
            "shadow": w.shadow_in(ALL).summary(),
            "segments": [
                {
                    "label": label,
                    "value": value,
                    "stable": w.arm("stable", (label, value)).summary(),
                    "candidate": w.arm("candidate", (label, value)).summary(),
                    # as at the top level: the mirrored pairs, with the candidate's answers to them as stats
                    "shadow": {
                        **w.shadow_in((label, value)).summary(),
                        "stats": w.arm("shadow", (label, value)).summary(),
                    },
                }
                for label, value in w.segments()
            ],
            "replicas": self.replica_reports(),
            "oom_events": dict(self.oom_events),
            "restarts": dict(self.restarts),
            "since": w.start,
        }
