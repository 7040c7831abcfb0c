"""The rollout state machine: pending → shadow → canary at each weight → promoted, or rolled back from
anywhere; paused, awaiting approval and awaiting review in between. Pure: time, judgements and external-check
outcomes are passed in, and every change comes back as an event dict for the store and the webhooks.

The policy it runs (`rollout.policy`) and the judge that feeds it (`rollout.judge`) live apart, so each can be
tested alone: this module only decides which transition the evidence and the operator allow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from rollout.judge import Judgement
from rollout.notify import CheckOutcome
from rollout.policy import RolloutPolicy, StageSpec


class Phase(StrEnum):
    """What ``GET /rollout``'s ``stage`` says."""

    PENDING = "pending"
    SHADOW = "shadow"
    CANARY = "canary"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    AWAITING_REVIEW = "awaiting_review"
    CLOSED = "closed"
    MANUAL = "manual"


ACTIVE = frozenset({Phase.SHADOW, Phase.CANARY})
# the candidate may take traffic, so a FAIL still rolls back; only ACTIVE phases promote. A pause (an
# operator's, or weights edited in the config) holds the rollout where it is; it does not stop guarding it.
JUDGED = ACTIVE | {Phase.AWAITING_APPROVAL, Phase.PAUSED}
FINISHED = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.AWAITING_REVIEW, Phase.CLOSED})


class Counts(NamedTuple):
    """Requests the candidate has answered in the rollout so far: live ones and mirrored (shadow) ones."""

    live: int = 0
    shadow: int = 0

    def of(self, stage: StageSpec | None) -> int:
        return self.shadow if stage is not None and stage.is_shadow else self.live


class ActionError(Exception):
    """An operator action the current state does not allow; the message says what would."""


@dataclass
class RolloutState:
    """Everything needed to resume a rollout after a controller restart (stored as a dict)."""

    key: str
    mode: str
    phase: Phase
    started_at: float
    stage_index: int | None = None
    stage_started_at: float = 0.0
    stage_base_requests: int = 0  # candidate requests counted when the stage began
    candidate_weight: float = 0.0
    shadow_percent: float = 0.0
    paused_from: Phase | None = None
    outcome: str | None = None  # "promoted" | "rolled_back" once the rollout has ended
    config_weights: list[float | None] = field(default_factory=lambda: [None, None])
    table_version: int = 0
    # OOM events and replica restarts per arm since the rollout started ({"oom_events": {arm: n}, ...}), kept
    # with the state so a restarted controller goes on counting; and each model replica's own OOM count
    # already included, so a restarted controller does not count a replica's earlier OOMs again
    counted: dict[str, dict[str, int]] = field(default_factory=dict)
    replica_ooms: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["paused_from"] = self.paused_from.value if self.paused_from else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        values = dict(data)
        values["phase"] = Phase(values["phase"])
        values["paused_from"] = Phase(values["paused_from"]) if values.get("paused_from") else None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def _traffic(weight: float, shadow: float) -> tuple[int, float]:
    """Orders routings by the candidate's exposure: any live weight is more than any shadow percent."""
    return (1, weight) if weight > 0 else (0, shadow)


def _weights(stage: StageSpec | None) -> tuple[float, float]:
    """(candidate weight, shadow percent) that ``stage`` routes; none before the first stage."""
    if stage is None:
        return 0.0, 0.0
    if stage.is_shadow:
        return 0.0, stage.shadow_percent or 0.0
    return stage.weight or 0.0, 0.0


def _event(
    state: RolloutState,
    kind: str,
    now: float,
    source: Phase,
    actor: str,
    reason: str,
    stage: StageSpec | None,
    evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "ts": now,
        "kind": kind,
        "from": source.value,
        "to": state.phase.value,
        "stage": stage.name if stage else None,
        "stage_index": state.stage_index,
        "weight": state.candidate_weight,
        "shadow_percent": state.shadow_percent,
        "actor": actor,
        "reason": reason,
        "evidence": evidence or {},
    }


