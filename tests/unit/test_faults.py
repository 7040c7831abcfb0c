from __future__ import annotations

import random
import re

import pytest
from pydantic import ValidationError

from models.errors import ModelError
from models.faults import FaultConfig, FaultInjector, InjectedFaultError, LatencySpec

GOLD = {"X-Tenant-Tier": "gold"}
OUTPUT = {"prediction": "fraud", "confidence": 0.9, "version": "fraud-v2"}


def _injector(**config: object) -> FaultInjector:
    return FaultInjector(FaultConfig.model_validate(config), random.Random(1234))


def test_no_config_means_no_fault() -> None:
    injector = FaultInjector(None, random.Random(0))
    assert not injector.active
    assert not injector.applies_to(GOLD)
    assert injector.delay_s(GOLD) == 0.0
    assert not (injector.should_error(GOLD) or injector.should_oom(GOLD) or injector.should_crash(GOLD))
    out = injector.break_output(OUTPUT, GOLD)
    assert out == OUTPUT and out is not OUTPUT


def test_default_config_is_inactive() -> None:
    assert not _injector().active
    assert _injector(error_rate=0.1).active
    assert _injector(latency_ms=5).active


def test_error_rate_is_respected_over_many_draws() -> None:
    injector = _injector(error_rate=0.3)
    rate = sum(injector.should_error({}) for _ in range(10_000)) / 10_000
    assert 0.28 <= rate <= 0.32


def test_oom_rate_is_respected_and_independent_of_errors() -> None:
    injector = _injector(oom_rate=0.1)
    rate = sum(injector.should_oom({}) for _ in range(10_000)) / 10_000
    assert 0.085 <= rate <= 0.115
    assert not any(injector.should_error({}) for _ in range(100))


def test_same_seed_same_sequence() -> None:
    a, b = _injector(error_rate=0.5), _injector(error_rate=0.5)
    assert [a.should_error({}) for _ in range(200)] == [b.should_error({}) for _ in range(200)]


def test_segment_limits_faults_to_matching_headers_case_insensitively() -> None:
    injector = _injector(error_rate=1.0, crash=True, latency_ms=20, segment=GOLD)
    for headers in (GOLD, {"x-tenant-tier": "gold"}, {"X-TENANT-TIER": "gold", "Other": "1"}):
        assert injector.applies_to(headers)
        assert injector.should_error(headers) and injector.should_crash(headers)
        assert injector.delay_s(headers) == pytest.approx(0.02)
    for headers in ({}, {"X-Tenant-Tier": "silver"}, {"X-Tenant-Tier": "GOLD"}):
        assert not injector.applies_to(headers)
        assert not injector.should_error(headers) and not injector.should_crash(headers)
        assert injector.delay_s(headers) == 0.0


def test_segment_needs_every_header() -> None:
    injector = _injector(error_rate=1.0, segment={"X-Tenant-Tier": "gold", "X-Region": "eu"})
    assert not injector.should_error(GOLD)
    assert injector.should_error({"x-region": "eu", "x-tenant-tier": "gold"})


def test_fixed_latency_number_and_spec() -> None:
    assert _injector(latency_ms=150).delay_s({}) == pytest.approx(0.15)
    assert _injector(latency_ms={"distribution": "fixed", "ms": 40}).delay_s({}) == pytest.approx(0.04)
    assert _injector(latency_ms=0).delay_s({}) == 0.0


def test_uniform_latency_stays_in_bounds() -> None:
    injector = _injector(latency_ms={"distribution": "uniform", "min_ms": 10, "max_ms": 30})
    draws = [injector.delay_s({}) for _ in range(2000)]
    assert min(draws) >= 0.010 and max(draws) <= 0.030
    assert sum(draws) / len(draws) == pytest.approx(0.020, abs=0.001)


def test_lognormal_latency_has_the_given_median() -> None:
    injector = _injector(latency_ms={"distribution": "lognormal", "median_ms": 50, "sigma": 0.5})
    draws = sorted(injector.delay_s({}) for _ in range(5001))
    assert draws[2500] == pytest.approx(0.050, rel=0.05)
    assert draws[-1] > 0.1  # a tail


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"distribution": "fixed"}, "needs ms"),
        ({"distribution": "uniform", "min_ms": 10}, "missing max_ms"),
        ({"distribution": "uniform", "min_ms": 30, "max_ms": 10}, "min_ms (30.0) must be <= max_ms (10.0)"),
        ({"distribution": "lognormal", "median_ms": 50}, "missing sigma"),
        ({"distribution": "fixed", "ms": 5, "sigma": 1}, "sigma do not apply"),
        ({"distribution": "gamma", "ms": 5}, "distribution"),
        ({"distribution": "fixed", "ms": 5, "jitter": 1}, "jitter"),
    ],
)
def test_latency_spec_validation_names_the_key(spec: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(needle)):
        LatencySpec.model_validate(spec)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"oom_rate": -0.1}, "oom_rate"),
        ({"schema_break_rate": 2}, "schema_break_rate"),
        ({"schema_break": "garbled"}, "schema_break"),
        ({"latency_ms": -5}, "latency_ms"),
        ({"error_rat": 0.1}, "error_rat"),
    ],
)
def test_fault_config_validation_names_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError) as info:
        FaultConfig.model_validate(config)
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing_field", {"prediction": "fraud", "version": "fraud-v2"}),
        ("renamed_field", {"label": "fraud", "confidence": 0.9, "version": "fraud-v2"}),
        ("confidence_out_of_range", {"prediction": "fraud", "confidence": 1.7, "version": "fraud-v2"}),
    ],
)
def test_break_output_variants_return_a_new_dict(kind: str, expected: dict[str, object]) -> None:
    original = dict(OUTPUT)
    broken = _injector(schema_break=kind).break_output(original, {})
    assert broken == expected
    assert original == OUTPUT


def test_break_output_respects_rate_and_segment() -> None:
    injector = _injector(schema_break="missing_field", schema_break_rate=0.5, segment=GOLD)
    assert injector.break_output(OUTPUT, {}) == OUTPUT
    broken = sum("confidence" not in injector.break_output(OUTPUT, GOLD) for _ in range(2000))
    assert 900 <= broken <= 1100


def test_injected_fault_error_is_a_model_error() -> None:
    err = InjectedFaultError("oom")
    assert isinstance(err, ModelError) and err.kind == "oom" and "oom" in str(err)


def test_schema_break_true_means_missing_field_and_false_means_none():
    assert FaultConfig(schema_break=True).schema_break == "missing_field"
    assert FaultConfig(schema_break=False).schema_break is None
