"""The output contract every answer must keep, on every arm. Pure: no Ray, no HTTP.

The default is the seed rule: ``prediction``, ``confidence`` (a number in [0, 1]) and ``model_version`` are
present. A candidate answer that breaks it is never returned to a client: the Ingress falls back to stable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
        return problems


def _is_json_type(value: Any, type_name: str) -> bool:
    if isinstance(value, bool):
        return type_name == "boolean"
    return isinstance(value, _JSON_TYPES[type_name])
