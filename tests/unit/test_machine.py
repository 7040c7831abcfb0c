"""The rollout state machine with a fake clock: stages, minimums, rollback on FAIL, approvals, operators."""

from __future__ import annotations

import pytest

from rollout.judge import GateResult, Judgement, Verdict
from rollout.machine import ActionError, Counts, Phase, RolloutMachine, RolloutState
from rollout.notify import CheckOutcome
from rollout.policy import RolloutPolicy

STAGES = [
    {"shadow_percent": 100, "min_duration_s": 10, "min_requests": 50},
    {"weight": 5, "min_duration_s": 10, "min_requests": 50},
    {"weight": 50, "min_duration_s": 10, "min_requests": 50},
    {"weight": 100, "min_duration_s": 10, "min_requests": 50},
]


def policy(**extra: object) -> RolloutPolicy:
    values: dict[str, object] = {
        "owner": "ml@example.com",
        "rollback_condition": "p95 +10%",
        "stages": STAGES,
        "promotion_gates": {"error_rate": {"maximum": 0.01}},
    }
    values.update(extra)
    return RolloutPolicy.model_validate(values)


def judged(*verdicts: tuple[str, Verdict]) -> Judgement:
    results = tuple(GateResult("error_rate", segment, verdict, {}) for segment, verdict in verdicts)
    return Judgement(results=results, skipped=(), worse=tuple(s for s, v in verdicts if v is Verdict.FAIL))


PASS = judged(("all", Verdict.PASS))
WAIT = judged(("all", Verdict.INCONCLUSIVE))


def started(p: RolloutPolicy | None = None) -> RolloutMachine:
    machine, event = RolloutMachine.start(p or policy(), "app/r1/a->b", "auto", 0.0, (0.0, 0.0))
    assert event["kind"] == "started" and machine.state.phase is Phase.PENDING
    events = machine.tick(0.0, None, Counts())
    assert [e["kind"] for e in events] == ["stage"]
    return machine


def test_walks_every_stage_on_evidence_and_minimums_then_promotes() -> None:
    m = started()
    assert (m.state.phase, m.state.candidate_weight, m.state.shadow_percent) == (Phase.SHADOW, 0, 100)
    seen = []
    now, live, shadow = 0.0, 0, 0
    for _ in range(20):
        now += 5
        live += 30 if m.state.candidate_weight else 0
        shadow += 30 if m.state.shadow_percent else 0
        for event in m.tick(now, PASS, Counts(live, shadow)):
            seen.append((event["kind"], event["weight"], event["shadow_percent"]))
    assert seen == [("stage", 5, 0), ("stage", 50, 0), ("stage", 100, 0), ("promoted", 100, 0)]
    assert m.state.phase is Phase.PROMOTED and m.state.outcome == "promoted"


def test_no_promotion_before_the_stage_minimums_or_without_pass() -> None:
    m = started()
    assert m.tick(9.9, PASS, Counts(0, 1000)) == []  # too early
    assert m.tick(11, PASS, Counts(0, 49)) == []  # too few mirrored requests
    assert m.tick(11, WAIT, Counts(0, 1000)) == []  # INCONCLUSIVE waits
    assert m.tick(11, judged(("all", Verdict.NODATA)), Counts(0, 1000)) == []  # NODATA is never a pass
    assert m.tick(11, judged(("all", Verdict.ERROR)), Counts(0, 1000)) == []
    assert [e["kind"] for e in m.tick(11, PASS, Counts(0, 50))] == ["stage"]


def test_stage_requests_count_from_the_stage_start_and_by_stage_kind() -> None:
    m = started()
    m.tick(20, PASS, Counts(live=0, shadow=500))  # shadow → 5 %
    assert m.state.stage_index == 1 and m.stage_requests(Counts(live=0, shadow=900)) == 0
    assert m.tick(40, PASS, Counts(live=49, shadow=900)) == []
    assert m.tick(40, PASS, Counts(live=50, shadow=900))[0]["weight"] == 50


