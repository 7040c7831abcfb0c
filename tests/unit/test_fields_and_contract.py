"""Extracted answer fields and the declarative output contract (each rule: a failing and a passing case)."""

import pytest
from pydantic import ValidationError

from serving.contract import ContractSection
from serving.fields import FieldSpec, extract

GOOD = {"prediction": "legit", "confidence": 0.9, "model_version": "v1", "usage": {"prompt_tokens": 12}}


def test_fields_are_extracted_as_means_and_rates():
    specs = (
        FieldSpec(name="prompt_tokens", path="usage.prompt_tokens"),
        FieldSpec(name="cited", path="citations", kind="nonempty"),
        FieldSpec(name="abstained", path="abstained", kind="boolean"),
        FieldSpec(name="fallback_model", path="fallback_model_used", kind="boolean"),
    )
    answer = {"usage": {"prompt_tokens": 12}, "citations": ["doc-1"], "abstained": False}
    assert extract(specs, answer) == {"prompt_tokens": 12.0, "cited": 1.0, "abstained": 0.0}
    assert extract(specs, {"usage": {"prompt_tokens": "12"}, "citations": []}) == {"cited": 0.0}


@pytest.mark.parametrize(
    ("contract", "bad", "problem"),
    [
        (
            {"required": ["prediction", "usage"]},
            {k: v for k, v in GOOD.items() if k != "usage"},
            "usage: missing",
        ),
        ({"types": {"usage": "object"}}, {**GOOD, "usage": 3}, "expected object"),
        ({"ranges": {"confidence": [0.5, 1.0]}}, {**GOOD, "confidence": 0.2}, "outside [0.5, 1.0]"),
        ({"labels": ["legit", "fraud"]}, {**GOOD, "prediction": "maybe"}, "not one of"),
        (
            {"json_schema": {"type": "object", "properties": {"usage": {"required": ["completion_tokens"]}}}},
            GOOD,
            "completion_tokens",
        ),
    ],
)
def test_each_contract_rule_fails_a_bad_answer_and_passes_a_good_one(contract, bad, problem):
    built = ContractSection.model_validate(contract).build()
    assert any(problem in p for p in built.violations(bad)), built.violations(bad)
    good = {**GOOD, "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    assert built.violations(good) == []


def test_invalid_contract_config_is_refused_at_load():
    with pytest.raises(ValidationError, match="valid JSON Schema"):
        ContractSection(json_schema={"type": "no-such-type"})
    with pytest.raises(ValidationError, match="min <= max"):
        ContractSection(ranges={"confidence": (1.0, 0.0)})
    with pytest.raises(ValidationError):
        ContractSection(types={"confidence": "float"})
