"""Model artifacts on disk: a directory with ``model.json`` (the metadata sidecar) and the weights file.

Layout::

    models/artifacts/fraud-v2/
        model.json    # ArtifactMetadata, including the sha256 of the weights
        weights.pt    # a torch state_dict, loaded with weights_only=True

`validate_artifact` is the cheap deploy-time check (no torch load); `load_artifact` does everything it
does and then builds the module and loads the weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.architectures import ARCHITECTURES, build_module
from models.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    ChecksumMismatchError,
    UnknownArchitectureError,
)

METADATA_FILE = "model.json"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class InputSchema(BaseModel):
    """What a model takes as input: a fixed-length feature vector or a bounded text."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["features", "text"] = Field(description="`features`: a list of numbers; `text`: a string.")
    length: int | None = Field(default=None, ge=1, description="Number of features (kind=features only).")
    max_chars: int | None = Field(default=None, ge=1, description="Longest accepted text (kind=text only).")

    @model_validator(mode="after")
    def _fields_match_kind(self) -> InputSchema:
        if self.kind == "features":
            if self.length is None:
                raise ValueError("input_schema.length is required for kind='features', e.g. 30")
            if self.max_chars is not None:
                raise ValueError(
                    f"input_schema.max_chars applies to kind='text' only; remove it (got {self.max_chars})"
                )
        else:
            if self.max_chars is None:
                raise ValueError("input_schema.max_chars is required for kind='text', e.g. 2000")
            if self.length is not None:
                raise ValueError(
                    f"input_schema.length applies to kind='features' only; remove it (got {self.length})"
                )
        return self


class ArtifactMetadata(BaseModel):
    """The ``model.json`` sidecar of an artifact."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(min_length=1, description="Model family, e.g. `fraud`.")
    version: str = Field(min_length=1, description="Unique version id, e.g. `fraud-v2`; shown in responses.")
    architecture: str = Field(description="A key of `models.architectures.ARCHITECTURES`.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the architecture.")
    input_schema: InputSchema
    labels: list[str] = Field(min_length=2, description="Output labels, in logit order.")
    positive_label: str | None = Field(
        default=None, description="For binary models: the label predicted when its probability >= threshold."
    )
    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Decision threshold for positive_label."
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lowercase hex sha256 of the weights file.")
    weights_file: str = Field(default="weights.pt", min_length=1, description="Weights file, relative.")
    created_by: str = Field(description="What produced the artifact, e.g. `models.train`.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Offline evaluation metrics.")

    @model_validator(mode="after")
    def _labels_consistent(self) -> ArtifactMetadata:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        if self.positive_label is not None:
            if self.positive_label not in self.labels:
                raise ValueError(
                    f"positive_label {self.positive_label!r} must be one of labels {self.labels}"
                )
            if len(self.labels) != 2:
                raise ValueError(
                    f"positive_label needs exactly 2 labels, got {len(self.labels)}; "
                    "remove it for multi-class"
                )
        if Path(self.weights_file).is_absolute() or ".." in Path(self.weights_file).parts:
            raise ValueError(
                f"weights_file must be a plain path inside the artifact, got {self.weights_file!r}"
            )
        return self


@dataclass(frozen=True)
class LoadedModel:
    """An artifact loaded into memory: its metadata and the module in eval mode (on CPU unless moved)."""

    metadata: ArtifactMetadata
    module: torch.nn.Module
    path: Path


def resolve_artifact_path(path: str | Path) -> Path:
    """Find an artifact directory.

    Absolute paths are used as they are. A relative path is tried against the current working
    directory, then against the project root (the directory that holds the ``models`` package), so
    ``models/artifacts/fraud-v1`` works from anywhere. A path to the ``model.json`` file itself is
    accepted too.

    Args:
        path: the artifact directory, e.g. ``"models/artifacts/fraud-v1"``.

    Returns:
        The absolute artifact directory.

    Raises:
        ArtifactNotFoundError: no ``model.json`` at any tried location; the message lists them.
    """
    given = Path(path).expanduser()
    if given.name == METADATA_FILE:
        given = given.parent
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, PROJECT_ROOT / given]
    for candidate in candidates:
        if (candidate / METADATA_FILE).is_file():
            return candidate.resolve()
    tried = list(dict.fromkeys(str(c / METADATA_FILE) for c in candidates))
    raise ArtifactNotFoundError(str(path), tried=tried)


def load_metadata(path: str | Path) -> ArtifactMetadata:
    """Read and validate an artifact's ``model.json``.

    Args:
        path: the artifact directory (resolved as in `resolve_artifact_path`).

    Raises:
        ArtifactNotFoundError: the artifact does not exist.
        ArtifactError: the sidecar is not JSON or does not match `ArtifactMetadata`; ``key`` is the
            dotted field at fault.
    """
    directory = resolve_artifact_path(path)
    sidecar = directory / METADATA_FILE
    try:
        raw = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            str(sidecar),
            METADATA_FILE,
            "a readable JSON object",
            got=str(exc),
            fix="fix the JSON syntax, or re-create the artifact with `python -m models.train`",
        ) from exc
    try:
        return ArtifactMetadata.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(part) for part in first["loc"]) or "<root>"
        more = exc.error_count() - 1
        expected = first["msg"][0].lower() + first["msg"][1:] if first["msg"] else "valid"
        if more:
            expected += f" (and {more} more problem{'s' if more > 1 else ''})"
        got = first.get("input") if first["type"] != "missing" else None
        raise ArtifactError(
            str(sidecar),
            key,
            f"valid: {expected}",
            got=got,
            fix=f"edit `{key}` in {METADATA_FILE} (see models.artifact.ArtifactMetadata for the schema)",
        ) from exc


def sha256_file(path: str | Path) -> str:
    """Return the lowercase hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check(directory: Path, metadata: ArtifactMetadata) -> Path:
    weights = directory / metadata.weights_file
    if not weights.is_file():
        raise ArtifactError(
            str(directory),
            "weights_file",
            f"an existing file inside the artifact ({weights} is missing)",
            got=metadata.weights_file,
            fix="restore the weights file, or re-create the artifact",
        )
    actual = sha256_file(weights)
    if actual != metadata.sha256:
        raise ChecksumMismatchError(
            str(directory),
            weights_file=metadata.weights_file,
            expected_sha256=metadata.sha256,
            actual_sha256=actual,
        )
    if metadata.architecture not in ARCHITECTURES:
        raise UnknownArchitectureError(
            str(directory), architecture=metadata.architecture, known=list(ARCHITECTURES)
        )
    return weights