def test_fail_anywhere_rolls_back_at_once_without_minimums() -> None:
    m = started()
    m.tick(20, PASS, Counts(0, 500))
    events = m.tick(20.5, judged(("all", Verdict.PASS), ("tier=gold", Verdict.FAIL)), Counts(1, 500))
    assert [e["kind"] for e in events] == ["rolled_back"]
    assert (m.state.phase, m.state.candidate_weight, m.state.shadow_percent) == (Phase.ROLLED_BACK, 0, 0)
    assert "tier=gold" in events[0]["reason"] and events[0]["evidence"]["worse"] == ["tier=gold"]
    assert m.tick(30, PASS, Counts(100, 500)) == []  # a rolled-back rollout stays rolled back


def test_high_impact_waits_for_an_acknowledged_review() -> None:
    m = started(policy(impact="high"))
    m.tick(1, judged(("all", Verdict.FAIL)), Counts())
    assert m.state.phase is Phase.AWAITING_REVIEW and m.state.outcome == "rolled_back"
    with pytest.raises(ActionError, match="reason"):
        m.act("acknowledge", 2, "alice", " ", Counts())
    events = m.act("acknowledge", 2, "alice", "read the report", Counts())
    assert events[0]["kind"] == "closed" and events[0]["actor"] == "alice" and m.state.phase is Phase.CLOSED


def test_approval_before_a_named_stage() -> None:
    stages = [dict(s) for s in STAGES]
    stages[3]["approval"] = True
    m = started(policy(stages=stages))
    now = 0.0
    for _ in range(6):
        now += 11
        m.tick(now, PASS, Counts(1000 * int(now), 1000 * int(now)))
    assert m.state.phase is Phase.AWAITING_APPROVAL and m.state.candidate_weight == 50
    assert m.tick(now + 100, PASS, Counts(10**7, 10**7)) == []  # evidence alone does not enter it
    assert m.tick(now + 101, judged(("all", Verdict.FAIL)), Counts())[0]["kind"] == "rolled_back"


def test_approval_granted_by_promote() -> None:
    stages = [dict(s) for s in STAGES]
    stages[1]["approval"] = True
    m = started(policy(stages=stages))
    m.tick(20, PASS, Counts(0, 500))
    assert m.state.phase is Phase.AWAITING_APPROVAL and m.state.shadow_percent == 100
    events = m.act("promote", 21, "bob", "looked at the shadow numbers", Counts(0, 500))
    assert events[0]["kind"] == "approved" and m.state.candidate_weight == 5 and m.state.phase is Phase.CANARY


def test_resuming_into_an_awaited_approval_undoes_a_set_weight_in_between() -> None:
    stages = [dict(s) for s in STAGES]
    stages[2]["approval"] = True
    m = started(policy(stages=stages))
    m.tick(20, PASS, Counts(0, 500))
    m.tick(40, PASS, Counts(500, 500))
    assert (m.state.phase, m.state.candidate_weight) == (Phase.AWAITING_APPROVAL, 5)
    m.act("set_weight", 41, "alice", "try 60 for a minute", Counts(), weight=60)
    assert (m.state.phase, m.state.candidate_weight) == (Phase.PAUSED, 60)
    [event] = m.act("resume", 42, "alice", "enough", Counts())
    assert (event["kind"], event["to"], event["weight"]) == ("resumed", "awaiting_approval", 5)
    assert (m.state.phase, m.state.candidate_weight, m.state.shadow_percent) == (
        Phase.AWAITING_APPROVAL,
        5,
        0,
    )


def test_external_check_must_pass_before_promotion() -> None:
    stages = [dict(s) for s in STAGES]
    stages[0]["check"] = {"url": "http://127.0.0.1:9/confirm"}
    m = started(policy(stages=stages))
    assert m.wants_check(20, PASS, Counts(0, 500))
    assert m.tick(20, PASS, Counts(0, 500), check=None) == []
    assert m.tick(20, PASS, Counts(0, 500), check=CheckOutcome.FAIL) == []
    assert m.tick(20, PASS, Counts(0, 500), check=CheckOutcome.ERROR) == []
    assert m.tick(20, PASS, Counts(0, 500), check=CheckOutcome.PASS)[0]["weight"] == 5


