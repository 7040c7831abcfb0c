"""The controller's logic without Ray: a fake clock, a real SQLite store in a temporary directory, real
Windows from the telemetry module, the real judge. Restarting = building a new supervisor on the same file."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from rollout.machine import ActionError
from rollout.matching import MATCHED_CANDIDATE, MATCHED_STABLE
from rollout.notify import CheckOutcome, Notifier
from rollout.store import RolloutStore
from rollout.store_worker import StoreWorker
from rollout.supervisor import FeedbackError, RolloutSupervisor
from serving.segments import ALL
from serving.telemetry import Window

VERSIONS = {"stable": "fraud-v1", "candidate": "fraud-v2"}
STAGES = [
    {"shadow_percent": 100, "min_duration_s": 5, "min_requests": 100},
    {"weight": 25, "min_duration_s": 5, "min_requests": 100},
    {"weight": 100, "min_duration_s": 5, "min_requests": 100},
]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def section(**extra: Any) -> dict[str, Any]:
    rollout: dict[str, Any] = {
        "mode": "auto",
        "rollout_id": "r1",
        "owner": "ml@example.com",
        "rollback_condition": "errors above 1% in any tier",
        "stages": STAGES,
        "promotion_gates": {"error_rate": {"maximum": 0.01}},
        "judge_segments": ["tier"],
    }
    rollout.update(extra)
    return {"rollout": rollout}


def traffic(rng: random.Random, weight: float, shadow: float, n: int, bad_tier: str | None = None) -> Window:
    """One second of requests: the candidate errs on every request of ``bad_tier``."""
    w = Window()
    for _ in range(n):
        tier = rng.choice(["free", "pro", "gold"])
        segments = [ALL, ("tier", tier)]
        arm = "candidate" if rng.random() * 100 < weight else "stable"
        status = "error" if arm == "candidate" and tier == bad_tier else "ok"
        for seg in segments:
            w.arm(arm, seg).record(status, rng.lognormvariate(-2.5, 0.3))
        if arm == "stable" and rng.random() * 100 < shadow:
            shadow_status = "error" if tier == bad_tier else "ok"
            for seg in segments:
                w.arm("shadow", seg).record(shadow_status, rng.lognormvariate(-2.5, 0.3))
    return w


def run(
    sup: RolloutSupervisor, clock: Clock, seconds: int, bad_tier: str | None = None, seed: int = 0
) -> None:
    rng = random.Random(seed)
    for _ in range(seconds):
        clock.now += 1
        table = sup.table()
        w = traffic(rng, table["candidate_weight"], table["shadow_percent"], 200, bad_tier)
        sup.ingest("ingress-1", w.to_dict(), 0)
        sup.step()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "rollout.db"


def supervisor(path: Path, clock: Clock) -> RolloutSupervisor:
    return RolloutSupervisor("canary", RolloutStore(path, clock=clock), clock)


def test_a_good_candidate_walks_every_stage_and_is_promoted(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    tables: list[dict[str, Any]] = []
    sup.on_table = tables.append
    sup.configure(section(), VERSIONS)
    run(sup, clock, 120)
    view = sup.view()
    assert view["stage"] == "promoted", view["events"][-3:]
    kinds = [(e["kind"], e["weight"], e["shadow_percent"]) for e in view["events"]]
    assert kinds[:2] == [("started", 0, 0), ("stage", 0, 100)]
    assert ("stage", 25, 0) in kinds and ("promoted", 100, 0) in kinds
    assert [t["candidate_weight"] for t in tables][-1] == 100
    assert all(b["version"] > a["version"] for a, b in itertools.pairwise(tables))
    assert view["gates"] and all(g["verdict"] == "PASS" for g in view["gates"] if g["segment"] == "all")


def test_a_candidate_bad_for_one_tier_is_rolled_back_naming_it(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 60, bad_tier="gold")
    view = sup.view()
    assert view["stage"] == "rolled_back"
    assert (view["candidate_weight"], view["shadow_percent"]) == (0, 0)
    failing = [g for g in view["gates"] if g["verdict"] == "FAIL"]
    assert any(g["segment"] == "tier=gold" for g in failing)
    assert "tier=gold" in view["worse"]
    assert view["events"][-1]["kind"] == "rolled_back" and "tier=gold" in view["events"][-1]["reason"]


def test_restart_resumes_stage_weights_events_and_evidence(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 12)
    sup.persist()
    before = sup.view()
    assert before["stage"] in ("shadow", "canary")
    again = supervisor(store_path, clock)  # what Ray does after SIGKILL: a fresh actor on the same store
    after = again.view()
    for key in ("stage", "stage_index", "candidate_weight", "shadow_percent", "rollout_key", "events_total"):
        assert after[key] == before[key], key
    assert again.table()["version"] > sup.table()["version"]  # every Ingress re-reads the table
    assert again.window.arm("shadow").requests == sup.window.arm("shadow").requests
    # the dashboard's charts keep the rollout's history across the restart
    charted = sum(p["arms"].get("shadow", {}).get("requests", 0) for p in again.telemetry.series.points())
    assert charted == sup.window.arm("shadow").requests > 0
    # the same config deployed again resumes; it does not start over
    again.configure(section(), VERSIONS)
    assert again.view()["stage"] == before["stage"] and again.view()["events_total"] == before["events_total"]


def test_new_identity_starts_over_and_supersedes(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 12)
    old = sup.view()["rollout_key"]
    sup.configure(section(rollout_id="r2"), VERSIONS)
    view = sup.view()
    assert view["rollout_key"] != old and view["stage"] == "pending" and view["events_total"] == 1
    assert sup.store.events(old)[-1]["kind"] == "superseded"


def test_weight_edit_in_auto_mode_pauses_and_is_recorded(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 3)
    sup.configure(section(candidate_weight=10), VERSIONS)
    view = sup.view()
    assert view["stage"] == "paused" and view["candidate_weight"] == 10
    assert view["events"][-1]["kind"] == "override" and view["events"][-1]["actor"] == "config"


def test_operator_actions_are_recorded_with_who_and_why(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 3)
    sup.act("rollback", "alice@example.com", "pager went off")
    event = sup.store.events(sup.view()["rollout_key"])[-1]
    assert (event["kind"], event["actor"], event["reason"]) == (
        "rolled_back",
        "alice@example.com",
        "pager went off",
    )
    with pytest.raises(ActionError):
        sup.act("resume", "alice@example.com", "oops")


def test_feedback_joins_the_arm_and_refuses_unknown_ids_and_values(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    sup.ingest(
        "ingress-1", Window().to_dict(), 0, requests=[("req-1", clock.now, "candidate", [("tier", "gold")])]
    )
    answer = sup.feedback("req-1", "human_review_score", 0.8)
    assert answer["arm"] == "candidate"
    assert sup.window.arm("candidate", ("tier", "gold")).feedback["human_review_score"].mean == 0.8
    with pytest.raises(FeedbackError) as unknown:
        sup.feedback("nope", "human_review_score", 0.8)
    assert unknown.value.status == 404 and unknown.value.field == "request_id"
    with pytest.raises(FeedbackError) as bad:
        sup.feedback("req-1", "human_review_score", 1.5)
    assert bad.value.status == 422 and bad.value.field == "value"
    with pytest.raises(FeedbackError) as metric:
        sup.feedback("req-1", "stars", 0.5)
    assert metric.value.field == "metric"


def review_scores(sup: RolloutSupervisor, arm: str, segment: Any = ALL) -> tuple[int, float]:
    stat = sup.window.arm(arm, segment).feedback.get("human_review_score")
    return (stat.count, stat.mean) if stat else (0, 0.0)


def test_a_score_sent_again_counts_once_and_a_different_one_is_refused(
    store_path: Path, clock: Clock
) -> None:
    """A client that retries POST /feedback (its answer lost, or a 503) must not weigh its score twice."""
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    sup.ingest(
        "ingress-1", Window().to_dict(), 0, requests=[("req-1", clock.now, "candidate", [("tier", "gold")])]
    )
    assert "duplicate" not in sup.feedback("req-1", "human_review_score", 0.8)
    assert sup.feedback("req-1", "human_review_score", 0.8)["duplicate"] is True
    with pytest.raises(FeedbackError) as conflict:
        sup.feedback("req-1", "human_review_score", 0.1)
    assert conflict.value.status == 409 and conflict.value.field == "value" and "0.8" in str(conflict.value)
    assert review_scores(sup, "candidate") == review_scores(sup, "candidate", ("tier", "gold")) == (1, 0.8)
    assert [f["value"] for f in sup.store.feedback(sup.view()["rollout_key"])] == [0.8]


def test_feedback_an_ingress_joined_counts_once_stored_and_once_only(store_path: Path, clock: Clock) -> None:
    """Rows an Ingress joined itself count in the evidence when the store has them: not while it fails,
    and not twice when the same score arrives from two replicas (a client's retry landing elsewhere)."""
    store = FailingStore(store_path, clock=clock)
    sup = RolloutSupervisor("canary", store, clock)
    sup.configure(section(), VERSIONS)
    request = ("req-1", clock.now, "stable", [("tier", "free")])
    row = ("req-1", "human_review_score", 0.6, clock.now, "stable", [["tier", "free"]])
    store.broken = True
    sup.ingest("ingress-1", Window().to_dict(), 0, requests=[request], feedback=[row])
    assert review_scores(sup, "stable") == (0, 0.0)  # not stored yet: not evidence yet
    store.broken = False
    clock.now += 10
    sup.persist()  # the store is back: the kept writes go in, in order
    assert review_scores(sup, "stable") == review_scores(sup, "stable", ("tier", "free")) == (1, 0.6)
    sup.ingest("ingress-2", Window().to_dict(), 0, feedback=[row])  # the same score, via another replica
    sup.ingest("ingress-2", Window().to_dict(), 0, feedback=[(*row[:2], 0.1, *row[3:])])  # a different one
    assert review_scores(sup, "stable") == (1, 0.6)
    assert [f["value"] for f in store.feedback(sup.view()["rollout_key"])] == [0.6]
    assert sup.feedback_conflicts == 1
    in_metrics = sup.telemetry.total.arm("stable", ("tier", "free")).feedback["human_review_score"]
    assert (in_metrics.count, in_metrics.mean) == (1, 0.6)  # /metrics counts it once too
    # an Ingress from before arm and segments in the row counted the value in its own window: stored
    # against the arm the request log names, not counted a second time
    sup.ingest("ingress-3", Window().to_dict(), 0, feedback=[("req-1", "clicked", 1.0, clock.now)])
    assert "clicked" not in sup.window.arm("stable").feedback
    assert [(f["metric"], f["arm"]) for f in store.feedback(sup.view()["rollout_key"])][-1] == (
        "clicked",
        "stable",
    )


def test_a_score_stored_after_its_client_stopped_waiting_counts_once(store_path: Path, clock: Clock) -> None:
    """The controller answers 503 when the store takes over 2 s; the write goes on and may succeed. The
    score must count then, and the client's retry must find it there rather than add it again."""
    worker = StoreWorker(clock, background=True)
    sup = RolloutSupervisor("canary", RolloutStore(store_path, clock=clock), clock, worker=worker)
    try:
        sup.configure(section(), VERSIONS)
        sup.ingest("ingress-1", Window().to_dict(), 0, requests=[("req-1", clock.now, "candidate", [])])
        worker.call(lambda: None).result(10)  # the request log is written
        lock = sqlite3.connect(store_path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            first = worker.call(lambda: sup.store_feedback("req-1", "human_review_score", 0.7))
            time.sleep(0.5)
            assert not first.done()  # the client gives up here
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert first.result(30).earlier is None  # the busy timeout waited the lock out: stored
        assert review_scores(sup, "candidate") == (1, 0.7)
        retry = worker.call(lambda: sup.store_feedback("req-1", "human_review_score", 0.7)).result(10)
        assert sup.feedback_stored(retry, "req-1", "human_review_score", 0.7)["duplicate"] is True
        assert review_scores(sup, "candidate") == (1, 0.7)
    finally:
        worker.close()


def test_replicas_reporting_zero_ooms_are_evidence_and_one_oom_rolls_back(
    store_path: Path, clock: Clock
) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(promotion_gates={"gpu_oom_events": {"maximum": 0}}), VERSIONS)
    for arm in ("stable", "candidate"):
        sup.report_replica(arm, f"{arm}-1", {"oom_events": 0, "gpus": None})
    run(sup, clock, 3)
    oom = next(g for g in sup.view()["gates"] if g["gate"] == "gpu_oom_events")
    assert oom["verdict"] != "NODATA"
    sup.report_replica("candidate", "candidate-1", {"oom_events": 1, "gpus": None})
    run(sup, clock, 2)
    assert sup.view()["stage"] == "rolled_back"


def test_oom_counts_since_the_rollout_started_survive_a_controller_restart(
    store_path: Path, clock: Clock
) -> None:
    """The OOM gate counts from the rollout's start, across restarts: a previous candidate's OOMs do not
    hide the new one's, and a live replica's OOMs a previous controller counted are not counted again."""
    gates = {"gpu_oom_events": {"maximum": 0}}
    sup = supervisor(store_path, clock)
    sup.configure(section(rollout_id="r0", promotion_gates=gates), VERSIONS)
    sup.report_replica("stable", "s-1", {"oom_events": 0})
    sup.report_replica("candidate", "c-old", {"oom_events": 3})
    run(sup, clock, 2)
    assert sup.view()["stage"] == "rolled_back"
    sup.configure(section(rollout_id="r1", promotion_gates=gates), {**VERSIONS, "candidate": "fraud-v3"})
    sup.report_replica("candidate", "c-old", {"oom_events": 3, "stopping": "shutdown"})
    sup.report_replica("candidate", "c-new", {"oom_events": 0})
    sup.report_replica("stable", "s-1", {"oom_events": 2})
    run(sup, clock, 3)
    assert sup.evidence().oom_events == {"stable": 2, "candidate": 0}
    assert sup.view()["stage"] != "rolled_back"
    sup.persist()

    again = supervisor(store_path, clock)  # SIGKILL, restarted by Ray: its counters start at 0
    assert again.evidence().oom_events == {"stable": 2}  # the candidate's replicas have not reported yet
    for _ in range(3):  # the same replicas report their lifetime counts again
        again.report_replica("stable", "s-1", {"oom_events": 2})
        again.report_replica("candidate", "c-new", {"oom_events": 0})
        run(again, clock, 1)
    assert again.evidence().oom_events == {"stable": 2, "candidate": 0}
    assert again.view()["stage"] != "rolled_back"
    again.report_replica("candidate", "c-new", {"oom_events": 1})  # the new candidate's first OOM
    run(again, clock, 2)
    assert again.evidence().oom_events == {"stable": 2, "candidate": 1}
    assert again.view()["stage"] == "rolled_back"


def gpu_report(gib: float, version: str) -> dict[str, Any]:
    used = int(gib * 2**30)
    return {
        "oom_events": 0,
        "model_version": version,
        "gpus": [{"index": 0, "memory_used_bytes": used, "process_memory_bytes": used}],
    }


def test_a_new_candidate_is_not_held_to_an_earlier_candidates_gpu_memory(
    store_path: Path, clock: Clock
) -> None:
    gates = {"gpu_memory": {"maximum_regression_percent": 10}}
    sup = supervisor(store_path, clock)
    sup.configure(section(rollout_id="r0", promotion_gates=gates), VERSIONS)
    sup.report_replica("stable", "s-1", gpu_report(1, "fraud-v1"))
    sup.report_replica("candidate", "c-1", gpu_report(4, "fraud-v2"))
    run(sup, clock, 2)
    assert sup.view()["stage"] == "rolled_back"  # four times stable's memory

    sup.configure(section(rollout_id="r1", promotion_gates=gates), {**VERSIONS, "candidate": "fraud-v3"})
    sup.report_replica("candidate", "c-1", gpu_report(4, "fraud-v2"))  # the old replica, not yet stopped
    sup.report_replica("stable", "s-1", gpu_report(1, "fraud-v1"))
    sup.report_replica("candidate", "c-2", gpu_report(1, "fraud-v3"))
    run(sup, clock, 3)
    assert sup.evidence().gpu_memory_bytes == {"stable": 2**30, "candidate": 2**30}
    assert sup.view()["stage"] != "rolled_back"


def test_webhooks_subscribed_to_a_group_receive_the_controllers_events(
    store_path: Path, clock: Clock
) -> None:
    """Through the supervisor as the controller wires it: `events: [rollback]` hears the rollback."""
    received: dict[str, list[str]] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        received.setdefault(request.url.path, []).append(json.loads(request.content)["kind"])
        return httpx.Response(204)

    async def main() -> None:
        transport = httpx.MockTransport(handle)
        sup = RolloutSupervisor(
            "canary",
            RolloutStore(store_path, clock=clock),
            clock,
            lambda hooks: Notifier(hooks, transport=transport) if hooks else None,
        )
        hooks = [
            {"url": f"http://hooks.test/{g}", "events": [g]} for g in ("rollback", "promotion", "decision")
        ]
        sup.configure(section(webhooks=hooks), VERSIONS)
        rng = random.Random(0)
        for _ in range(60):
            clock.now += 1
            table = sup.table()
            w = traffic(rng, table["candidate_weight"], table["shadow_percent"], 200, bad_tier="gold")
            sup.ingest("ingress-1", w.to_dict(), 0)
            sup.step()
            await asyncio.sleep(0)  # the store's continuations run on the loop
        assert sup.view()["stage"] == "rolled_back"
        assert sup.notifier is not None
        await sup.notifier.drain(5)
        await sup.notifier.aclose()

    asyncio.run(main())
    assert received["/rollback"] == ["rolled_back"]
    assert received["/decision"][-1] == "rolled_back" and "stage" in received["/decision"]
    assert "stage" in received["/promotion"] and "rolled_back" not in received["/promotion"]


CHECKED_STAGES = [
    {"shadow_percent": 100, "min_duration_s": 5, "min_requests": 100},
    {"weight": 25, "min_duration_s": 10, "min_requests": 100, "check": {"url": "https://ci.test/confirm"}},
    {"weight": 100, "min_duration_s": 5, "min_requests": 100},
]


def run_asking(sup: RolloutSupervisor, clock: Clock, seconds: int, answer: CheckOutcome | None) -> list[Any]:
    """`run`, with the controller's loop around the external check: ask when wanted, answer at once."""
    asked, rng = [], random.Random(0)
    for _ in range(seconds):
        clock.now += 1
        table = sup.table()
        sup.ingest(
            "ingress-1", traffic(rng, table["candidate_weight"], table["shadow_percent"], 200).to_dict(), 0
        )
        sup.step()
        wanted = sup.wants_check()
        if wanted is not None:
            asked.append(wanted[0])
            if answer is not None:
                sup.checked(wanted[0], answer, "the check's answer")
    return asked


def test_an_external_checks_answer_counts_only_for_the_visit_it_was_asked_about(
    store_path: Path, clock: Clock
) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(rollout_id="r0", stages=CHECKED_STAGES), VERSIONS)
    [late, *_] = run_asking(sup, clock, 40, answer=None)  # asked, no answer yet
    assert (sup.view()["stage_index"], late.stage_index) == (1, 1)
    # another rollout is deployed while r0's answer is on its way; r0's PASS must not promote r1
    sup.configure(section(rollout_id="r1", stages=CHECKED_STAGES), {**VERSIONS, "candidate": "fraud-v3"})
    sup.checked(late, CheckOutcome.PASS, "r0's late answer")
    assert sup.check is None
    asked = run_asking(sup, clock, 60, answer=CheckOutcome.FAIL)
    assert asked and all(a.key == sup.view()["rollout_key"] for a in asked)
    assert (sup.view()["stage"], sup.view()["stage_index"]) == ("canary", 1)

    # a PASS, then a pause: resuming enters the stage again, and the check is asked again before promoting
    sup.act("pause", "alice", "hold while we look")
    sup.checked(asked[-1], CheckOutcome.PASS, "green now")  # answer to the earlier visit, arriving late
    sup.act("resume", "alice", "looked")
    again = run_asking(sup, clock, 15, answer=None)  # the stage's minimum duration again, then asked
    assert sup.view()["stage_index"] == 1 and again and again[0] != asked[-1]
    assert run_asking(sup, clock, 15, answer=CheckOutcome.PASS)
    assert sup.view()["stage_index"] == 2


