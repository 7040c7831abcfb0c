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
    """The top values of a stream by count, and a bounded, stable set of names for them, in bounded memory.

    Counting is Space-Saving (Metwally et al. 2005) with ``capacity`` counters held in count buckets, so an
    offer costs O(1): a tracked value's count overestimates its true count by at most its error, so ``count -
    error`` is a guaranteed count, and an untracked value has occurred at most ``floor`` times (the smallest
    count once every counter is in use, else 0). Every ``halve_every`` offers all counts are halved, so the
    summary follows traffic that shifts over hours instead of being ruled by its first day.

    Naming: every name given out becomes a permanent series downstream, so the set of values ever named is
    capped at ``max_names`` (default ``2 * top_n``) and at most ``top_n`` are named at a time.

    - While a label has shown no more than ``on_sight`` distinct values (8, or ``top_n`` if smaller), each is
      named at once, so a label with few values (endpoint, tier) never reports ``other``. These names are
      provisional: one whose counter Space-Saving reclaims (a one-off) loses its name and its slot, and at the
      first halving the rest must clear the bar below or lose theirs. They are the only names a flat tail ever
      gets: its first few values.
    - After that, a value is named only when it clearly dominates the values not tracked: its guaranteed count
      exceeds ``dominance * floor + min_support``. In a flat tail no value ever does, however long it runs.
    - With ``top_n`` names in use, a newcomer replaces the weakest named value only when its guaranteed count
      exceeds ``dominance * weakest + min_support``, ``weakest`` being the largest count that value may have.
      Names are kept otherwise, so they do not flap; a value named before may be named again at no extra cost.

    Independent summaries of the same traffic (one per Ingress replica) certify the same heavy values, so they
    converge on the same names; they may differ on values too close to call and on provisional one-offs.

    Example:
        >>> h = HeavyHitters(top_n=2)
        >>> [h.offer(v) for v in ["a", "b", "c"]]
        ['a', 'b', 'other']
    """

    def __init__(
        self,
        top_n: int,
        capacity: int | None = None,
        *,
        min_support: int = 16,
        dominance: float = 2.0,
        max_names: int | None = None,
        halve_every: int | None = None,
        on_sight: int = 8,
    ) -> None:
        self.top_n = top_n
        self.on_sight = min(on_sight, top_n)
        self.capacity = max(capacity or max(8 * top_n, 256), 2 * top_n)
        self.min_support = min_support
        self.dominance = dominance
        self.max_names = max(max_names if max_names is not None else 2 * top_n, top_n)
        self.halve_every = halve_every or max(1 << 16, 32 * self.capacity)
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}  # only values with a non-zero error
        self._buckets: dict[int, dict[str, None]] = {}  # count -> values with it, oldest first
        self._min = 0  # smallest count, when the summary is not empty
        self._full = False  # every counter is in use: an untracked value has occurred at most self._min times
        self._crowded = False  # more than on_sight distinct values seen: names must be earned
        self._named: dict[str, None] = {}
        self._provisional: set[str] = set()
        self._ever: set[str] = set()
        self._bar = 0.0  # no newcomer at or below this guaranteed count can dominate a named value
        self._until_halving = self.halve_every

    def __len__(self) -> int:
        return len(self._counts)

    @property
    def named(self) -> frozenset[str]:
        """The values named now (at most ``top_n``)."""
        return frozenset(self._named)

    @property
    def ever_named(self) -> int:
        """How many distinct values were ever named (at most ``max_names``)."""
        return len(self._ever)

    def offer(self, value: str) -> str:
        """Counts ``value`` and returns its label: the value itself when named, else ``other``."""
        counts = self._counts
        count = counts.get(value)
        if count is None:
            count = self._insert(value)
        else:
            buckets = self._buckets
            bucket = buckets[count]
            del bucket[value]
            if not bucket:
                del buckets[count]
                if count == self._min:
                    self._min = count + 1
            count += 1
            counts[value] = count
            above = buckets.get(count)
            if above is None:
                buckets[count] = {value: None}
            else:
                above[value] = None
        self._until_halving -= 1
        if self._until_halving <= 0:
            self._halve()
            count = counts[value]
        if value in self._named:
            return value
        if not self._crowded:  # a label with few values so far: name it now, provisionally
            self._name(value)
            self._provisional.add(value)
            return value
        guaranteed = count - self._errors.get(value, 0)
        if not self._dominates_untracked(guaranteed):
            return OTHER
        return value if self._admit(value, guaranteed) else OTHER

    def _dominates_untracked(self, guaranteed: int) -> bool:
        floor = self._min if self._full else 0
        return guaranteed > self.dominance * floor + self.min_support

    def _insert(self, value: str) -> int:
        counts = self._counts
        if len(counts) >= self.on_sight:
            self._crowded = True
        if len(counts) < self.capacity:
            counts[value] = 1
            self._min = 1
            self._buckets.setdefault(1, {})[value] = None
            return 1
        # replace the oldest smallest counter; the newcomer inherits its count as error (Space-Saving)
        self._full = True
        floor = self._min
        bucket = self._buckets[floor]
        evicted = next(iter(bucket))
        del bucket[evicted], counts[evicted]
        self._errors.pop(evicted, None)
        if evicted in self._provisional:  # a one-off named before the label showed its tail
            self._provisional.discard(evicted)
            del self._named[evicted]
        if not bucket:
            del self._buckets[floor]
            self._min = floor + 1
        counts[value] = floor + 1
        self._errors[value] = floor
        self._buckets.setdefault(floor + 1, {})[value] = None
        return floor + 1

    def _admit(self, value: str, guaranteed: int) -> bool:
        if value not in self._ever and len(self._ever) >= self.max_names:
            return False
        named = self._named
        if len(named) < self.top_n:
            self._name(value)
            return True
        if guaranteed <= self._bar:
            return False
        floor = self._min if self._full else 0
        weakest = min(named, key=lambda v: self._counts.get(v, floor))  # O(top_n), only past the cached bar
        self._bar = self.dominance * self._counts.get(weakest, floor) + self.min_support
        if guaranteed <= self._bar:
            return False
        del named[weakest]
        self._provisional.discard(weakest)
        self._name(value)
        return True

    def _name(self, value: str) -> None:
        self._named[value] = None
        self._ever.add(value)
        self._bar = 0.0

    def _halve(self) -> None:
        self._until_halving = self.halve_every
        if self._crowded:  # provisional names face the bar every other name had to clear
            for value in list(self._provisional):
                if not self._dominates_untracked(self._counts[value] - self._errors.get(value, 0)):
                    del self._named[value]
            self._provisional.clear()
        buckets: dict[int, dict[str, None]] = {}
        for value, count in self._counts.items():
            halved = max(count >> 1, 1)
            self._counts[value] = halved
            buckets.setdefault(halved, {})[value] = None
        self._errors = {v: e >> 1 for v, e in self._errors.items() if e > 1}
        self._buckets = buckets
        self._min = min(buckets, default=0)
        self._bar = 0.0

    def renew_budget(self) -> None:
        """Starts a new naming budget (at a new rollout, whose evidence starts afresh): the values named now
        keep their names and count in it, and ``max_names - top_n`` or more new ones may be named. Without
        it a replica that lives for months would, after its first ``max_names`` heavy values, never name a
        tenant that grows big later."""
        self._ever = set(self._named)

    def top(self) -> list[tuple[str, int]]:
        """The ``top_n`` tracked values by count, largest first (estimates, for inspection)."""
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

    def renew_budget(self) -> None:
        """A new naming budget for every label (see `HeavyHitters.renew_budget`)."""
        for hitters in self._hitters.values():
            hitters.renew_budget()


def _tokens(body: Any) -> int:
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        return len(body["text"].split())
    return 0
