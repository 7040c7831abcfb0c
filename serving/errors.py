"""Errors raised by the serving layer. `CanaryServingError` is the root; each subclass carries its fields."""

from __future__ import annotations


class CanaryServingError(Exception):
    """Root of every error the serving layer raises on purpose."""


class ControllerUnavailableError(CanaryServingError, RuntimeError):
    """The rollout controller cannot answer yet (its store is opening, or does not answer): callers retry."""


class ConfigError(CanaryServingError):
    """One invalid key in a deployment's `user_config` or in the application's `args`.

    Attributes:
        key: dotted path of the offending key, e.g. ``rollout.candidate_weight``.
        problem: what is wrong, e.g. "Input should be less than or equal to 100".
        expected: what a valid value looks like, e.g. "percent of traffic for the candidate, 0–100".
        got: the value that was given.
    """

    def __init__(self, key: str, problem: str, expected: str = "", got: object = None) -> None:
        self.key = key
        self.problem = problem
        self.expected = expected
        self.got = got
        super().__init__(self.describe())

    def describe(self) -> str:
        text = f"`{self.key}`: {self.problem}"
        if self.got is not None:
            text += f" (got {self.got!r})"
        if self.expected:
            text += f"; expected {self.expected}"
        return text


class InvalidConfigError(CanaryServingError):
    """A config section with one or more invalid keys; the message lists each on its own line.

    Attributes:
        source: which config, e.g. "Ingress user_config" or "application args".
        errors: the individual `ConfigError`s.
    """

    def __init__(self, source: str, errors: list[ConfigError]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  - {e.describe()}" for e in errors)
        super().__init__(f"invalid {source}:\n{lines}")