def test_a_pass_older_than_the_checks_time_out_is_asked_again(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(stages=CHECKED_STAGES, promotion_gates={"error_rate": {"maximum": 0.01}}), VERSIONS)
    run_asking(sup, clock, 30, answer=None)
    assert sup.view()["stage_index"] == 1
    ask = sup._asking()
    assert ask is not None
    clock.now -= 60  # the answer was given a minute ago (the stage's evidence was not yet enough)
    sup.checked(ask, CheckOutcome.PASS, "an old answer")
    clock.now += 60
    assert sup.wants_check() is not None  # stale: asked again rather than promoting on it


def test_a_rollout_deployed_again_after_another_resumes_where_it_was(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 120)
    assert sup.view()["stage"] == "promoted"
    sup.configure(section(rollout_id="r2"), VERSIONS)
    assert sup.view()["stage"] == "pending"
    sup.configure(section(), VERSIONS)  # r1 again: the same identity resumes, it does not start over
    view = sup.view()
    assert view["stage"] == "promoted" and view["events"][-1]["kind"] == "redeployed"


class FailingStore(RolloutStore):
    """The real store, whose writes fail while ``broken`` (a read-only file or a full disk, at our seam)."""

    broken = False

    def _fail(self) -> None:
        if self.broken:
            raise sqlite3.OperationalError("attempt to write a readonly database")

    def save_state_and_event(self, *args: Any, **kwargs: Any) -> int:
        self._fail()
        return super().save_state_and_event(*args, **kwargs)

    def append_window(self, *args: Any, **kwargs: Any) -> None:
        self._fail()
        super().append_window(*args, **kwargs)

    def save_rollout(self, *args: Any, **kwargs: Any) -> None:
        self._fail()
        super().save_rollout(*args, **kwargs)

    def log_requests(self, *args: Any, **kwargs: Any) -> None:
        self._fail()
        super().log_requests(*args, **kwargs)

    def add_feedback(self, *args: Any, **kwargs: Any) -> float | None:
        self._fail()
        return super().add_feedback(*args, **kwargs)