class RolloutMachine:
    """Runs one rollout's policy over its state. Every method returns the events it caused (maybe none).

    Args:
        policy: the rollout policy in force.
        state: the state to run (fresh from `RolloutMachine.start` or loaded from the store).
    """

    def __init__(self, policy: RolloutPolicy, state: RolloutState) -> None:
        self.policy = policy
        self.state = state

    @classmethod
    def start(
        cls, policy: RolloutPolicy, key: str, mode: str, now: float, weights: tuple[float, float]
    ) -> tuple[RolloutMachine, dict[str, Any]]:
        """A new rollout: pending in auto mode (the first tick enters stage 0), manual otherwise."""
        phase = Phase.PENDING if mode == "auto" else Phase.MANUAL
        state = RolloutState(key=key, mode=mode, phase=phase, started_at=now, stage_started_at=now)
        if mode != "auto":
            state.candidate_weight, state.shadow_percent = weights
        machine = cls(policy, state)
        return machine, _event(state, "started", now, phase, "controller", f"rollout {key} deployed", None)

    # --- queries -------------------------------------------------------------------------------------------

    @property
    def stage(self) -> StageSpec | None:
        i = self.state.stage_index
        return self.policy.stages[i] if i is not None and 0 <= i < len(self.policy.stages) else None

    def stage_requests(self, counts: Counts) -> int:
        """Candidate requests in this stage (mirrored ones at a shadow stage)."""
        return max(0, counts.of(self.stage) - self.state.stage_base_requests)

    def minimums_met(self, now: float, counts: Counts) -> bool:
        stage = self.stage
        if stage is None:
            return False
        return (
            now - self.state.stage_started_at >= stage.min_duration_s
            and self.stage_requests(counts) >= stage.min_requests
        )

    def wants_check(self, now: float, judgement: Judgement | None, counts: Counts) -> bool:
        """True when only the stage's external check stands between the evidence and a promotion."""
        stage = self.stage
        return (
            self.state.phase in ACTIVE
            and stage is not None
            and stage.check is not None
            and judgement is not None
            and judgement.promotable
            and self.minimums_met(now, counts)
        )

    # --- automation ----------------------------------------------------------------------------------------

    def tick(
        self,
        now: float,
        judgement: Judgement | None,
        counts: Counts,
        check: CheckOutcome | None = None,
    ) -> list[dict[str, Any]]:
        """One automatic step. A FAIL anywhere rolls back at once, with no minimum sample; promotion needs
        every gate PASS, the stage's minimum duration and requests, and a passing external check if any."""
        state = self.state
        if state.mode != "auto":
            return []
        if state.phase is Phase.PENDING:
            return self._advance_to(0, now, counts, "controller", "rollout started")
        if state.phase not in JUDGED or judgement is None:
            return []
        if judgement.rollback:
            failures = judgement.failures()
            where = sorted({f"{r.gate}@{r.segment}" for r in failures})
            return self._roll_back(
                now, "controller", "gate FAIL: " + ", ".join(where[:8]), _evidence(judgement, failures=True)
            )
        if state.phase not in ACTIVE:
            return []
        if not (judgement.promotable and self.minimums_met(now, counts)):
            return []
        stage = self.stage
        assert stage is not None  # ACTIVE phases always have a stage
        if stage.check is not None and check is not CheckOutcome.PASS:
            return []
        return self._promote(now, counts, "controller", "every gate PASS", _evidence(judgement))

    def restage(self, policy: RolloutPolicy, now: float, counts: Counts) -> list[dict[str, Any]]:
        """The same rollout deployed again with other stages: it goes on in the new list from the last stage
        that sends the candidate no more traffic than it gets now, entered afresh (its minimums start over),
        so an edit never skips a stage's minimums nor raises the candidate's traffic by itself."""
        old, self.policy = self.policy, policy
        state = self.state
        index = state.stage_index
        if state.mode != "auto" or index is None or state.phase in FINISHED or old.stages == policy.stages:
            return []
        routed = _traffic(state.candidate_weight, state.shadow_percent)
        fitting = [i for i, s in enumerate(policy.stages) if _traffic(*_weights(s)) <= routed]
        target = fitting[-1] if fitting else 0
        same = index < len(policy.stages) and _weights(old.stages[index]) == _weights(policy.stages[index])
        if state.phase in ACTIVE and target == index and same:
            return []  # the stage it is in is unchanged (only its minimums, or later stages, were edited)
        reason = f"stages edited in the deployed config; goes on from {policy.stages[target].name}"
        if state.phase is Phase.PAUSED:
            state.stage_index = target  # `resume` enters it
            state.paused_from = Phase.SHADOW if policy.stages[target].is_shadow else Phase.CANARY
            return [_event(state, "restaged", now, state.phase, "config", reason, policy.stages[target])]
        return self._enter(target, now, counts, "config", reason, kind="restaged")

    def override(self, now: float, weights: tuple[float | None, float | None]) -> list[dict[str, Any]]:
        """A config deployed with changed weights in auto mode: the operator takes over, automation pauses."""
        state = self.state
        previous, state.config_weights = state.config_weights, list(weights)
        if state.mode != "auto" or list(weights) == previous or weights == (None, None):
            return []
        if state.phase in FINISHED:
            return []
        source = state.phase
        if state.phase is not Phase.PAUSED:
            state.paused_from = state.phase
        state.phase = Phase.PAUSED
        weight, shadow = weights
        state.candidate_weight = weight if weight is not None else state.candidate_weight
        state.shadow_percent = shadow if shadow is not None else state.shadow_percent
        return [
            _event(
                state, "override", now, source, "config", "weights edited in the deployed config", self.stage
            )
        ]

    def manual_weights(self, now: float, weights: tuple[float, float], actor: str) -> list[dict[str, Any]]:
        """Manual mode: the deployed config's weights route."""
        state = self.state
        if (state.candidate_weight, state.shadow_percent) == weights:
            return []
        source = state.phase
        state.candidate_weight, state.shadow_percent = weights
        return [_event(state, "weights", now, source, actor, "config deployed", None)]

    # --- operators -----------------------------------------------------------------------------------------

    def act(
        self, action: str, now: float, actor: str, reason: str, counts: Counts, weight: float | None = None
    ) -> list[dict[str, Any]]:
        """An operator action: pause, resume, promote, rollback, set_weight or acknowledge."""
        state = self.state
        if not reason.strip():
            raise ActionError("a reason is required: say why, it goes into the audit trail")
        if action == "rollback":
            if state.phase in FINISHED:
                raise ActionError(f"the rollout is already {state.phase.value}")
            return self._roll_back(now, actor, reason, {})
        if action == "acknowledge":
            if state.phase not in FINISHED or state.phase is Phase.CLOSED:
                raise ActionError(
                    f"nothing to acknowledge while {state.phase.value}; the rollout has not ended"
                )
            ended: Phase = state.phase
            state.phase = Phase.CLOSED
            return [_event(state, "closed", now, ended, actor, reason, self.stage)]
        if action == "set_weight":
            if weight is None or not 0 <= weight <= 100:
                raise ActionError(f"weight must be a percent in [0, 100], got {weight!r}")
            if state.phase in FINISHED:
                raise ActionError(f"the rollout is {state.phase.value}; deploy a new rollout to route again")
            source: Phase = state.phase
            if state.mode == "auto":
                if state.phase is not Phase.PAUSED:
                    state.paused_from = state.phase
                state.phase = Phase.PAUSED
            state.candidate_weight, state.shadow_percent = weight, 0.0
            return [_event(state, "weight_set", now, source, actor, reason, self.stage)]
        if state.mode != "auto":
            raise ActionError(f"{action} needs mode auto; in manual mode edit the weights or use set-weight")
        if action == "pause":
            if state.phase not in ACTIVE | {Phase.AWAITING_APPROVAL, Phase.PENDING}:
                raise ActionError(f"cannot pause while {state.phase.value}")
            paused_from: Phase = state.phase
            state.paused_from, state.phase = paused_from, Phase.PAUSED
            return [_event(state, "paused", now, paused_from, actor, reason, self.stage)]
        if action == "resume":
            if state.phase is not Phase.PAUSED:
                raise ActionError(f"only a paused rollout resumes; it is {state.phase.value}")
            index = state.stage_index or 0
            if state.paused_from is Phase.AWAITING_APPROVAL:
                # back to waiting for approval on the weights of the stage before it (a set-weight in between
                # is undone, as a resume into a stage undoes it)
                state.phase, state.paused_from = Phase.AWAITING_APPROVAL, None
                before = self.policy.stages[index - 1] if index > 0 else None
                state.candidate_weight, state.shadow_percent = _weights(before)
                return [_event(state, "resumed", now, Phase.PAUSED, actor, reason, self.stage)]
            return self._enter(index, now, counts, actor, reason, kind="resumed")
        if action == "promote":
            if state.phase is Phase.AWAITING_APPROVAL:
                assert state.stage_index is not None
                return self._enter(state.stage_index, now, counts, actor, reason, kind="approved")
            if state.phase not in ACTIVE | {Phase.PAUSED, Phase.PENDING}:
                raise ActionError(f"cannot promote while {state.phase.value}")
            if state.phase is Phase.PENDING:
                return self._advance_to(0, now, counts, actor, reason)
            return self._promote(now, counts, actor, reason, {})
        raise ActionError(
            f"unknown action {action!r}; expected pause, resume, promote, rollback, set_weight or acknowledge"
        )

    # --- transitions ---------------------------------------------------------------------------------------

    def _promote(
        self, now: float, counts: Counts, actor: str, reason: str, evidence: dict[str, Any]
    ) -> list[dict[str, Any]]:
        index = (self.state.stage_index or 0) + 1
        if index >= len(self.policy.stages):
            state, source = self.state, self.state.phase
            state.phase, state.outcome = Phase.PROMOTED, "promoted"
            state.candidate_weight, state.shadow_percent = 100.0, 0.0
            events = [_event(state, "promoted", now, source, actor, reason, self.stage, evidence)]
            return events + self._await_review(now)
        return self._advance_to(index, now, counts, actor, reason, evidence)

    def _advance_to(
        self,
        index: int,
        now: float,
        counts: Counts,
        actor: str,
        reason: str,
        evidence: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        stage = self.policy.stages[index]
        if stage.approval:
            state, source = self.state, self.state.phase
            state.phase, state.stage_index = Phase.AWAITING_APPROVAL, index
            return [
                _event(
                    state,
                    "awaiting_approval",
                    now,
                    source,
                    actor,
                    f"{reason}; {stage.name} needs approval",
                    stage,
                    evidence,
                )
            ]
        return self._enter(index, now, counts, actor, reason, evidence=evidence)

    def _enter(
        self,
        index: int,
        now: float,
        counts: Counts,
        actor: str,
        reason: str,
        kind: str = "stage",
        evidence: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        state, stage, source = self.state, self.policy.stages[index], self.state.phase
        state.stage_index, state.stage_started_at = index, now
        state.stage_base_requests = counts.of(stage)
        state.paused_from = None
        state.phase = Phase.SHADOW if stage.is_shadow else Phase.CANARY
        state.candidate_weight, state.shadow_percent = _weights(stage)
        return [_event(state, kind, now, source, actor, reason, stage, evidence)]

    def _roll_back(
        self, now: float, actor: str, reason: str, evidence: dict[str, Any]
    ) -> list[dict[str, Any]]:
        state, source = self.state, self.state.phase
        state.phase, state.outcome = Phase.ROLLED_BACK, "rolled_back"
        state.candidate_weight, state.shadow_percent = 0.0, 0.0
        state.paused_from = None
        event = _event(state, "rolled_back", now, source, actor, reason, self.stage, evidence)
        return [event, *self._await_review(now)]

    def _await_review(self, now: float) -> list[dict[str, Any]]:
        if self.policy.impact != "high":
            return []
        state, source = self.state, self.state.phase
        state.phase = Phase.AWAITING_REVIEW
        return [
            _event(
                state,
                "awaiting_review",
                now,
                source,
                "controller",
                "high impact: acknowledge the post-rollout report to close",
                self.stage,
            )
        ]


def _evidence(judgement: Judgement, failures: bool = False) -> dict[str, Any]:
    """What a decision rests on: every global gate result, the failures, the worst segments."""
    chosen = [r for r in judgement.results if r.segment == "all" or (failures and r.verdict.value == "FAIL")]
    return {"gates": [r.to_dict() for r in chosen], "worse": list(judgement.worse)}
