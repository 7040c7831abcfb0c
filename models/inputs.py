"""Parse HTTP request bodies into model inputs, with errors that name each bad field.

`request_model_for` builds the pydantic model of a request body from an artifact's `InputSchema`;
`parse_request` validates a decoded JSON body with it and turns pydantic's errors into
`InvalidInputError` entries such as
``{"field": "features.3", "message": "must be a finite number, got NaN"}``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import ErrorDetails

from models.artifact import InputSchema
from models.errors import InvalidInputError

# Beyond this a model's arithmetic overflows (found by fuzzing: 7e39 made a logit infinite and the
# confidence NaN), so larger magnitudes are refused as input, not answered with nonsense.
MAX_FEATURE_MAGNITUDE = 1e30
_StrictFiniteNumber = Annotated[
    float,
    Field(strict=True, allow_inf_nan=False, ge=-MAX_FEATURE_MAGNITUDE, le=MAX_FEATURE_MAGNITUDE),
]


@lru_cache(maxsize=64)
def _request_model(kind: str, length: int | None, max_chars: int | None) -> type[BaseModel]:
    config = ConfigDict(extra="ignore")
    if kind == "features":
        return create_model(
            "FeaturesRequest",
            __config__=config,
            features=(
                list[_StrictFiniteNumber],
                Field(
                    min_length=length,
                    max_length=length,
                    description=f"Exactly {length} finite JSON numbers within ±{MAX_FEATURE_MAGNITUDE:g}.",
                ),
            ),
        )
    return create_model(
        "TextRequest",
        __config__=config,
        text=(
            str,
            Field(
                strict=True,
                min_length=1,
                max_length=max_chars,
                description=f"A non-empty string of at most {max_chars} characters.",
            ),
        ),
    )


def request_model_for(schema: InputSchema) -> type[BaseModel]:
    """The pydantic model of a request body for a model with this input schema.

    Fields other than the model input are allowed and ignored (the routing layer reads them).

    Example:
        >>> Body = request_model_for(InputSchema(kind="text", max_chars=100))
        >>> Body.model_validate({"text": "hi", "user_id": "u1"}).text
        'hi'
    """
    return _request_model(schema.kind, schema.length, schema.max_chars)


def _json_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a number"


def _message(schema: InputSchema, error: ErrorDetails) -> str:
    kind, value = error["type"], error["input"]
    if kind == "missing":
        if schema.kind == "features":
            return f"is required: send a list of exactly {schema.length} numbers"
        return f"is required: send a non-empty string of at most {schema.max_chars} characters"
    if kind in ("too_short", "too_long") and schema.kind == "features":
        return f"expected exactly {schema.length} numbers, got {len(value)}"
    if kind == "list_type":
        return f"must be a list of exactly {schema.length} numbers, got {_json_type(value)}"
    if kind == "finite_number" or (
        kind == "float_type" and isinstance(value, int | float) and not isinstance(value, bool)
    ):
        return f"must be a finite number, got {_json_repr(value)}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"must be within ±{MAX_FEATURE_MAGNITUDE:g}, got {_json_repr(value)}"
    if kind == "float_type":
        return f"must be a JSON number, got {_json_type(value)} ({_json_repr(value)})"
    if kind == "string_type":
        return f"must be a string, got {_json_type(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {schema.max_chars} characters, got {len(value)}"
    return str(error["msg"])


def parse_request(schema: InputSchema, body: Any) -> dict[str, Any]:
    """Validate a decoded JSON request body and return the model input.

    Args:
        schema: the serving model's input schema.
        body: the decoded JSON body (any JSON value).

    Returns:
        ``{"features": [float, ...]}`` or ``{"text": str}``.

    Raises:
        InvalidInputError: one entry per problem, ``field`` a dotted path (``body``, ``features``,
            ``features.3``, ``text``) and ``message`` what is wrong and what is expected.

    Example:
        >>> parse_request(InputSchema(kind="features", length=2), {"features": [1, 2.5]})
        {'features': [1.0, 2.5]}
    """
    if not isinstance(body, dict):
        raise InvalidInputError(
            [
                {
                    "field": "body",
                    "message": f"must be a JSON object with `{schema.kind}`, got {_json_type(body)}",
                }
            ]
        )
    try:
        parsed = request_model_for(schema).model_validate(body)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(part) for part in e["loc"]), "message": _message(schema, e)}
            for e in exc.errors(include_url=False)
        ]
        raise InvalidInputError(errors) from None
    if schema.kind == "features":
        return {"features": [float(v) for v in parsed.features]}  # type: ignore[attr-defined]
    return {"text": parsed.text}  # type: ignore[attr-defined]
