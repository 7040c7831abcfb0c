"""The rollout policy is validated at load, naming the key and what is expected."""

from __future__ import annotations

from typing import Any

import pytest

from serving.config import IngressConfig, validate_section
from serving.errors import InvalidConfigError

SEED_GATES = {
    "latency_p95_ms": {"maximum_regression_percent": 10},
    "error_rate": {"maximum": 0.01},
    "schema_validation_pass_rate": {"minimum": 0.995},
    "human_review_score": {"minimum_delta": -0.02},
    "gpu_oom_events": {"maximum": 0},
}


def auto(**extra: Any) -> dict[str, Any]:
    rollout: dict[str, Any] = {
        "mode": "auto",
        "owner": "ml-platform@example.com",
        "rollback_condition": "p95 +10% or errors above 1%",
        "promotion_gates": SEED_GATES,
    }
    rollout.update(extra)
    return {"rollout": rollout}


def invalid(config: dict[str, Any]) -> str:
    with pytest.raises(InvalidConfigError) as info:
        validate_section(IngressConfig, config, source="Ingress user_config")
    return str(info.value)


def test_the_seed_gates_and_default_stages_load() -> None:
    config = validate_section(IngressConfig, auto(), source="x")
    specs = {s.name: s for s in config.rollout.gate_specs()}
    assert specs["latency_p95_ms"].metric == "latency" and specs["latency_p95_ms"].quantile == 0.95
    assert specs["human_review_score"].metric == "feedback"
    assert [s.name for s in config.rollout.stages] == ["shadow 50%", "1%", "5%", "25%", "50%", "100%"]


def test_major_change_needs_a_shadow_stage() -> None:
    message = invalid(auto(change="major", stages=[{"weight": 5}, {"weight": 100}]))
    assert "major" in message and "shadow" in message


def test_hundred_percent_only_after_a_canary_stage() -> None:
    assert "at least one canary stage" in invalid(auto(stages=[{"shadow_percent": 50}, {"weight": 100}]))


def test_last_stage_must_reach_100_and_weights_increase() -> None:
    assert "last stage must be weight 100" in invalid(auto(stages=[{"weight": 5}, {"weight": 50}]))
    assert "must increase" in invalid(auto(stages=[{"weight": 50}, {"weight": 5}, {"weight": 100}]))


def test_a_stage_is_either_shadow_or_canary() -> None:
    assert "exactly one of" in invalid(auto(stages=[{"weight": 5, "shadow_percent": 10}, {"weight": 100}]))
    assert "exactly one of" in invalid(auto(stages=[{"min_duration_s": 5}, {"weight": 100}]))


def test_owner_and_rollback_condition_are_required_in_auto_mode() -> None:
    message = invalid(auto(owner=None, rollback_condition=None))
    assert "owner" in message and "rollback_condition" in message
    assert "blank" in invalid(auto(owner="  "))


def test_auto_mode_needs_gates() -> None:
    assert "promotion_gates" in invalid(auto(promotion_gates={}))


def test_unknown_gates_rules_and_bad_thresholds_name_the_key() -> None:
    assert "`rollout.promotion_gates.p95_latency`: unknown gate" in invalid(
        auto(promotion_gates={"p95_latency": {"maximum": 1}})
    )
    assert "unknown rule 'minimum'" in invalid(auto(promotion_gates={"error_rate": {"minimum": 0.1}}))
    assert "a rate in [0, 1]" in invalid(auto(promotion_gates={"error_rate": {"maximum": 5}}))
    assert "whole count" in invalid(auto(promotion_gates={"gpu_oom_events": {"maximum": 0.5}}))
    assert "exactly one rule" in invalid(
        auto(promotion_gates={"latency_p95_ms": {"maximum": 100, "maximum_regression_percent": 10}})
    )


def test_field_gates_refer_to_configured_fields() -> None:
    config = auto(promotion_gates={"citation_rate": {"minimum_delta": -0.05}})
    assert "unknown gate" in invalid(config)
    config["fields"] = [{"name": "citation_rate", "path": "citations", "kind": "nonempty"}]
    parsed = validate_section(IngressConfig, config, source="x")
    (spec,) = parsed.rollout.gate_specs(("citation_rate",))
    assert (spec.metric, spec.key, spec.rule) == ("field", "citation_rate", "minimum_delta")


def test_judged_segment_labels_must_exist() -> None:
    assert "judge_segments" in invalid(auto(judge_segments=["planet"]))
    validate_section(IngressConfig, auto(judge_segments=["tier", "size"]), source="x")


def test_manual_mode_needs_no_policy() -> None:
    config = validate_section(IngressConfig, {"rollout": {"candidate_weight": 5}}, source="x")
    assert config.rollout.weight == 5 and config.rollout.shadow == 0
