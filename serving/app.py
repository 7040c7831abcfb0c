"""`build`: the application builder every config names as ``import_path: serving.app:build``.

It checks both artifacts (present, checksum, known architecture, same input schema) before any replica
starts, so a bad artifact fails the deploy with a message naming the key while the running app keeps serving.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from models.artifact import ArtifactMetadata, resolve_artifact_path, validate_artifact
from models.errors import ArtifactError
from models.server import ModelServer
from serving.config import AppArgs, validate_section
from serving.errors import ConfigError, InvalidConfigError
from serving.ingress import Ingress

DEFAULT_ARGS: dict[str, Any] = {
    "stable": {"artifact": "models/artifacts/fraud-v1"},
    "candidate": {"artifact": "models/artifacts/fraud-v2"},
}


def _checked(arm: str, artifact: str) -> tuple[str, ArtifactMetadata]:
    try:
        path = resolve_artifact_path(artifact)
        return str(path), validate_artifact(path)
    except ArtifactError as exc:
        raise InvalidConfigError(
            "application args",
            [ConfigError(f"args.{arm}.{exc.key}", str(exc), exc.expected, artifact)],
        ) from None


def check_args(args: dict[str, Any] | None) -> tuple[AppArgs, dict[str, tuple[str, ArtifactMetadata]]]:
    """Validates the application's ``args`` and both artifacts; raises `InvalidConfigError` naming the key.

    Returns:
        The parsed args and, per arm, the resolved artifact path and its metadata.
    """
    parsed = validate_section(AppArgs, args or DEFAULT_ARGS, source="application args", prefix="args")
    checked = {
        "stable": _checked("stable", parsed.stable.artifact),
        "candidate": _checked("candidate", parsed.candidate.artifact),
    }
    stable_meta, candidate_meta = checked["stable"][1], checked["candidate"][1]
    if stable_meta.input_schema != candidate_meta.input_schema:
        raise InvalidConfigError(
            "application args",
            [
                ConfigError(
                    "args.candidate.artifact",
                    "the candidate takes different input than stable, so it cannot take stable's traffic",
                    f"input schema {stable_meta.input_schema.model_dump()}",
                    candidate_meta.input_schema.model_dump(),
                )
            ],
        )
    return parsed, checked


def build(args: dict[str, Any] | None = None) -> Application:
    """Builds the canary application: ``Ingress`` in front of the ``stable`` and ``candidate`` ModelServers.

    Args:
        args: ``{"stable": {"artifact": ..., "device": "auto"}, "candidate": {...}}``; defaults to the
            bundled fraud-v1 (stable) and fraud-v2 (candidate).

    Example:
        ``serve run configs/demo.yaml`` (whose ``import_path`` is ``serving.app:build``).
    """
    parsed, checked = check_args(args)
    (stable_path, stable_meta), (candidate_path, candidate_meta) = checked["stable"], checked["candidate"]
    stable = ModelServer.options(name="stable").bind(stable_path, "stable", parsed.stable.device)
    candidate = ModelServer.options(name="candidate").bind(
        candidate_path, "candidate", parsed.candidate.device
    )
    return Ingress.options(name="Ingress").bind(
        stable,
        candidate,
        stable_meta.input_schema.model_dump(),
        {"stable": stable_meta.version, "candidate": candidate_meta.version},
    )
