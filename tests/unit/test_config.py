"""Config validation at load time: messages name the key, the problem and what is expected."""

import pytest

from serving.config import IngressConfig, ModelServerConfig, validate_section
from serving.errors import InvalidConfigError


def errors_of(model, data):
    with pytest.raises(InvalidConfigError) as info:
        validate_section(model, data, source="Ingress user_config")
    return info.value


def test_weight_outside_0_100_names_the_key_the_value_and_the_range():
    exc = errors_of(IngressConfig, {"rollout": {"candidate_weight": 120}})
    assert [e.key for e in exc.errors] == ["rollout.candidate_weight"]
    text = str(exc)
    assert "rollout.candidate_weight" in text and "120" in text and "0–100" in text


def test_negative_weight_and_finer_than_0_01_are_refused():
    assert (
        errors_of(IngressConfig, {"rollout": {"candidate_weight": -1}}).errors[0].key
        == "rollout.candidate_weight"
    )
    exc = errors_of(IngressConfig, {"rollout": {"candidate_weight": 5.001}})
    assert "0.01" in str(exc)


def test_unknown_key_is_named_with_the_allowed_ones():
    exc = errors_of(IngressConfig, {"rollout": {"candidate_wieght": 5}})
    assert exc.errors[0].key == "rollout.candidate_wieght"
    assert "unknown key" in str(exc) and "candidate_weight" in exc.errors[0].expected


def test_every_bad_key_is_reported_at_once():
    exc = errors_of(
        IngressConfig, {"rollout": {"candidate_weight": 101, "timeouts_s": {"stable": 0}}, "x": 1}
    )
    assert {e.key for e in exc.errors} == {"rollout.candidate_weight", "rollout.timeouts_s.stable", "x"}


def test_mode_auto_without_a_policy_names_what_is_missing():
    exc = errors_of(IngressConfig, {"rollout": {"mode": "auto"}})
    assert exc.errors[0].key == "rollout" and "owner and rollback_condition" in str(exc)


def test_valid_sections_and_defaults():
    config = validate_section(IngressConfig, {"rollout": {"candidate_weight": 12.5}}, source="x")
    assert config.rollout.candidate_weight == 12.5
    assert config.rollout.max_body_bytes == 1024 * 1024
    assert config.rollout.fallback is True
    assert validate_section(IngressConfig, None, source="x").rollout.weight == 0


def test_model_server_batching_and_faults_are_checked():
    config = validate_section(
        ModelServerConfig,
        {"batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}, "faults": {"error_rate": 0.5}},
        source="candidate user_config",
    )
    assert config.batching.max_batch_size == 8 and config.faults.error_rate == 0.5
    exc = errors_of(ModelServerConfig, {"batching": {"max_batch_size": 0}, "faults": {"error_rate": 2}})
    assert {e.key for e in exc.errors} == {"batching.max_batch_size", "faults.error_rate"}
