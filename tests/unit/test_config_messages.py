"""What a config error says: the key as the user wrote it, the problem, and what that key expects, also
inside list items, optional sections and promotion gates; booleans are never taken for numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from models.faults import FaultConfig, LatencySpec
from rollout.configfile import check_config, load_config
from rollout.notify import CheckSpec, WebhookSpec
from rollout.policy import KNOWN_GATES, StageSpec
from serving.config import IngressConfig, ModelServerConfig, validate_section
from serving.errors import ConfigError, InvalidConfigError
from serving.fields import FieldSpec

ROOT = Path(__file__).resolve().parents[2]
CITATIONS = {"name": "citation_rate", "path": "citations", "kind": "nonempty"}


def auto(gates: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    rollout: dict[str, Any] = {
        "mode": "auto",
        "owner": "ml-platform@example.com",
        "rollback_condition": "p95 +10% or errors above 1%",
        "stages": [{"weight": 5}, {"weight": 100}],
        "promotion_gates": gates if gates is not None else {"error_rate": {"maximum": 0.01}},
    }
    rollout.update(extra)
    return {"rollout": rollout}


def errors_of(model: Any, data: Any) -> list[ConfigError]:
    with pytest.raises(InvalidConfigError) as info:
        validate_section(model, data, source="user_config")
    return info.value.errors


def only_error(model: Any, data: Any) -> ConfigError:
    (error,) = errors_of(model, data)
    return error


# 1. gate names


@pytest.mark.parametrize(
    ("typo", "rule", "meant"),
    [
        ("latency_p95", {"maximum_regression_percent": 10}, "latency_p95_ms"),
        ("gpu_memmory", {"maximum_bytes": 8e9}, "gpu_memory"),
        ("eror_rate", {"maximum": 0.01}, "error_rate"),
    ],
)
def test_a_misspelt_gate_is_an_unknown_gate_with_the_closest_name(typo: str, rule: Any, meant: str) -> None:
    error = only_error(IngressConfig, auto({typo: rule}))
    assert error.key == f"rollout.promotion_gates.{typo}"
    assert "unknown gate" in error.problem and "unknown rule" not in error.problem
    assert f"did you mean {meant!r}" in error.problem
    assert all(name in error.expected for name in (*KNOWN_GATES, "human_review_score"))


def test_the_valid_gate_names_include_the_declared_fields_and_feedback_metrics() -> None:
    config = auto({"citaton_rate": {"minimum_delta": -0.05}}, feedback_metrics=["csat"])
    config["fields"] = [CITATIONS]
    error = only_error(IngressConfig, config)
    assert "did you mean 'citation_rate'" in error.problem
    assert "'citation_rate'" in error.expected and "'csat'" in error.expected
    assert "'human_review_score'" not in error.expected


def test_every_unknown_gate_is_reported() -> None:
    errors = errors_of(IngressConfig, auto({"eror_rate": {"maximum": 0.01}, "latency_p95": {"maximum": 200}}))
    assert [e.key for e in errors] == [
        "rollout.promotion_gates.eror_rate",
        "rollout.promotion_gates.latency_p95",
    ]


def test_a_field_gate_takes_only_the_mean_rules() -> None:
    config = auto({"citation_rate": {"maximum_regression_percent": 10}})
    config["fields"] = [CITATIONS]
    error = only_error(IngressConfig, config)
    assert error.key == "rollout.promotion_gates.citation_rate.maximum_regression_percent"
    assert "unknown rule" in error.problem and "minimum_delta" in error.expected


# 2. where cross-section errors are reported


def test_rule_and_threshold_errors_are_keyed_by_gate_and_rule() -> None:
    rule = only_error(IngressConfig, auto({"error_rate": {"maximun": 0.01}}))
    assert rule.key == "rollout.promotion_gates.error_rate.maximun"
    assert "did you mean 'maximum'" in rule.problem and rule.expected == "one of ['maximum']"
    threshold = only_error(IngressConfig, auto({"error_rate": {"maximum": 5}}))
    assert threshold.key == "rollout.promotion_gates.error_rate.maximum"
    assert "a rate in [0, 1]" in threshold.problem and threshold.got == 5
    two = only_error(IngressConfig, auto({"error_rate": {"maximum": 0.01, "minimum": 0}}))
    assert two.key == "rollout.promotion_gates.error_rate" and "exactly one rule" in two.problem


def test_unknown_judged_segments_are_keyed_under_rollout() -> None:
    error = only_error(IngressConfig, auto(judge_segments=["teir"]))
    assert error.key == "rollout.judge_segments"
    assert "['teir'] are not segment labels" in error.problem and "did you mean 'tier'" in error.problem
    assert "'tier'" in error.expected and "'size'" in error.expected


def test_an_unknown_baseline_names_the_key_and_both_choices() -> None:
    error = only_error(IngressConfig, auto(baseline="time-matched"))
    assert error.key == "rollout.baseline" and "'all' or 'matched'" in error.problem
    assert IngressConfig.model_validate(auto(baseline="matched")).rollout.baseline == "matched"


def test_a_serve_config_names_the_gate_under_the_ingress_user_config() -> None:
    config = load_config(ROOT / "configs" / "demo-rollout.yaml")
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    ingress["user_config"]["rollout"]["promotion_gates"] = {"latency_p95": {"maximum_regression_percent": 10}}
    ingress["user_config"]["rollout"]["judge_segments"] = ["teir"]
    with pytest.raises(InvalidConfigError) as info:
        check_config(config, "demo-rollout.yaml")
    prefix = "applications[0].deployments[Ingress].user_config.rollout."
    keys = [e.key for e in info.value.errors]
    assert keys == [prefix + "promotion_gates.latency_p95", prefix + "judge_segments"]
    assert "(root)" not in str(info.value)


# 3. what a key expects, inside list items, optional sections and unions


def fields_of(model: Any) -> list[str]:
    return sorted(model.model_fields)


@pytest.mark.parametrize(
    ("model", "data", "key", "allowed"),
    [
        (IngressConfig, {"rollout": {"stages": [{"wieght": 5}]}}, "rollout.stages.0.wieght", StageSpec),
        (
            IngressConfig,
            {"rollout": {"webhooks": [{"url": "https://h.example.com", "retry": 3}]}},
            "rollout.webhooks.0.retry",
            WebhookSpec,
        ),
        (
            IngressConfig,
            {"rollout": {"stages": [{"weight": 5, "check": {"url": "https://h.example.com", "timeout": 9}}]}},
            "rollout.stages.0.check.timeout",
            CheckSpec,
        ),
        (
            IngressConfig,
            {"fields": [{"name": "x", "path": "a", "kind": "number", "unit": 1}]},
            "fields.0.unit",
            FieldSpec,
        ),
        (ModelServerConfig, {"faults": {"eror_rate": 0.1}}, "faults.eror_rate", FaultConfig),
        (
            ModelServerConfig,
            {"faults": {"latency_ms": {"distribution": "fixed", "msec": 5}}},
            "faults.latency_ms.msec",
            LatencySpec,
        ),
    ],
)
def test_an_unknown_key_in_a_list_item_or_optional_section_lists_the_allowed_keys(
    model: Any, data: Any, key: str, allowed: Any
) -> None:
    error = only_error(model, data)
    assert error.key == key and error.problem.startswith("unknown key")
    assert error.expected == f"one of {fields_of(allowed)}"


def test_a_misspelt_key_gets_the_closest_allowed_one() -> None:
    error = only_error(IngressConfig, {"rollout": {"stages": [{"wieght": 5}]}})
    assert "did you mean 'weight'" in error.problem


@pytest.mark.parametrize(
    ("model", "data", "key", "description"),
    [
        (
            ModelServerConfig,
            {"faults": {"error_rate": 2}},
            "faults.error_rate",
            FaultConfig.model_fields["error_rate"],
        ),
        (
            IngressConfig,
            {"rollout": {"webhooks": [{"url": "not a url"}]}},
            "rollout.webhooks.0.url",
            WebhookSpec.model_fields["url"],
        ),
        (
            IngressConfig,
            {"rollout": {"stages": [{"weight": 0}]}},
            "rollout.stages.0.weight",
            StageSpec.model_fields["weight"],
        ),
        (
            IngressConfig,
            {
                "rollout": {
                    "stages": [{"weight": 5, "check": {"url": "https://h.example.com", "retries": 99}}]
                }
            },
            "rollout.stages.0.check.retries",
            CheckSpec.model_fields["retries"],
        ),
    ],
)
def test_a_bad_value_below_a_list_or_optional_section_quotes_its_own_description(
    model: Any, data: Any, key: str, description: Any
) -> None:
    error = only_error(model, data)
    assert error.key == key and error.expected == description.description


def test_a_bad_latency_spec_is_one_error_under_latency_ms_without_pydantic_internals() -> None:
    fixed = only_error(ModelServerConfig, {"faults": {"latency_ms": {"distribution": "fixed"}}})
    assert fixed.key == "faults.latency_ms" and "needs ms" in fixed.problem
    slow = only_error(ModelServerConfig, {"faults": {"latency_ms": "slow"}})
    assert (
        slow.key == "faults.latency_ms" and "valid number" in slow.problem and "LatencySpec" in slow.problem
    )
    assert slow.expected == FaultConfig.model_fields["latency_ms"].description


# 4. booleans are not numbers


NOT_A_NUMBER = [
    (IngressConfig, {"rollout": {"candidate_weight": True}}, "rollout.candidate_weight"),
    (IngressConfig, {"rollout": {"timeouts_s": {"stable": True}}}, "rollout.timeouts_s.stable"),
    (IngressConfig, {"rollout": {"max_body_bytes": True}}, "rollout.max_body_bytes"),
    (IngressConfig, auto({"error_rate": {"maximum": True}}), "rollout.promotion_gates.error_rate.maximum"),
    (IngressConfig, auto(stages=[{"weight": 5}, {"weight": True}]), "rollout.stages.1.weight"),
    (IngressConfig, auto(alpha=False), "rollout.alpha"),
    (
        IngressConfig,
        {"rollout": {"store": {"windows_retention_s": True}}},
        "rollout.store.windows_retention_s",
    ),
    (
        IngressConfig,
        {"rollout": {"webhooks": [{"url": "https://h.example.com", "retries": True}]}},
        "rollout.webhooks.0.retries",
    ),
    (IngressConfig, {"segments": {"size": {"edges": [512, True]}}}, "segments.size.edges.1"),
    (IngressConfig, {"contract": {"ranges": {"confidence": [0, True]}}}, "contract.ranges.confidence.1"),
    (ModelServerConfig, {"faults": {"error_rate": True}}, "faults.error_rate"),
    (ModelServerConfig, {"faults": {"latency_ms": True}}, "faults.latency_ms"),
    (
        ModelServerConfig,
        {"faults": {"latency_ms": {"distribution": "fixed", "ms": True}}},
        "faults.latency_ms.ms",
    ),
    (ModelServerConfig, {"batching": {"max_batch_size": True}}, "batching.max_batch_size"),
]


@pytest.mark.parametrize(("model", "data", "key"), NOT_A_NUMBER)
def test_a_boolean_where_a_number_is_expected_is_refused(model: Any, data: Any, key: str) -> None:
    error = only_error(model, data)
    assert error.key == key and "a number is expected" in error.problem and isinstance(error.got, bool)


@pytest.mark.parametrize("word", ["yes", "on", "true", "no", "off"])
def test_yaml_words_read_as_booleans_are_not_a_weight(word: str) -> None:
    data = yaml.safe_load(f"rollout: {{candidate_weight: {word}}}")
    error = only_error(IngressConfig, data)
    assert error.key == "rollout.candidate_weight" and "a number is expected" in error.problem


def test_a_boolean_is_reported_with_the_other_errors_and_not_twice() -> None:
    errors = errors_of(IngressConfig, {"rollout": {"candidate_weight": 120, "stages": [{"weight": False}]}})
    assert [e.key for e in errors] == ["rollout.stages.0.weight", "rollout.candidate_weight"]


def test_numbers_ints_for_floats_and_real_booleans_still_load() -> None:
    config = validate_section(
        IngressConfig,
        auto(
            {"error_rate": {"maximum": 0}, "latency_p95_ms": {"maximum": 250}},
            candidate_weight=5,
            fallback=False,
            stages=[{"weight": 5, "approval": True}, {"weight": 100}],
        ),
        source="x",
    )
    assert config.rollout.candidate_weight == 5 and config.rollout.fallback is False
    assert config.rollout.stages[0].approval is True
    server = validate_section(
        ModelServerConfig, {"faults": {"latency_ms": 50, "crash": True, "schema_break": True}}, source="x"
    )
    assert server.faults is not None and server.faults.latency_ms == 50 and server.faults.crash is True


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(name: str) -> None:
    check_config(load_config(ROOT / "configs" / name), name)
