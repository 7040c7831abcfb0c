"""Fault injection for a model deployment: latency, errors, OOMs, crashes and broken outputs.

Pure: the caller passes the random source and the request headers, and acts on the answers (sleeps,
raises, exits). A fault can be limited to a segment of traffic by request headers, e.g.
``{"X-Tenant-Tier": "gold"}`` (header names match case-insensitively, values exactly).

Example:
    >>> import random
    >>> config = FaultConfig(error_rate=1.0, segment={"X-Tenant-Tier": "gold"})
    >>> injector = FaultInjector(config, random.Random(0))
    >>> injector.should_error({"x-tenant-tier": "gold"}), injector.should_error({})
    (True, False)
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.errors import InjectedFaultError

__all__ = ["FaultConfig", "FaultInjector", "InjectedFaultError", "LatencySpec", "SchemaBreak"]

SchemaBreak = Literal["missing_field", "renamed_field", "confidence_out_of_range"]

_REQUIRED: dict[str, tuple[str, ...]] = {
    "fixed": ("ms",),
    "uniform": ("min_ms", "max_ms"),
    "lognormal": ("median_ms", "sigma"),
}


class LatencySpec(BaseModel):
    """Added latency drawn from a distribution.

    ``fixed`` needs ``ms``; ``uniform`` needs ``min_ms`` <= ``max_ms``; ``lognormal`` needs
    ``median_ms`` and ``sigma`` (the standard deviation of the log).
    """

    model_config = ConfigDict(extra="forbid")

    distribution: Literal["fixed", "uniform", "lognormal"] = Field(description="How the delay is drawn.")
    ms: float | None = Field(default=None, ge=0, description="Delay for `fixed`, in milliseconds.")
    min_ms: float | None = Field(
        default=None, ge=0, description="Lower bound for `uniform`, in milliseconds."
    )
    max_ms: float | None = Field(
        default=None, ge=0, description="Upper bound for `uniform`, in milliseconds."
    )
    median_ms: float | None = Field(
        default=None, gt=0, description="Median for `lognormal`, in milliseconds."
    )
    sigma: float | None = Field(default=None, ge=0, description="Std. dev. of log(delay) for `lognormal`.")

    @model_validator(mode="after")
    def _fields_match_distribution(self) -> LatencySpec:
        needed = _REQUIRED[self.distribution]
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            example = {
                "fixed": "ms: 50",
                "uniform": "min_ms: 10, max_ms: 80",
                "lognormal": "median_ms: 40, sigma: 0.5",
            }
            raise ValueError(
                f"distribution {self.distribution!r} needs {', '.join(needed)}; missing {', '.join(missing)} "
                f"(e.g. {{distribution: {self.distribution}, {example[self.distribution]}}})"
            )
        extra = [
            k
            for group in _REQUIRED.values()
            for k in group
            if k not in needed and getattr(self, k) is not None
        ]
        if extra:
            raise ValueError(
                f"{', '.join(extra)} do not apply to distribution {self.distribution!r}; "
                f"it takes only {', '.join(needed)}"
            )
        if self.distribution == "uniform" and self.min_ms > self.max_ms:  # type: ignore[operator]
            raise ValueError(f"min_ms ({self.min_ms}) must be <= max_ms ({self.max_ms})")
        return self

    def sample_ms(self, rng: random.Random) -> float:
        """Draw one delay in milliseconds."""
        if self.distribution == "fixed":
            return float(self.ms)  # type: ignore[arg-type]
        if self.distribution == "uniform":
            return rng.uniform(self.min_ms, self.max_ms)  # type: ignore[arg-type]
        return rng.lognormvariate(math.log(self.median_ms), self.sigma)  # type: ignore[arg-type]


class FaultConfig(BaseModel):
    """What faults a deployment injects, and for which requests."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float | LatencySpec | None = Field(
        default=None,
        description="Added latency per request: a fixed number of milliseconds (>= 0) or a `LatencySpec`.",
    )
    error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Probability a request raises an error."
    )
    schema_break: SchemaBreak | None = Field(
        default=None,
        description=(
            "Break the output contract: `missing_field` drops `confidence`, `renamed_field` renames "
            "`prediction` to `label`, `confidence_out_of_range` sets confidence to 1.7; `true` means "
            "`missing_field`, `false` none."
        ),
    )

    @field_validator("schema_break", mode="before")
    @classmethod
    def _schema_break_switch(cls, value: Any) -> Any:
        # `schema_break: true` is the natural way to say "break it"; it picks the most common break.
        if value is True:
            return "missing_field"
        if value is False:
            return None
        return value

    schema_break_rate: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Probability an output is broken when `schema_break` is set."
    )
    oom_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Probability a request raises an OOM error."
    )
    crash: bool = Field(default=False, description="Crash the replica on the next matching request.")
    segment: dict[str, str] | None = Field(
        default=None,
        description=(
            "Only requests whose headers carry all these values are affected, "
            "e.g. {'X-Tenant-Tier': 'gold'}; "
            "header names match case-insensitively. None affects every request."
        ),
    )

    @model_validator(mode="after")
    def _latency_non_negative(self) -> FaultConfig:
        if isinstance(self.latency_ms, float | int) and self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0 milliseconds, got {self.latency_ms}")
        return self


