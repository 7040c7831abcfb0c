"""Config schemas of the serving layer, validated when a config is loaded, never on a request.

The Ingress deployment's ``user_config`` holds the ``rollout:`` section (changed in place by a redeploy, no
replica restarts); the application's ``args`` hold only what needs new replicas anyway (the artifacts).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.faults import FaultConfig
from rollout.policy import KeyProblem, RolloutPolicy, did_you_mean, key_problems_error
from serving.config_messages import booleans_for_numbers, config_errors
from serving.contract import ContractSection
from serving.errors import InvalidConfigError
from serving.fields import FieldSpec
from serving.segments import SegmentsSection

ModelT = TypeVar("ModelT", bound=BaseModel)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmTimeouts(_Strict):
    stable: float = Field(5.0, gt=0, le=300, description="seconds to wait for the stable model, (0, 300]")
    candidate: float = Field(2.0, gt=0, le=300, description="seconds to wait for the candidate, (0, 300]")


class RoutingKey(_Strict):
    header: str = Field("X-Routing-Key", min_length=1, description="request header that holds the sticky key")
    body_field: str | None = Field(
        None, min_length=1, description="top-level body field used as the key when the header is absent"
    )


class RolloutSection(RolloutPolicy):
    """The ``rollout:`` section of the Ingress ``user_config``: routing values and the rollout policy."""

    mode: Literal["manual", "auto"] = Field(
        "manual",
        description="'manual': the config's weights route; 'auto': the controller walks `stages`",
    )
    candidate_weight: float | None = Field(
        None,
        ge=0,
        le=100,
        description="percent of live traffic (0–100, resolution 0.01) served by the candidate; in auto mode "
        "a changed value is an operator override that pauses the rollout",
    )
    timeouts_s: ArmTimeouts = Field(default_factory=ArmTimeouts, description="per-arm time-outs in seconds")
    fallback: bool = Field(
        True,
        description="answer with the stable model when the candidate errs, times out or breaks the contract",
    )
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES,
        ge=64,
        le=256 * 1024 * 1024,
        description="largest request body accepted, bytes",
    )
    routing_key: RoutingKey = Field(default_factory=RoutingKey, description="where the sticky key is read")
    shadow_percent: float | None = Field(
        None, ge=0, le=100, description="percent of stable's requests mirrored to the candidate (0–100)"
    )
    shadow_max_in_flight: int = Field(
        256,
        ge=1,
        le=100_000,
        description="mirrored requests queued or in flight per Ingress replica; beyond it they are dropped",
    )
    shadow_timeout_s: float | None = Field(
        None,
        gt=0,
        le=300,
        description="time-out of a mirrored call in seconds (default: timeouts_s.candidate)",
    )
    shadow_batch_size: int = Field(
        32, ge=1, le=1024, description="mirrored requests sent to the candidate together in one handle call"
    )
    shadow_batch_wait_s: float = Field(
        0.5, ge=0, le=5, description="longest a mirrored request waits for others to share its call, seconds"
    )

    @field_validator("candidate_weight")
    @classmethod
    def _resolution(cls, value: float | None) -> float | None:
        if value is not None and abs(value * 100 - round(value * 100)) > 1e-6:
            raise ValueError(f"resolution is 0.01 percent, got {value!r}; round it to two decimals")
        return value

    @model_validator(mode="after")
    def _auto_rules(self) -> RolloutSection:
        if self.mode == "auto":
            self.check_auto()
        return self

    @property
    def weight(self) -> float:
        """The configured candidate weight (0 when the config leaves it out)."""
        return self.candidate_weight or 0.0

    @property
    def shadow(self) -> float:
        """The configured shadow percent (0 when the config leaves it out)."""
        return self.shadow_percent or 0.0


class IngressConfig(_Strict):
    """The whole ``user_config`` of the ``Ingress`` deployment."""

    rollout: RolloutSection = Field(default_factory=RolloutSection, description="the rollout section")
    contract: ContractSection = Field(default_factory=ContractSection, description="the output contract")
    segments: SegmentsSection = Field(default_factory=SegmentsSection, description="segment labels")
    fields: tuple[FieldSpec, ...] = Field((), description="answer fields compared per arm (mean or rate)")
    admin_token_file: str | None = Field(
        None,
        min_length=1,
        description="file holding the admin bearer token (read when an admin call arrives); default: "
        "$CANARY_ADMIN_TOKEN, else .canary/admin-token, created by `make up`. A named file that is missing "
        "or empty disables admin actions (503), it never opens them",
    )

    @field_validator("fields")
    @classmethod
    def _unique_names(cls, fields: tuple[FieldSpec, ...]) -> tuple[FieldSpec, ...]:
        names = [f.name for f in fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"field names must be unique, {duplicates} repeat")
        return fields

    @model_validator(mode="after")
    def _policy_names(self) -> IngressConfig:
        """Gate and segment names refer to `fields:` and `segments:`, so they are checked here."""
        problems = [
            p.under("rollout") for p in self.rollout.gate_problems(tuple(f.name for f in self.fields))
        ]
        labels = [*self.segments.labels, *(["size"] if self.segments.size else [])]
        unknown = sorted(set(self.rollout.judge_segments or ()) - set(labels))
        if unknown:
            problems.append(
                KeyProblem(
                    ("rollout", "judge_segments"),
                    f"{unknown} are not segment labels{did_you_mean(unknown[0], labels)}",
                    f"some of {labels}",
                )
            )
        if problems:
            raise key_problems_error(problems)
        return self


class Batching(_Strict):
    max_batch_size: int = Field(32, ge=1, le=4096, description="largest batch handed to the model, 1–4096")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=10, description="seconds to wait for a batch to fill, 0–10"
    )


MODEL_MAX_ONGOING_REQUESTS = 64  # a model arm's default; its batches never exceed it (see rollout.configfile)


class ModelServerConfig(_Strict):
    """The ``user_config`` of a ``ModelServer`` deployment (``stable`` or ``candidate``)."""

    batching: Batching = Field(default_factory=Batching, description="dynamic batching")
    faults: FaultConfig | None = Field(
        None, description="fault injection for tests and demos; off when absent"
    )
    max_consecutive_ooms: int = Field(
        3,
        ge=1,
        le=1000,
        description="consecutive OOM batches after which the replica reports itself unhealthy",
    )
    report_interval_s: float = Field(
        1.0, ge=0.1, le=60, description="seconds between GPU samples and reports to the rollout controller"
    )


class ArmArgs(_Strict):
    artifact: str = Field(min_length=1, description="path of a model artifact directory holding model.json")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses the GPU Ray assigned when there is one, else the CPU"
    )


class AppArgs(_Strict):
    """The application's ``args`` (changing them restarts every replica: keep rollout values out)."""

    stable: ArmArgs = Field(description="the model in production")
    candidate: ArmArgs = Field(description="the model being rolled out")


def validate_section(model: type[ModelT], data: Any, *, source: str, prefix: str = "") -> ModelT:
    """Validates ``data`` against ``model``; raises `InvalidConfigError` naming every bad key.

    Example:
        >>> validate_section(IngressConfig, {"rollout": {"candidate_weight": 120}}, source="user_config")
        Traceback (most recent call last):
        ...
        serving.errors.InvalidConfigError: invalid user_config:
          - `rollout.candidate_weight`: Input should be less than or equal to 100 (got 120); expected ...
    """
    booleans = booleans_for_numbers(model, data)
    try:
        parsed = model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise InvalidConfigError(source, config_errors(model, exc, booleans, prefix)) from None
    if booleans:
        raise InvalidConfigError(source, config_errors(model, None, booleans, prefix))
    return parsed
