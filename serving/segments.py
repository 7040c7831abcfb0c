"""Segment labels of a request (endpoint, tenant, tier, region, request size) with bounded cardinality.
Pure: no Ray, no HTTP objects (headers come in as a mapping).

Each label keeps the names of its top N values by volume (a Space-Saving heavy-hitters summary of bounded
size, Metwally et al. 2005); every other value is reported as ``other``. So a million distinct tenants cost
the same memory as fifty.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OTHER = "other"
UNSET = "unset"
ALL: tuple[str, str] = ("all", "all")

Segment = tuple[str, str]  # (label, value), e.g. ("tenant", "acme")


class LabelSource(BaseModel):
    """Where one segment label is read: a request header, a top-level body field, or the request path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str | None = Field(None, min_length=1, description="request header holding the value")
    body_field: str | None = Field(None, min_length=1, description="top-level body field holding the value")
    path: bool = Field(False, description="use the request path when neither header nor body field is set")

    @model_validator(mode="after")
    def _one_source(self) -> LabelSource:
        if not (self.header or self.body_field or self.path):
            raise ValueError("name at least one source: header, body_field or path: true")
        return self


class SizeBuckets(BaseModel):
    """The request-size label: body bytes or whitespace tokens, bucketed at ascending edges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: Literal["bytes", "tokens"] = Field("bytes", description="'bytes' of the body or 'tokens' of its text")
    edges: tuple[int, ...] = Field((512, 2048, 8192), description="ascending positive bucket edges")

    @field_validator("edges")
    @classmethod
    def _ascending(cls, edges: tuple[int, ...]) -> tuple[int, ...]:
        if not edges or any(e <= 0 for e in edges) or list(edges) != sorted(set(edges)):
            raise ValueError(f"must be strictly ascending positive integers, got {list(edges)}")
        return edges

    def bucket(self, size: int) -> str:
        unit = "B" if self.by == "bytes" else "tok"
        i = bisect.bisect_right(self.edges, size)
        if i == 0:
            return f"<{self.edges[0]}{unit}"
        if i == len(self.edges):
            return f">={self.edges[-1]}{unit}"
        return f"{self.edges[i - 1]}-{self.edges[i]}{unit}"


def _default_labels() -> dict[str, LabelSource]:
    return {
        "endpoint": LabelSource(header="X-Endpoint", path=True),
        "tenant": LabelSource(header="X-Tenant"),
        "tier": LabelSource(header="X-Tenant-Tier"),
        "region": LabelSource(header="X-Region"),
    }


class SegmentsSection(BaseModel):
    """The ``segments:`` section of the Ingress ``user_config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: dict[str, LabelSource] = Field(default_factory=_default_labels, description="label name → source")
    size: SizeBuckets | None = Field(
        default_factory=SizeBuckets, description="request-size label; null for none"
    )
    top_n: int = Field(
        20, ge=1, le=1000, description="values per label that keep their name; the rest are 'other'"
    )

    @field_validator("labels")
    @classmethod
    def _names(cls, labels: dict[str, LabelSource]) -> dict[str, LabelSource]:
        reserved = {"all", "size", "arm"} & set(labels)
        if reserved:
            raise ValueError(f"label names {sorted(reserved)} are reserved; pick other names")
        return labels


class HeavyHitters:
    """The top values of a stream by count in bounded memory (Space-Saving with ``capacity`` counters).

    Any value whose true count exceeds ``total / capacity`` is guaranteed to be tracked.
    """

    def __init__(self, top_n: int, capacity: int | None = None, refresh_every: int = 256) -> None:
        self.top_n = top_n
        self.capacity = capacity or max(4 * top_n, 64)
        self._counts: dict[str, int] = {}
        self._top: frozenset[str] = frozenset()
        self._refresh_every = refresh_every
        self._since_refresh = 0

    def __len__(self) -> int:
        return len(self._counts)

    def offer(self, value: str) -> str:
        """Counts ``value`` and returns its label: the value itself when among the top N, else ``other``."""
        counts = self._counts
        if value in counts:
            counts[value] += 1
        elif len(counts) < self.capacity:
            counts[value] = 1
        else:  # replace the smallest counter; the newcomer inherits its count (the Space-Saving rule)
            smallest = min(counts, key=counts.__getitem__)
            counts[value] = counts.pop(smallest) + 1
        self._since_refresh += 1
        if self._since_refresh >= self._refresh_every or (
            len(self._top) < self.top_n and value not in self._top
        ):
            self._refresh()
        return value if value in self._top else OTHER

    def _refresh(self) -> None:
        ranked = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self._top = frozenset(v for v, _ in ranked[: self.top_n])
        self._since_refresh = 0

    def top(self) -> list[tuple[str, int]]:
        return sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_n]


class SegmentExtractor:
    """Turns a request into its segments, one (label, value) per configured label plus size.

    Example:
        >>> x = SegmentExtractor(SegmentsSection())
        >>> x.segments({"x-tenant": "acme"}, {}, "/predict", body_bytes=300)[1:]
        [('tenant', 'acme'), ('tier', 'unset'), ('region', 'unset'), ('size', '<512B')]
    """

    def __init__(self, config: SegmentsSection) -> None:
        self.config = config
        self._sources = [(name, src, (src.header or "").lower()) for name, src in config.labels.items()]
        self._hitters = {name: HeavyHitters(config.top_n) for name in config.labels}

    def segments(self, headers: Mapping[str, str], body: Any, path: str, body_bytes: int) -> list[Segment]:
        """``headers`` must have lower-case names (as Starlette gives them)."""
        out: list[Segment] = []
        for name, src, header in self._sources:
            value = headers.get(header) if header else None
            if not value and src.body_field and isinstance(body, dict):
                raw = body.get(src.body_field)
                value = str(raw) if raw is not None else None
            if not value and src.path:
                value = path
            out.append((name, self._hitters[name].offer(value[:200]) if value else UNSET))
        size = self.config.size
        if size is not None:
            measure = body_bytes if size.by == "bytes" else _tokens(body)
            out.append(("size", size.bucket(measure)))
        return out

    def tracked_values(self) -> int:
        return sum(len(h) for h in self._hitters.values())


def _tokens(body: Any) -> int:
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        return len(body["text"].split())
    return 0