def test_an_unwritable_store_freezes_promotion_reports_error_and_recovers(
    store_path: Path, clock: Clock
) -> None:
    store = FailingStore(store_path, clock=clock)
    sup = RolloutSupervisor("canary", store, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 3)
    stage = sup.view()["stage_index"]
    store.broken = True
    run(sup, clock, 90)  # long enough to have promoted every stage
    view = sup.view()
    assert view["stage_index"] == stage and view["stage"] == "shadow"  # never promoted blind
    assert view["store"]["ok"] is False and "readonly" in view["store"]["error"]
    assert any(g["gate"] == "store" and g["verdict"] == "ERROR" for g in view["gates"])
    with pytest.raises(ActionError, match="store"):
        sup.act("promote", "alice", "ship it")
    # a rollback still acts at once (routing is safe), and is written once the store is back
    sup.act("rollback", "alice", "store is down, play safe")
    assert sup.table()["candidate_weight"] == 0 and sup.view()["stage"] == "rolled_back"
    assert sup.view()["store"]["unstored"] >= 1
    store.broken = False
    clock.now += 10
    sup.persist()
    view = sup.view()
    assert view["store"] == {"ok": True, "error": None, "since": None, "unstored": 0}
    stored = store.events(view["rollout_key"])
    assert stored[-1]["kind"] == "rolled_back" and stored[-1]["actor"] == "alice"
    again = supervisor(store_path, clock)  # what a restart reads: nothing was lost
    assert again.view()["stage"] == "rolled_back"
    assert again.window.arm("stable").requests == sup.window.arm("stable").requests


