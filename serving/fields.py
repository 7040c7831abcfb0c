"""Numeric and boolean fields pulled from answers (LLM and RAG signals such as token use, citations,
abstention, fallback-model use) so each arm's mean or rate can be compared. Pure: no Ray, no HTTP."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FieldSpec(BaseModel):
    """One field to extract, e.g. ``{name: prompt_tokens, path: usage.prompt_tokens, kind: number}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", description="metric-safe name")
    path: str = Field(min_length=1, description="dotted path into the answer, e.g. usage.completion_tokens")
    kind: Literal["number", "boolean", "nonempty"] = Field(
        "number", description="'number' → mean; 'boolean' → rate of true; 'nonempty' → rate of non-empty"
    )


def _lookup(answer: Any, path: str) -> Any:
    node = answer
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def extract(specs: tuple[FieldSpec, ...], answer: Any) -> dict[str, float]:
    """The configured fields present in ``answer`` as floats (booleans and non-emptiness as 0.0 / 1.0).

    Example:
        >>> specs = (FieldSpec(name="tokens", path="usage.completion_tokens"),
        ...          FieldSpec(name="cited", path="citations", kind="nonempty"))
        >>> extract(specs, {"usage": {"completion_tokens": 42}, "citations": []})
        {'tokens': 42.0, 'cited': 0.0}
    """
    out: dict[str, float] = {}
    for spec in specs:
        value = _lookup(answer, spec.path)
        if spec.kind == "nonempty":
            if value is not None:
                out[spec.name] = 1.0 if value not in ("", [], {}) else 0.0
        elif spec.kind == "boolean":
            if isinstance(value, bool):
                out[spec.name] = 1.0 if value else 0.0
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[spec.name] = float(value)
    return out
