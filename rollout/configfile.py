"""Checks a whole Serve config file before it is sent, so a bad key fails at deploy time, not in a replica."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from serving.app import check_args
from serving.config import IngressConfig, ModelServerConfig, validate_section
from serving.errors import ConfigError, InvalidConfigError

CANARY_IMPORT_PATH = "serving.app:build"
_USER_CONFIG_SCHEMAS = {"Ingress": IngressConfig, "stable": ModelServerConfig, "candidate": ModelServerConfig}


def load_config(path: str | Path) -> dict[str, Any]:
    """Reads a Serve config YAML; raises `InvalidConfigError` when it is not a YAML mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidConfigError(
            str(path), [ConfigError("(file)", f"cannot read it: {exc.strerror}")]
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidConfigError(str(path), [ConfigError("(file)", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise InvalidConfigError(str(path), [ConfigError("(root)", "must be a mapping with `applications:`")])
    return data


def check_config(config: dict[str, Any], source: str = "config") -> None:
    """Validates a Serve config as Ray Serve would, plus every canary-serve section in it.

    Raises:
        InvalidConfigError: listing every bad key with its dotted path, the problem and what is expected.
    """
    from ray.serve.schema import ServeDeploySchema

    errors: list[ConfigError] = []
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            key = ".".join(str(p) for p in err["loc"])
            errors.append(ConfigError(key, str(err["msg"]).removeprefix("Value error, ")))
        raise InvalidConfigError(source, errors) from None
    except Exception as exc:  # some of Ray's validators assume mappings and crash on other shapes
        raise InvalidConfigError(
            source, [ConfigError(_shape_error_key(config), f"Ray Serve cannot read it ({exc})", "a mapping")]
        ) from None
    for i, app in enumerate(config.get("applications") or []):
        if app.get("import_path") != CANARY_IMPORT_PATH:
            continue
        where = f"applications[{i}]"
        try:
            check_args(app.get("args"))
        except InvalidConfigError as exc:
            errors += [_prefixed(f"{where}.", e) for e in exc.errors]
        for dep in app.get("deployments") or []:
            name = dep.get("name")
            schema = _USER_CONFIG_SCHEMAS.get(name)
            if schema is None:
                errors.append(
                    ConfigError(
                        f"{where}.deployments.name",
                        "unknown deployment",
                        f"one of {sorted(_USER_CONFIG_SCHEMAS)}",
                        name,
                    )
                )
                continue
            if "user_config" not in dep:
                continue
            try:
                validate_section(schema, dep["user_config"], source=f"{name} user_config")
            except InvalidConfigError as exc:
                errors += [_prefixed(f"{where}.deployments[{name}].user_config.", e) for e in exc.errors]
    if errors:
        raise InvalidConfigError(source, errors)


def _shape_error_key(config: Any) -> str:
    """The first place where a mapping was expected and something else was found (for errors Ray's own
    validators raise instead of naming the key)."""
    apps = config.get("applications") if isinstance(config, dict) else None
    for i, app in enumerate(apps if isinstance(apps, list) else []):
        if not isinstance(app, dict):
            return f"applications[{i}]"
        for j, dep in enumerate(app.get("deployments") or []):
            if not isinstance(dep, dict):
                return f"applications[{i}].deployments[{j}]"
            for key, value in dep.items():
                if key.endswith("_config") and key != "user_config" and not isinstance(value, dict | None):
                    return f"applications[{i}].deployments[{j}].{key}"
    return "(root)"


def _prefixed(prefix: str, error: ConfigError) -> ConfigError:
    return ConfigError(prefix + error.key, error.problem, error.expected, error.got)