def test_a_rollback_on_evidence_still_acts_while_the_store_fails(store_path: Path, clock: Clock) -> None:
    store = FailingStore(store_path, clock=clock)
    sup = RolloutSupervisor("canary", store, clock)
    sup.configure(section(), VERSIONS)
    store.broken = True
    run(sup, clock, 60, bad_tier="gold")
    assert sup.view()["stage"] == "rolled_back" and sup.table()["candidate_weight"] == 0


def test_a_store_password_is_never_written_to_the_store_and_the_rollout_still_resumes(
    store_path: Path, clock: Clock
) -> None:
    url = "postgresql://canary:s3cret-pw@db.internal:5432/canary"
    deployed = section(store={"url": url})
    sup = supervisor(store_path, clock)
    sup.configure(deployed, VERSIONS)
    run(sup, clock, 12)
    sup.persist()
    written = [f for f in store_path.parent.iterdir() if f.name.startswith(store_path.name)]  # WAL included
    assert written and not any(b"s3cret-pw" in f.read_bytes() for f in written)
    again = supervisor(store_path, clock)
    stage = again.view()["stage"]
    assert stage in ("shadow", "canary")
    # the same config deployed again is recognised as the same rollout, password and all
    again.configure(deployed, VERSIONS)
    assert again.view()["stage"] == stage
    assert [e["kind"] for e in again.view()["events"]].count("started") == 1