class FaultInjector:
    """Decides, request by request, which configured faults fire.

    Every ``should_*`` and `break_output` call draws from the injected ``rng`` only for requests in the
    segment, so a seeded ``random.Random`` gives a reproducible sequence. With ``config=None`` nothing fires.
    """

    def __init__(self, config: FaultConfig | None, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        segment = config.segment if config is not None and config.segment else {}
        self._segment = {k.lower(): v for k, v in segment.items()}

    @property
    def active(self) -> bool:
        """Whether any fault is configured."""
        c = self.config
        if c is None:
            return False
        latency = c.latency_ms is not None and not (
            isinstance(c.latency_ms, float | int) and c.latency_ms == 0
        )
        return bool(
            latency
            or c.error_rate > 0
            or c.oom_rate > 0
            or c.crash
            or (c.schema_break is not None and c.schema_break_rate > 0)
        )

    def applies_to(self, headers: Mapping[str, str]) -> bool:
        """Whether a request with these headers is in the fault's segment (always, without a segment)."""
        if self.config is None:
            return False
        if not self._segment:
            return True
        lowered = {k.lower(): v for k, v in headers.items()}
        return all(lowered.get(name) == value for name, value in self._segment.items())

    def _draw(self, rate: float, headers: Mapping[str, str]) -> bool:
        if rate <= 0 or not self.applies_to(headers):
            return False
        return rate >= 1 or self._rng.random() < rate

    def delay_s(self, headers: Mapping[str, str]) -> float:
        """Seconds to delay this request (0.0 when no latency fault applies)."""
        if self.config is None or self.config.latency_ms is None or not self.applies_to(headers):
            return 0.0
        latency = self.config.latency_ms
        ms = latency.sample_ms(self._rng) if isinstance(latency, LatencySpec) else float(latency)
        return max(ms, 0.0) / 1000.0

    def should_error(self, headers: Mapping[str, str]) -> bool:
        """Whether this request should fail with an injected error."""
        return self.config is not None and self._draw(self.config.error_rate, headers)

    def should_oom(self, headers: Mapping[str, str]) -> bool:
        """Whether this request should fail as if the device ran out of memory."""
        return self.config is not None and self._draw(self.config.oom_rate, headers)

    def should_crash(self, headers: Mapping[str, str]) -> bool:
        """Whether this request should crash the replica."""
        return self.config is not None and self.config.crash and self.applies_to(headers)

    def break_output(self, output: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """Return a copy of ``output``, broken as configured when the schema-break fault fires.

        ``missing_field`` drops ``confidence``; ``renamed_field`` renames ``prediction`` to ``label``;
        ``confidence_out_of_range`` sets ``confidence`` to 1.7.
        """
        result = dict(output)
        if self.config is None or self.config.schema_break is None:
            return result
        if not self._draw(self.config.schema_break_rate, headers):
            return result
        if self.config.schema_break == "missing_field":
            result.pop("confidence", None)
        elif self.config.schema_break == "renamed_field":
            if "prediction" in result:
                result["label"] = result.pop("prediction")
        else:
            result["confidence"] = 1.7
        return result