def test_operator_pause_resume_set_weight_and_rollback() -> None:
    m = started()
    m.tick(20, PASS, Counts(0, 500))
    m.act("pause", 21, "alice", "investigating a ticket", Counts(10, 500))
    assert m.state.phase is Phase.PAUSED
    assert m.tick(100, PASS, Counts(10**6, 500)) == []  # no promotion while paused
    m.act("set_weight", 101, "alice", "hold at 2%", Counts(), weight=2)
    assert (m.state.phase, m.state.candidate_weight) == (Phase.PAUSED, 2)
    events = m.act("resume", 102, "alice", "ticket closed", Counts(20, 500))
    assert (
        events[0]["kind"] == "resumed" and m.state.candidate_weight == 5 and m.state.stage_started_at == 102
    )
    m.act("rollback", 103, "alice", "customer complaint", Counts())
    assert m.state.phase is Phase.ROLLED_BACK
    with pytest.raises(ActionError, match="already rolled_back"):
        m.act("rollback", 104, "alice", "again", Counts())
    with pytest.raises(ActionError, match="unknown action"):
        m.act("explode", 104, "alice", "why not", Counts())


def test_config_weight_edit_in_auto_mode_is_an_override() -> None:
    m = started()
    m.state.config_weights = [None, None]
    assert m.override(5, (None, None)) == []
    events = m.override(6, (30.0, None))
    assert (
        events[0]["kind"] == "override" and m.state.phase is Phase.PAUSED and m.state.candidate_weight == 30
    )
    assert m.override(7, (30.0, None)) == []  # the same config again changes nothing


def test_state_round_trips_through_a_dict() -> None:
    m = started()
    m.tick(20, PASS, Counts(0, 500))
    m.act("pause", 21, "alice", "why", Counts())
    again = RolloutState.from_dict(m.state.to_dict())
    assert again == m.state


def test_manual_mode_follows_the_config() -> None:
    m, _ = RolloutMachine.start(policy(), "k", "manual", 0, (5.0, 0.0))
    assert m.state.phase is Phase.MANUAL and m.state.candidate_weight == 5
    assert m.tick(100, PASS, Counts(10**6, 0)) == []
    assert m.manual_weights(1, (50.0, 0.0), "config")[0]["weight"] == 50
    with pytest.raises(ActionError, match="manual mode"):
        m.act("pause", 2, "alice", "why", Counts())


def test_a_paused_rollout_is_not_promoted_but_a_fail_still_rolls_it_back() -> None:
    """An operator holding the candidate at a weight ("over the weekend") still has the gates guarding it."""
    m = started()
    m.tick(20, PASS, Counts(0, 500))
    m.act("set_weight", 21, "alice", "hold at 25% over the weekend", Counts(10, 500), weight=25)
    assert m.tick(500, PASS, Counts(10**6, 500)) == []
    [event] = m.tick(501, judged(("all", Verdict.PASS), ("tier=gold", Verdict.FAIL)), Counts(10**6, 500))
    assert (event["kind"], event["from"], event["actor"]) == ("rolled_back", "paused", "controller")
    assert (m.state.phase, m.state.candidate_weight) == (Phase.ROLLED_BACK, 0)


def test_pausing_twice_is_refused() -> None:
    m = started()
    m.act("pause", 1, "alice", "look", Counts())
    with pytest.raises(ActionError, match="cannot pause while paused"):
        m.act("pause", 2, "bob", "look again", Counts())


def test_stages_edited_under_the_same_rollout_go_on_from_no_more_traffic_than_now() -> None:
    """At 50 %, the stages redeployed as [shadow, 10, 100]: it re-enters 10 % with fresh minimums rather
    than treating index 2 (now 100 %) as entered when 50 % was."""
    m = started()
    now = 0.0
    while m.state.candidate_weight != 50:
        now += 11
        m.tick(now, PASS, Counts(1000 * int(now), 1000 * int(now)))
    edited = policy(stages=[STAGES[0], {**STAGES[1], "weight": 10}, STAGES[3]])
    [event] = m.restage(edited, now + 1, Counts(10**6, 10**6))
    assert (event["kind"], event["weight"], event["actor"]) == ("restaged", 10, "config")
    assert (m.state.phase, m.state.stage_index, m.state.stage_started_at) == (Phase.CANARY, 1, now + 1)
    assert m.tick(now + 2, PASS, Counts(10**7, 10**7)) == []  # the 10 % stage's minimum duration again
    # only the minimums edited: it goes on in its stage, timed from when it began
    longer = policy(stages=[STAGES[0], {**STAGES[1], "weight": 10, "min_duration_s": 60}, STAGES[3]])
    assert m.restage(longer, now + 3, Counts()) == [] and m.state.stage_started_at == now + 1