@pytest.mark.parametrize("mode", ["auto", "manual"])
@pytest.mark.parametrize("broken", [False, True], ids=["store up", "store down meanwhile"])
def test_a_rollout_left_for_another_keeps_its_last_seconds_of_telemetry(
    store_path: Path, clock: Clock, broken: bool, mode: str
) -> None:
    """What the Ingress sent since the last write belongs to the outgoing rollout, not to the next one; a
    rollout deployed while the store cannot be written is taken, and written with the rest once it can;
    the first identity deployed again shows every second it had, as a restarted controller would."""
    store = FailingStore(store_path, clock=clock)
    sup = RolloutSupervisor("canary", store, clock)
    sup.configure(section(mode=mode, candidate_weight=5), VERSIONS)
    run(sup, clock, 7)  # one write at 5 s; the last 2 s are not written yet
    served = sup.window.arm("stable").requests
    r1 = sup.view()["rollout_key"]
    store.broken = broken
    sup.configure(section(mode=mode, candidate_weight=5, rollout_id="r2"), VERSIONS)
    r2 = sup.view()["rollout_key"]
    assert r2 != r1 and sup.window.arm("stable").requests == 0
    run(sup, clock, 3)
    store.broken = False
    clock.now += 10
    sup.persist()
    assert sup.view()["store"] == {"ok": True, "error": None, "since": None, "unstored": 0}
    assert store.merged_window(r1).arm("stable").requests == served
    assert store.merged_window(r2).arm("stable").requests == sup.window.arm("stable").requests > 0
    assert store.events(r2)[0]["kind"] == "started"
    clock.now += 1
    sup.configure(section(mode=mode, candidate_weight=5), VERSIONS)  # r1 again
    assert sup.view()["rollout_key"] == r1 and sup.window.arm("stable").requests == served
    clock.now += 1
    sup.persist()
    restarted = supervisor(store_path, clock)  # what a restarted controller shows
    assert restarted.view()["rollout_key"] == r1 and restarted.window.arm("stable").requests == served


