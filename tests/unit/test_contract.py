"""The default output contract: prediction, confidence in [0, 1], model_version."""

import math

import pytest

from serving.contract import OutputContract

GOOD = {"prediction": "legit", "confidence": 0.93, "model_version": "fraud-v1"}


def test_a_good_answer_keeps_the_contract():
    assert OutputContract().violations(GOOD) == []


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({k: v for k, v in GOOD.items() if k != "confidence"}, "confidence: missing"),
        ({**GOOD, "confidence": 1.7}, "outside"),
        ({**GOOD, "confidence": -0.1}, "outside"),
        ({**GOOD, "confidence": math.nan}, "outside"),
        ({**GOOD, "confidence": "high"}, "expected number"),
        ({**GOOD, "confidence": True}, "expected number"),
        ({"label": "legit", "confidence": 0.9, "model_version": "v"}, "prediction: missing"),
        ([GOOD], "JSON object"),
    ],
)
def test_each_way_of_breaking_the_contract_is_named(answer, problem):
    problems = OutputContract().violations(answer)
    assert problems and any(problem in p for p in problems), problems


def test_label_set_is_enforced_when_given():
    contract = OutputContract(labels=frozenset({"legit", "fraud"}))
    assert contract.violations(GOOD) == []
    assert contract.violations({**GOOD, "prediction": "maybe"})