def validate_artifact(path: str | Path) -> ArtifactMetadata:
    """Check an artifact without loading torch weights (cheap enough for deploy time).

    Checks that it exists, that ``model.json`` is valid, that the weights' sha256 matches and that
    the architecture is registered.

    Args:
        path: the artifact directory (resolved as in `resolve_artifact_path`).

    Returns:
        The artifact's metadata.

    Raises:
        ArtifactNotFoundError, ChecksumMismatchError, UnknownArchitectureError, ArtifactError.
    """
    directory = resolve_artifact_path(path)
    metadata = load_metadata(directory)
    _check(directory, metadata)
    return metadata


def load_artifact(path: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Validate an artifact, build its module and load its weights.

    Args:
        path: the artifact directory (resolved as in `resolve_artifact_path`).
        map_location: where ``torch.load`` puts the tensors.

    Returns:
        The `LoadedModel`, its module in eval mode.

    Raises:
        ArtifactNotFoundError, ChecksumMismatchError, UnknownArchitectureError: as in `validate_artifact`.
        ArtifactError: ``params`` do not fit the architecture (key ``params``) or the weights do not fit
            the module (key ``weights_file``).

    Example:
        >>> loaded = load_artifact("models/artifacts/fraud-v1")
        >>> loaded.metadata.version
        'fraud-v1'
    """
    directory = resolve_artifact_path(path)
    metadata = load_metadata(directory)
    weights = _check(directory, metadata)
    try:
        module = build_module(metadata.architecture, metadata.params)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            str(directory),
            "params",
            f"keyword arguments accepted by {metadata.architecture!r}",
            got=str(exc),
            fix=f"edit `params` in {METADATA_FILE}",
        ) from exc
    state = torch.load(weights, map_location=map_location, weights_only=True)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(
            str(directory),
            "weights_file",
            f"a state_dict matching {metadata.architecture} with the given params",
            got=str(exc).splitlines()[0],
            fix="check that `params` match the ones the weights were trained with",
        ) from exc
    module.eval()
    return LoadedModel(metadata=metadata, module=module, path=directory)


def save_artifact(
    directory: str | Path,
    module: torch.nn.Module,
    *,
    name: str,
    version: str,
    architecture: str,
    params: dict[str, Any],
    input_schema: InputSchema | dict[str, Any],
    labels: list[str],
    positive_label: str | None = None,
    threshold: float = 0.5,
    metrics: dict[str, float] | None = None,
    created_by: str = "models.train",
) -> ArtifactMetadata:
    """Write ``weights.pt`` (the module's state_dict) and ``model.json`` into ``directory``.

    The metadata is validated before anything is written; the directory is created if needed.

    Returns:
        The metadata written, including the weights' sha256.
    """
    directory = Path(directory)
    if architecture not in ARCHITECTURES:
        raise UnknownArchitectureError(str(directory), architecture=architecture, known=list(ARCHITECTURES))
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "architecture": architecture,
        "params": params,
        "input_schema": input_schema,
        "labels": labels,
        "positive_label": positive_label,
        "threshold": threshold,
        "metrics": metrics or {},
        "created_by": created_by,
    }
    try:
        ArtifactMetadata.model_validate({**fields, "sha256": "0" * 64})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ArtifactError(str(directory), key, f"valid: {first['msg']}", fix="pass a valid value") from exc
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "weights.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    # Serialise to memory first: the archive's inner name then does not depend on the file name, and
    # the weights file is replaced atomically so a reader never sees half of it.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = directory / ".weights.pt.tmp"
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, weights)
    metadata = ArtifactMetadata.model_validate({**fields, "sha256": sha256_file(weights)})
    text = json.dumps(metadata.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    (directory / METADATA_FILE).write_text(text, encoding="utf-8")
    return metadata