def test_deploying_a_new_candidate_version_is_no_replica_restart(store_path: Path, clock: Clock) -> None:
    """A new version in the application's args restarts every model replica; Serve stops the old ones on
    purpose, and they say so, so the new rollout's `replica_restarts` gate does not fail on them."""
    sup = supervisor(store_path, clock)
    gates = {"replica_restarts": {"maximum": 0}}

    def serve(seconds: int, replicas: str) -> None:
        for _ in range(seconds):
            for arm in ("stable", "candidate"):
                sup.report_replica(arm, f"{replicas}-{arm}", {"oom_events": 0})
            run(sup, clock, 1)

    sup.configure(section(promotion_gates=gates), VERSIONS)
    serve(5, "old")
    sup.configure(section(promotion_gates=gates), {**VERSIONS, "candidate": "fraud-v3"})
    serve(2, "new")  # Serve starts the new replicas, then stops the old ones
    for arm in ("stable", "candidate"):
        sup.report_replica(arm, f"old-{arm}", {"oom_events": 0, "stopping": "shutdown"})
    serve(20, "new")
    assert sup.evidence().restarts == {"stable": 0, "candidate": 0}
    assert sup.view()["stage"] != "rolled_back"
    assert "FAIL" not in [g["verdict"] for g in sup.view()["gates"] if g["gate"] == "replica_restarts"]


