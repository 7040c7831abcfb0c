from __future__ import annotations

from typing import Any

import pytest

from models.artifact import InputSchema
from models.errors import InvalidInputError
from models.inputs import parse_request, request_model_for

FEATURES = InputSchema(kind="features", length=30)
TEXT = InputSchema(kind="text", max_chars=20)
VALID = [0.5] * 30


def _errors(schema: InputSchema, body: Any) -> list[dict[str, Any]]:
    with pytest.raises(InvalidInputError) as info:
        parse_request(schema, body)
    return info.value.errors


def test_valid_features_become_floats() -> None:
    body = {"features": [1] + [0.25] * 29}
    parsed = parse_request(FEATURES, body)
    assert parsed == {"features": [1.0] + [0.25] * 29}
    assert all(type(v) is float for v in parsed["features"])


def test_wrong_count_names_features() -> None:
    errors = _errors(FEATURES, {"features": [1, 2, 3]})
    assert errors == [{"field": "features", "message": "expected exactly 30 numbers, got 3"}]
    assert (
        _errors(FEATURES, {"features": [*VALID, 1.0]})[0]["message"] == "expected exactly 30 numbers, got 31"
    )


def test_strings_are_rejected_with_their_index() -> None:
    body = {"features": [*VALID[:3], "1.0", *VALID[4:]]}
    errors = _errors(FEATURES, body)
    assert errors == [{"field": "features.3", "message": "must be a JSON number, got a string ('1.0')"}]


@pytest.mark.parametrize(
    ("value", "shown"), [(float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")]
)
def test_non_finite_numbers_are_rejected(value: float, shown: str) -> None:
    errors = _errors(FEATURES, {"features": [*VALID[:29], value]})
    assert errors == [{"field": "features.29", "message": f"must be a finite number, got {shown}"}]


def test_booleans_are_not_numbers() -> None:
    errors = _errors(FEATURES, {"features": [True, *VALID[1:]]})
    assert errors == [{"field": "features.0", "message": "must be a JSON number, got a boolean (true)"}]


def test_every_bad_element_is_reported() -> None:
    errors = _errors(FEATURES, {"features": ["a", None, *VALID[2:]]})
    assert [e["field"] for e in errors] == ["features.0", "features.1"]


def test_missing_field_is_named() -> None:
    assert _errors(FEATURES, {"feature": VALID}) == [
        {"field": "features", "message": "is required: send a list of exactly 30 numbers"}
    ]
    assert _errors(TEXT, {})[0]["field"] == "text"


def test_features_must_be_a_list() -> None:
    assert _errors(FEATURES, {"features": "1,2,3"}) == [
        {"field": "features", "message": "must be a list of exactly 30 numbers, got a string"}
    ]


@pytest.mark.parametrize("body", [[1, 2, 3], "text", None, 3.5])
def test_body_must_be_an_object(body: Any) -> None:
    errors = _errors(FEATURES, body)
    assert len(errors) == 1 and errors[0]["field"] == "body"
    assert "JSON object" in errors[0]["message"]


def test_extra_fields_are_ignored() -> None:
    assert parse_request(FEATURES, {"features": VALID, "user_id": "u-1", "segment": {"tier": "gold"}}) == {
        "features": VALID
    }
    assert parse_request(TEXT, {"text": "hi", "user_id": "u-1"}) == {"text": "hi"}


def test_text_too_long_empty_or_not_a_string() -> None:
    assert _errors(TEXT, {"text": "x" * 21}) == [
        {"field": "text", "message": "must be at most 20 characters, got 21"}
    ]
    assert _errors(TEXT, {"text": ""}) == [{"field": "text", "message": "must not be empty"}]
    assert _errors(TEXT, {"text": 42}) == [{"field": "text", "message": "must be a string, got a number"}]
    assert parse_request(TEXT, {"text": "x" * 20}) == {"text": "x" * 20}


def test_error_message_lists_each_problem() -> None:
    with pytest.raises(InvalidInputError, match=r"features\.0: must be a JSON number"):
        parse_request(FEATURES, {"features": ["a", *VALID[1:]]})


def test_request_model_is_cached_and_documents_the_schema() -> None:
    model = request_model_for(FEATURES)
    assert model is request_model_for(InputSchema(kind="features", length=30))
    schema = model.model_json_schema()
    assert schema["properties"]["features"]["minItems"] == 30
    assert schema["properties"]["features"]["maxItems"] == 30


def test_features_beyond_the_computable_range_are_refused_naming_the_index():
    from models.artifact import InputSchema
    from models.errors import InvalidInputError
    from models.inputs import parse_request

    schema = InputSchema(kind="features", length=3)
    assert parse_request(schema, {"features": [0, -1e30, 1e30]})["features"][2] == 1e30
    with pytest.raises(InvalidInputError) as refused:
        parse_request(schema, {"features": [0, 1, 7.018616937207078e39]})  # found by fuzzing: a NaN answer
    assert refused.value.errors == [
        {"field": "features.2", "message": "must be within ±1e+30, got 7.018616937207078e+39"}
    ]
