"""Errors raised by the model layer. `ModelError` is the root; each subclass carries its fields."""

from __future__ import annotations

from typing import Any


class ModelError(Exception):
    """Root of every error the model layer raises on purpose."""


class ArtifactError(ModelError):
    """A model artifact on disk is missing, malformed or inconsistent.

    Attributes:
        path: the artifact directory (or file) at fault.
        key: the metadata/config key at fault, e.g. ``sha256``, ``architecture``, ``artifact``.
        expected: what a valid value looks like.
        got: the value that was found, if any.
        fix: what to do about it.
    """

    def __init__(
        self,
        path: str,
        key: str,
        expected: str,
        *,
        got: object = None,
        fix: str = "re-create the artifact with `python -m models.train`",
    ) -> None:
        self.path = str(path)
        self.key = key
        self.expected = expected
        self.got = got
        self.fix = fix
        shown = "" if got is None else f", got {got!r}"
        super().__init__(f"invalid model artifact {self.path}: `{key}` must be {expected}{shown}. Fix: {fix}")


class ChecksumMismatchError(ArtifactError):
    """The weights file's sha256 differs from the one recorded in ``model.json``.

    Attributes:
        expected_sha256: the digest recorded in the metadata.
        actual_sha256: the digest of the weights file on disk.
    """

    def __init__(self, path: str, *, weights_file: str, expected_sha256: str, actual_sha256: str) -> None:
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256
        self.weights_file = weights_file
        super().__init__(
            path,
            "sha256",
            f"the sha256 of {weights_file!r} ({actual_sha256})",
            got=expected_sha256,
            fix=(
                "the weights were modified or truncated after the artifact was written; restore them, or "
                "re-create the artifact with `python -m models.train` so that model.json records "
                "the new digest"
            ),
        )


class UnknownArchitectureError(ArtifactError):
    """``model.json`` names an architecture that is not registered in ``models.architectures``.

    Attributes:
        architecture: the name that was asked for.
        known: the registered names.
    """

    def __init__(self, path: str, *, architecture: str, known: list[str]) -> None:
        self.architecture = architecture
        self.known = sorted(known)
        super().__init__(
            path,
            "architecture",
            f"one of {self.known}",
            got=architecture,
            fix=(
                "set `architecture` in model.json to a registered name, "
                "or register it in models/architectures.py"
            ),
        )


class ArtifactNotFoundError(ArtifactError):
    """No ``model.json`` exists at any of the locations an artifact path resolves to.

    Attributes:
        tried: the absolute locations that were looked at.
    """

    def __init__(self, path: str, *, tried: list[str]) -> None:
        self.tried = tried
        super().__init__(
            path,
            "artifact",
            "a directory containing model.json (tried: " + ", ".join(tried) + ")",
            fix=(
                "check the path, or run `python -m models.train` "
                "to create the artifacts under models/artifacts"
            ),
        )


class InvalidInputError(ModelError):
    """A request body does not match the model's input schema (the HTTP layer answers 422).

    Attributes:
        errors: one ``{"field": "features.3", "message": "..."}`` per problem, ``field`` a dotted path.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(
            f"invalid request body ({len(errors)} problem{'s' if len(errors) != 1 else ''}): {detail}"
        )


class InjectedFaultError(ModelError):
    """A failure raised on purpose by the fault injector (see ``models.faults``).

    Attributes:
        kind: which fault fired, e.g. ``error`` or ``oom``.
    """

    def __init__(self, kind: str = "error", message: str | None = None) -> None:
        self.kind = kind
        super().__init__(
            message or f"injected fault: {kind} (configured by the deployment's `faults` settings)"
        )