def test_counts_served_under_a_rollout_already_left_are_filed_under_it(
    store_path: Path, clock: Clock
) -> None:
    """While a redeploy rolls out, an Ingress replica still on the previous config serves the previous
    candidate; its counts belong to the previous rollout, not to the new candidate's evidence."""
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 3)
    r1 = sup.view()["rollout_key"]
    sup.configure(section(), {**VERSIONS, "candidate": "fraud-v3"})
    r2 = sup.view()["rollout_key"]
    late = Window(start=clock.now - 1, end=clock.now)
    for _ in range(50):
        late.arm("candidate").record("error", 0.05)  # the previous candidate failing
    sup.ingest("old-ingress", late.to_dict(), 0, [("req-late", clock.now, "candidate", [])], rollout=r1)
    assert sup.window.arm("candidate").requests == 0
    fresh = Window(start=clock.now, end=clock.now + 1)
    fresh.arm("candidate").record("ok", 0.05)
    sup.ingest("new-ingress", fresh.to_dict(), 0, rollout=r2)
    sup.ingest("unknown", fresh.to_dict(), 0, rollout="canary/never-seen/a->b")  # not left: counted here
    sup.ingest("untagged", fresh.to_dict(), 0)
    assert sup.window.arm("candidate").requests == 3 and sup.window.arm("candidate").errors == 0
    clock.now += 10
    sup.persist()
    assert store_path.exists() and sup.store.merged_window(r1).arm("candidate").errors == 50
    assert sup.store.merged_window(r2).arm("candidate").requests == 3
    assert sup.store.find_request("req-late").key == r1


def test_a_restarted_controller_still_files_counts_of_the_rollout_it_had_left(
    store_path: Path, clock: Clock
) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 3)
    r1 = sup.view()["rollout_key"]
    sup.configure(section(), {**VERSIONS, "candidate": "fraud-v3"})
    clock.now += 10
    sup.persist()
    again = supervisor(store_path, clock)  # restarted mid-redeploy: a replica still serves r1's candidate
    assert again.view()["rollout_key"] != r1
    late = Window(start=clock.now - 1, end=clock.now)
    for _ in range(50):
        late.arm("candidate").record("error", 0.05)
    again.ingest("old-ingress", late.to_dict(), 0, rollout=r1)
    assert again.window.arm("candidate").requests == 0
    clock.now += 10
    again.persist()
    assert again.store.merged_window(r1).arm("candidate").errors == 50


