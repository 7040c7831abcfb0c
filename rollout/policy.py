"""The rollout policy: stages, promotion gates and who answers for the rollout, written before it starts and
validated when the config is loaded (pydantic, ``extra="forbid"``). Pure: no Ray, no clock.

It lives in the Ingress ``user_config`` under ``rollout:`` next to the routing values (`serving.config`), so
one ``serve deploy`` changes both, and an invalid policy is refused before it replaces the running one.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from rollout.judge import GateSpec
from rollout.notify import CheckSpec, WebhookSpec
from rollout.store_url import EXPECTED as STORE_URL_EXPECTED
from rollout.store_url import is_url as is_store_url
from rollout.store_url import parse_store_location
from rollout.store_url import redact as redact_store_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class KeyProblem:
    """One invalid key found by a validator that sees more than that key (a gate's name, rule and threshold;
    a name defined in another section), so that the error is reported under the key itself.

    Attributes:
        loc: where the key is, below the model whose validator found it, e.g. ``("promotion_gates", "p95")``.
        problem: what is wrong, e.g. "unknown gate 'p95'".
        expected: what the key takes, e.g. "one of ['latency_p95_ms', ...]".
        got: the value given, when there is one worth quoting.
    """

    loc: tuple[str, ...]
    problem: str
    expected: str = ""
    got: object = None

    def under(self, *parents: str) -> KeyProblem:
        return replace(self, loc=(*parents, *self.loc))

    def __str__(self) -> str:
        got = f" (got {self.got!r})" if self.got is not None else ""
        expected = f"; expected {self.expected}" if self.expected else ""
        return f"{'.'.join(self.loc)}: {self.problem}{got}{expected}"


KEY_PROBLEMS = "key_problems"


def key_problems_error(problems: list[KeyProblem]) -> PydanticCustomError:
    """A ValueError that pydantic reports at the validator's location; `serving.config.validate_section`
    turns it into one error per `KeyProblem`, each under its own key."""
    return PydanticCustomError(
        KEY_PROBLEMS, "{summary}", {"summary": "; ".join(map(str, problems)), "problems": tuple(problems)}
    )


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """``" (did you mean 'x'?)"`` naming the closest of ``choices`` to a misspelt ``word``, else ``""``."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class StageSpec(_Strict):
    """One stage: a shadow stage (``shadow_percent``, weight 0) or a canary stage (``weight``)."""

    shadow_percent: float | None = Field(
        None, gt=0, le=100, description="percent of stable's requests mirrored to the candidate (0, 100]"
    )
    weight: float | None = Field(
        None, gt=0, le=100, description="percent of live traffic served by the candidate (0, 100]"
    )
    min_duration_s: float = Field(
        300, ge=0, le=7 * 86400, description="seconds the stage lasts at least before a promotion"
    )
    min_requests: int = Field(
        500,
        ge=0,
        le=10**9,
        description="candidate requests (mirrored ones at a shadow stage) the stage needs before a promotion",
    )
    approval: bool = Field(
        False, description="wait for `canary promote` (awaiting_approval) before entering this stage"
    )
    check: CheckSpec | None = Field(
        None, description="an external check that must answer pass before promoting past this stage"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> StageSpec:
        if (self.shadow_percent is None) == (self.weight is None):
            raise ValueError(
                "a stage has exactly one of `shadow_percent` (a shadow stage) or `weight` (a canary stage), "
                f"got shadow_percent={self.shadow_percent!r} weight={self.weight!r}"
            )
        if self.weight is not None and abs(self.weight * 100 - round(self.weight * 100)) > 1e-6:
            raise ValueError(f"weight resolution is 0.01 percent, got {self.weight!r}")
        return self

    @property
    def is_shadow(self) -> bool:
        return self.shadow_percent is not None

    @property
    def name(self) -> str:
        """``shadow 100%`` or ``5%``: how the stage reads in status, events and the report."""
        if self.shadow_percent is not None:
            return f"shadow {self.shadow_percent:g}%"
        return f"{self.weight:g}%"


def _stage(min_duration_s: float, min_requests: int, **kind: float) -> StageSpec:
    return StageSpec(min_duration_s=min_duration_s, min_requests=min_requests, **kind)


# Realistic defaults for production traffic (a demo shortens them in its own config).
DEFAULT_STAGES: tuple[StageSpec, ...] = (
    _stage(900, 2000, shadow_percent=50),
    _stage(900, 500, weight=1),
    _stage(1800, 2000, weight=5),
    _stage(1800, 5000, weight=25),
    _stage(1800, 10000, weight=50),
    _stage(3600, 20000, weight=100),
)

# Gate name → (metric, rules it accepts, quantile). Names not listed here are answer fields (`fields:`) or
# feedback metrics (`feedback_metrics:`).
_LATENCY_RULES = ("maximum_regression_percent", "maximum")
_BUILTIN_GATES: dict[str, tuple[str, tuple[str, ...], float | None]] = {
    "latency_p50_ms": ("latency", _LATENCY_RULES, 0.5),
    "latency_p95_ms": ("latency", _LATENCY_RULES, 0.95),
    "latency_p99_ms": ("latency", _LATENCY_RULES, 0.99),
    "error_rate": ("error_rate", ("maximum",), None),
    "timeout_rate": ("timeout_rate", ("maximum",), None),
    "fallback_rate": ("fallback_rate", ("maximum",), None),
    "schema_validation_pass_rate": ("schema_pass_rate", ("minimum",), None),
    "shadow_agreement_rate": ("shadow_agreement", ("minimum",), None),
    "gpu_oom_events": ("oom_events", ("maximum",), None),
    "replica_restarts": ("restarts", ("maximum",), None),
    "gpu_memory": ("gpu_memory_bytes", ("maximum_regression_percent", "maximum_bytes"), None),
}
_MEAN_RULES = ("minimum_delta", "maximum_delta", "minimum", "maximum")
_RATE_GATES = {
    "error_rate",
    "timeout_rate",
    "fallback_rate",
    "schema_validation_pass_rate",
    "shadow_agreement_rate",
}
KNOWN_GATES = tuple(_BUILTIN_GATES)


class StoreSection(_Strict):
    """Where the controller keeps state, decisions, windows and feedback: a SQLite file (WAL) on one machine,
    a PostgreSQL database on a cluster (where a controller restarted on another node must find its store).

    ``url`` supersedes ``path``; giving both is an error. When ``url`` is given, ``path`` holds the same URL,
    so that ``path`` always says what the controller opens (callers written before ``url`` read ``path``).
    A password in the URL is masked whenever the section is dumped; better, leave it out and give it to the
    controller's processes as ``PGPASSWORD`` or in a ``pgpass`` file.
    """

    path: str = Field(
        ".canary/rollout.db",
        min_length=1,
        description="SQLite file; a relative path is under the project root. A change replaces the "
        "controller, which resumes from the new store",
    )
    url: str | None = Field(
        None,
        description=f"the store as a URL, superseding `path`: {STORE_URL_EXPECTED}. A change replaces the "
        "controller, which resumes from the new store",
    )
    windows_retention_s: float = Field(7 * 86400, gt=0, description="seconds per-window aggregates are kept")
    request_log_retention_s: float = Field(
        86400, gt=0, description="seconds a request id stays joinable by POST /feedback"
    )
    max_logged_requests: int = Field(
        1_000_000, ge=1000, description="request ids kept at most (oldest dropped first)"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_location(cls, data: Any) -> Any:
        # "before", on the whole section: a failure quotes no raw input, which may hold a password
        if not isinstance(data, dict):
            return data
        url, path = data.get("url"), data.get("path")
        if url is None:
            if isinstance(path, str) and is_store_url(path):
                raise ValueError(
                    f"`store.path` is a file, got the URL {redact_store_url(path)!r}; "
                    "give a URL as `store.url` instead"
                )
            return data
        if not isinstance(url, str):
            raise ValueError(f"`store.url` must be a string ({STORE_URL_EXPECTED}), got {type(url).__name__}")
        try:
            parse_store_location(url)
            if not is_store_url(url):
                raise ValueError(f"{url!r} is not a URL; expected {STORE_URL_EXPECTED}")
        except ValueError as exc:
            raise ValueError(f"`store.url`: {exc}") from None
        if path is not None and path != url:  # a dump of a section with `url` carries both, equal
            raise ValueError(
                "give the store as `store.url` or as `store.path`, not both: `url` "
                f"({redact_store_url(url)!r}) supersedes the SQLite file `path` "
                f"({redact_store_url(str(path))!r}); remove one"
            )
        return {**data, "path": url}

    @field_serializer("path", "url")
    def _masked(self, value: str | None) -> str | None:
        return None if value is None else redact_store_url(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_store_url(value) if name in ("path", "url") and value else value

    @property
    def location(self) -> str:
        """What the controller opens: the URL, else the SQLite file."""
        return self.url or self.path


class RolloutPolicy(_Strict):
    """Everything about the automatic rollout; mixed into the ``rollout:`` section (see `serving.config`)."""

    rollout_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="names the rollout together with both model versions; a new identity starts over",
    )
    owner: str | None = Field(None, description="who answers for this rollout (required in auto mode)")
    rollback_condition: str | None = Field(
        None,
        description="the rollback condition in words, written before the rollout (required in auto mode)",
    )
    impact: Literal["low", "high"] = Field(
        "low", description="'high': the rollout waits for an acknowledged post-rollout review before closing"
    )
    change: Literal["minor", "major"] = Field("minor", description="'major' changes must start in shadow")
    stages: tuple[StageSpec, ...] = Field(DEFAULT_STAGES, min_length=1, description="the stages, in order")
    judge_segments: tuple[str, ...] | None = Field(
        None, description="segment labels judged per value (default: every configured label)"
    )
    alpha: float = Field(0.05, gt=0, le=0.5, description="false-rollback budget over all gates and segments")
    baseline: Literal["all", "matched"] = Field(
        "all",
        description="what the comparative gates (regression %, deltas) compare the candidate with: 'all' of "
        "stable's answers since the rollout started, or a sample 'matched' to the candidate's pace in time, "
        "which a load that drifts over the rollout cannot bias",
    )
    promotion_gates: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="gate name → {rule: threshold}, e.g. latency_p95_ms: {maximum_regression_percent: 10}",
    )
    feedback_metrics: tuple[str, ...] = Field(
        ("human_review_score",),
        description="metrics POST /feedback accepts; values are scores in [0, 1]",
    )
    webhooks: tuple[WebhookSpec, ...] = Field((), description="HTTP POST of every transition and decision")
    judge_interval_s: float = Field(1.0, ge=0.1, le=60, description="seconds between judgements")
    store: StoreSection = Field(
        default_factory=StoreSection,
        description="the controller's store: a SQLite file as `path`, or a `url` (sqlite:/// or postgresql://)",
    )

    @field_validator("owner", "rollback_condition")
    @classmethod
    def _non_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank; write it out")
        return value

    @field_validator("feedback_metrics")
    @classmethod
    def _feedback_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        clash = sorted(set(names) & set(_BUILTIN_GATES))
        if clash:
            raise ValueError(f"{clash} are built-in gate names, not feedback metrics")
        return names

    @field_validator("promotion_gates")
    @classmethod
    def _gate_shapes(cls, gates: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        # Only built-in gates here: any other name is a field or a feedback metric, known once `fields:` is
        # (`gate_problems`), so that a misspelt built-in name is reported as an unknown gate, not a bad rule.
        problems = [
            problem
            for name, rules in gates.items()
            if name in _BUILTIN_GATES
            and (problem := _rule_problem(name, rules, _BUILTIN_GATES[name][1])) is not None
        ]
        if problems:
            raise key_problems_error(problems)
        return gates

    def check_auto(self) -> None:
        """The rules an automatic rollout must keep; raises ValueError naming the key and the fix."""
        missing = [k for k in ("owner", "rollback_condition") if not getattr(self, k)]
        if missing:
            raise ValueError(
                f"mode auto needs {' and '.join(missing)}: who answers for it and when to roll back"
            )
        if not self.promotion_gates:
            raise ValueError(
                "mode auto needs promotion_gates, e.g. {latency_p95_ms: {maximum_regression_percent: 10}}"
            )
        kinds = ["shadow" if s.is_shadow else "canary" for s in self.stages]
        first_canary = kinds.index("canary") if "canary" in kinds else len(kinds)
        if "shadow" in kinds[first_canary:]:
            raise ValueError("stages: shadow stages come before every canary stage")
        if self.change == "major" and not self.stages[0].is_shadow:
            raise ValueError(
                "stages: a `major` change must start with a shadow stage, e.g. {shadow_percent: 100, "
                "min_duration_s: 600, min_requests: 2000}"
            )
        weights = [s.weight for s in self.stages if s.weight is not None]
        if not weights or weights[-1] != 100:
            raise ValueError(f"stages: the last stage must be weight 100 to promote, got weights {weights}")
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError(f"stages: canary weights must increase, got {weights}")
        if len(weights) < 2:
            raise ValueError(
                "stages: 100% comes only after at least one canary stage below 100, e.g. weight 5"
            )

    def gate_problems(self, fields: tuple[str, ...] = ()) -> list[KeyProblem]:
        """What is wrong with the gates that are not built in, given the answer fields' names: names that are
        neither a field nor a feedback metric (with the closest valid name), and their rules."""
        known = [*KNOWN_GATES, *fields, *self.feedback_metrics]
        problems = []
        for name, rules in self.promotion_gates.items():
            if name in _BUILTIN_GATES:
                continue
            if name not in known:
                problems.append(
                    KeyProblem(
                        ("promotion_gates", name),
                        f"unknown gate {name!r}{did_you_mean(name, known)}",
                        f"one of {known} (built-in gates, names in `fields:` and `feedback_metrics:`)",
                    )
                )
            elif (problem := _rule_problem(name, rules, _MEAN_RULES)) is not None:
                problems.append(problem.under("promotion_gates"))
        return problems

    def gate_specs(self, fields: tuple[str, ...] = ()) -> tuple[GateSpec, ...]:
        """The judge's view of `promotion_gates`; raises ValueError (a `key_problems_error`) naming every gate
        that is neither built in, a field nor a feedback metric."""
        problems = self.gate_problems(fields)
        if problems:
            raise key_problems_error(problems)
        specs = []
        for name, rules in self.promotion_gates.items():
            ((rule, threshold),) = rules.items()
            builtin = _BUILTIN_GATES.get(name)
            if builtin:
                metric, _, quantile = builtin
                judge_rule = "maximum" if rule == "maximum_bytes" else rule
                specs.append(GateSpec(name, metric, judge_rule, float(threshold), quantile))  # type: ignore[arg-type]
            elif name in self.feedback_metrics:
                specs.append(GateSpec(name, "feedback", rule, float(threshold), key=name))  # type: ignore[arg-type]
            else:
                specs.append(GateSpec(name, "field", rule, float(threshold), key=name))  # type: ignore[arg-type]
        return tuple(specs)


def _rule_problem(name: str, rules: dict[str, float], allowed: tuple[str, ...]) -> KeyProblem | None:
    """What is wrong with a gate's ``{rule: threshold}``, given the rules its name takes (None: nothing)."""
    if len(rules) != 1:
        return KeyProblem(
            (name,), f"give exactly one rule, got {sorted(rules) or 'none'}", f"one of {list(allowed)}"
        )
    ((rule, threshold),) = rules.items()
    if rule not in allowed:
        return KeyProblem(
            (name, rule), f"unknown rule {rule!r}{did_you_mean(rule, allowed)}", f"one of {list(allowed)}"
        )
    problem = _threshold_problem(name, rule, float(threshold))
    return KeyProblem((name, rule), problem, got=threshold) if problem else None


def _threshold_problem(name: str, rule: str, value: float) -> str | None:
    if value != value:  # NaN
        return "a number is needed"
    if rule == "maximum_regression_percent" and not 0 <= value <= 1000:
        return "a percent in [0, 1000] is needed"
    if name in _RATE_GATES and not 0 <= value <= 1:
        return "a rate in [0, 1] is needed (0.01 = 1%)"
    if name in ("gpu_oom_events", "replica_restarts") and (value < 0 or value != int(value)):
        return "a whole count ≥ 0 is needed"
    if rule in ("maximum", "maximum_bytes") and name.startswith(("latency", "gpu_memory")) and value <= 0:
        return "a positive ceiling is needed"
    return None


def rollout_key(app: str, rollout_id: str | None, versions: dict[str, Any]) -> str:
    """The identity of a rollout: deploying the same key again resumes it, a new key starts over.

    Example:
        >>> rollout_key("canary", "spring", {"stable": "fraud-v1", "candidate": "fraud-v2"})
        'canary/spring/fraud-v1->fraud-v2'
    """
    return f"{app}/{rollout_id or '-'}/{versions['stable']}->{versions['candidate']}"
