"""The output contract every answer must keep, on every arm. Pure: no Ray, no HTTP.

The default is the seed rule: ``prediction``, ``confidence`` (a number in [0, 1]) and ``model_version`` are
present. A candidate answer that breaks it is never returned to a client: the Ingress falls back to stable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


@dataclass(frozen=True)
class OutputContract:
    """Required fields, their JSON types, numeric ranges and an optional label set.

    Example:
        >>> OutputContract().violations({"prediction": "legit", "confidence": 1.4, "model_version": "v1"})
        ['confidence: 1.4 is outside [0.0, 1.0]']
    """

    required: tuple[str, ...] = ("prediction", "confidence", "model_version")
    types: Mapping[str, str] = field(
        default_factory=lambda: {"confidence": "number", "model_version": "string"}
    )
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=lambda: {"confidence": (0.0, 1.0)})
    labels: frozenset[str] | None = None
    json_schema: Any = None  # a compiled jsonschema validator, or None

    def violations(self, output: Any) -> list[str]:
        """Every way ``output`` breaks the contract; empty when it keeps it."""
        if not isinstance(output, dict):
            return [f"answer must be a JSON object, got {type(output).__name__}"]
        problems = [f"{name}: missing" for name in self.required if name not in output]
        for name, type_name in self.types.items():
            if name in output and not _is_json_type(output[name], type_name):
                problems.append(f"{name}: expected {type_name}, got {type(output[name]).__name__}")
        for name, (low, high) in self.ranges.items():
            value = output.get(name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue  # absent or of the wrong type: reported above
            if not (math.isfinite(value) and low <= value <= high):
                problems.append(f"{name}: {value} is outside [{low}, {high}]")
        if self.labels is not None and "prediction" in output and output["prediction"] not in self.labels:
            problems.append(f"prediction: {output['prediction']!r} is not one of {sorted(self.labels)}")
        if self.json_schema is not None:
            for error in self.json_schema.iter_errors(output):
                where = ".".join(str(p) for p in error.absolute_path) or "(answer)"
                problems.append(f"{where}: {error.message} (json_schema)")
        return problems


def _is_json_type(value: Any, type_name: str) -> bool:
    if isinstance(value, bool):
        return type_name == "boolean"
    return isinstance(value, _JSON_TYPES[type_name])


JsonType = Literal["string", "number", "integer", "boolean", "object", "array"]


class ContractSection(BaseModel):
    """The ``contract:`` section of the Ingress ``user_config``; the default is the seed rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: tuple[str, ...] = Field(
        ("prediction", "confidence", "model_version"), description="fields every answer must have"
    )
    types: dict[str, JsonType] = Field(
        default_factory=lambda: dict[str, JsonType](confidence="number", model_version="string"),
        description="field → JSON type (string, number, integer, boolean, object, array)",
    )
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"confidence": (0.0, 1.0)}, description="field → [min, max], inclusive"
    )
    labels: tuple[str, ...] | None = Field(None, description="allowed values of `prediction`")
    json_schema: dict[str, Any] | None = Field(None, description="a JSON Schema every answer must satisfy")

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (low, high) in ranges.items():
            if not low <= high:
                raise ValueError(f"range of {name!r} must be [min, max] with min <= max, got [{low}, {high}]")
        return ranges

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return schema

    def build(self) -> OutputContract:
        validator = None
        if self.json_schema is not None:
            import jsonschema

            validator = jsonschema.validators.validator_for(self.json_schema)(self.json_schema)
        return OutputContract(
            required=self.required,
            types=dict(self.types),
            ranges=dict(self.ranges),
            labels=frozenset(self.labels) if self.labels is not None else None,
            json_schema=validator,
        )