def test_a_store_that_hangs_holds_up_neither_the_judgement_nor_the_rollback(
    store_path: Path, clock: Clock
) -> None:
    """The controller's arrangement: the store's jobs on a thread of their own. Another process holds the
    SQLite file's write lock (a backup, a stuck tool): every write waits out the busy timeout and fails,
    again and again. The rollout must still be judged and rolled back at once, promotion frozen meanwhile,
    and everything written, in order, once the lock is let go."""
    worker = StoreWorker(clock, background=True)
    sup = RolloutSupervisor("canary", RolloutStore(store_path, clock=clock), clock, worker=worker)
    try:
        sup.configure(section(), VERSIONS)
        run(sup, clock, 3)
        lock = sqlite3.connect(store_path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            run(sup, clock, 60, bad_tier="gold")  # returns: nothing here waited for the store
            view = sup.view()
            assert view["stage"] == "rolled_back" and sup.table()["candidate_weight"] == 0
            assert view["store"]["ok"] is False and view["store"]["unstored"] > 0
            assert any(g["gate"] == "store" and g["verdict"] == "ERROR" for g in view["gates"])
            assert "seq" not in view["events"][-1]  # shown at once, not yet stored
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        clock.now += 60  # past any back-off
        deadline = time.monotonic() + 60
        while sup.view()["store"] != {"ok": True, "error": None, "since": None, "unstored": 0}:
            assert time.monotonic() < deadline, sup.view()["store"]
            time.sleep(0.05)
        assert sup.view()["events"][-1]["seq"] > 0
    finally:
        worker.close()
    again = supervisor(store_path, clock)  # what a restarted controller reads: nothing was lost
    assert again.view()["stage"] == "rolled_back"
    assert [e["kind"] for e in again.view()["events"]] == [e["kind"] for e in sup.view()["events"]]
    assert again.window.arm("shadow").errors == sup.window.arm("shadow").errors > 0


def test_a_long_rollout_keeps_its_latest_events_in_memory_and_counts_all(
    store_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rollout.supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "EVENTS_KEPT", 5)
    monkeypatch.setattr(supervisor_module, "EVENTS_SHOWN", 3)
    sup = supervisor(store_path, clock)
    for weight in range(1, 31):  # an operator editing a manual rollout's weight again and again
        clock.now += 1
        sup.configure(section(mode="manual", candidate_weight=weight), VERSIONS)
    view = sup.view()
    assert view["events_total"] == len(sup.store.events(view["rollout_key"])) == 30  # started + 29 edits
    assert [e["weight"] for e in view["events"]] == [28, 29, 30]
    assert len(sup._events) < 2 * 5
    again = supervisor(store_path, clock)
    assert again.view()["events_total"] == view["events_total"]
    assert [e["seq"] for e in again.view()["events"]] == [e["seq"] for e in view["events"]]


def test_a_matched_baseline_samples_stable_at_the_candidates_pace_and_survives_a_restart(
    store_path: Path, clock: Clock
) -> None:
    sup = RolloutSupervisor(
        "canary", RolloutStore(store_path, clock=clock), clock, rng=np.random.default_rng(4)
    )
    gates = {"error_rate": {"maximum": 0.01}, "latency_p95_ms": {"maximum_regression_percent": 50}}
    sup.configure(section(baseline="matched", promotion_gates=gates), VERSIONS)
    assert sup.view()["baseline"] == {
        "mode": "matched",
        "ratio": 3.0,
        "stable_requests": 0,
        "candidate_requests": 0,
    }
    for second in range(20):  # the shadow stage, then 4 s at 25 %
        run(sup, clock, 1, seed=second)
        if sup.table()["candidate_weight"] == 25:
            run(sup, clock, 4, seed=100 + second)
            break
    view = sup.view()
    assert view["stage"] == "canary" and view["candidate_weight"] == 25
    stable, candidate = sup.window.arm(MATCHED_STABLE), sup.window.arm(MATCHED_CANDIDATE)
    assert candidate.requests == sup.window.arm("candidate").requests > 0  # 25 %: the candidate whole
    assert stable.requests == pytest.approx(3 * candidate.requests, rel=0.15)
    assert view["baseline"]["stable_requests"] == stable.requests
    assert sup.window.arm(MATCHED_STABLE, ("tier", "gold")).requests > 0
    sup.ingest(
        "ingress-1", Window().to_dict(), 0, requests=[("req-9", clock.now, "candidate", [("tier", "gold")])]
    )
    sup.feedback("req-9", "human_review_score", 0.9)
    assert review_scores(sup, MATCHED_CANDIDATE, ("tier", "gold")) == (1, 0.9)
    sup.persist()
    again = supervisor(store_path, clock)
    assert again.window.arm(MATCHED_STABLE).requests == stable.requests
    latency = [g for g in sup.view()["gates"] if g["gate"] == "latency_p95_ms" and g["segment"] == "all"]
    assert latency and latency[0]["evidence"]["baseline"] == "matched"
    assert latency[0]["evidence"]["stable"]["n"] < sup.window.arm("stable").latency.count


def test_the_default_baseline_keeps_no_matched_sample(store_path: Path, clock: Clock) -> None:
    sup = supervisor(store_path, clock)
    sup.configure(section(), VERSIONS)
    run(sup, clock, 12)
    assert sup.view()["baseline"] == {"mode": "all"}
    assert not any(arm.endswith("@matched") for arm, _ in sup.window.arms)
