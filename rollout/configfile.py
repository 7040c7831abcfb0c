"""Checks a whole Serve config file before it is sent, so a bad key fails at deploy time, not in a replica."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from serving.config import (
    MODEL_MAX_ONGOING_REQUESTS,
    AppArgs,
    IngressConfig,
    ModelServerConfig,
    validate_section,
)
from serving.errors import ConfigError, InvalidConfigError

CANARY_IMPORT_PATH = "serving.app:build"
# Ray Serve resolves ``module:attr`` and ``module.attr`` alike (``ray._common.utils.import_module_and_attr``).
_CANARY_IMPORT_PATHS = frozenset({CANARY_IMPORT_PATH, "serving.app.build"})
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


def is_canary_app(app: Any) -> bool:
    """Whether an entry of ``applications:`` is canary-serve's: its ``import_path`` names `serving.app.build`
    in either of Ray's spellings, surrounding whitespace aside (which `check_config` reports)."""
    path = app.get("import_path") if isinstance(app, dict) else None
    return isinstance(path, str) and path.strip() in _CANARY_IMPORT_PATHS


def serve_url(config: dict[str, Any], source: str = "config") -> str:
    """The base URL of the canary application on this machine: ``http_options`` host and port (Ray's
    defaults 127.0.0.1:8000; a wildcard host is reached on loopback) and the app's ``route_prefix``.

    Example:
        ``http_options: {port: 8100}`` and ``route_prefix: /fraud`` give ``http://127.0.0.1:8100/fraud``.
    """
    http = config.get("http_options") or {}
    host = str(http.get("host") or "127.0.0.1")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    prefix = "/"
    for i, app in enumerate(config.get("applications") or []):
        if is_canary_app(app):
            prefix = app.get("route_prefix", "/")
            if prefix is None:
                error = ConfigError(
                    f"applications[{i}].route_prefix", "null: the app has no HTTP route", "a path"
                )
                raise InvalidConfigError(source, [error])
            break
    return f"http://{host}:{http.get('port') or 8000}{str(prefix).rstrip('/')}"


def check_config(config: dict[str, Any], source: str = "config", *, artifacts: bool = True) -> None:
    """Validates a Serve config as Ray Serve would, plus every canary-serve section in it. With
    ``artifacts=False`` the application's ``args`` are checked for their shape only, not that the artifacts
    exist here and match their checksums (they may live only on a remote cluster's nodes, whose application
    build checks them).

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
    from serving.app import DEFAULT_ARGS, check_args  # Ray and torch: only when a config is checked

    for i, app in enumerate(config.get("applications") or []):
        if not is_canary_app(app):
            continue
        where = f"applications[{i}]"
        if app["import_path"] != app["import_path"].strip():
            errors.append(
                ConfigError(
                    f"{where}.import_path",
                    "surrounding whitespace: Ray Serve would look for a module or attribute with it",
                    CANARY_IMPORT_PATH,
                    app["import_path"],
                )
            )
        try:
            if artifacts:
                check_args(app.get("args"))
            else:
                validate_section(
                    AppArgs, app.get("args") or DEFAULT_ARGS, source="application args", prefix="args"
                )
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
                section = validate_section(schema, dep["user_config"], source=f"{name} user_config")
            except InvalidConfigError as exc:
                errors += [_prefixed(f"{where}.deployments[{name}].user_config.", e) for e in exc.errors]
                continue
            if isinstance(section, ModelServerConfig):
                errors += _batch_fits(f"{where}.deployments[{name}]", dep, section)
    if errors:
        raise InvalidConfigError(source, errors)


def _batch_fits(where: str, deployment: dict[str, Any], section: ModelServerConfig) -> list[ConfigError]:
    """A model arm's largest batch must fit in the requests one replica holds at once: Serve hands a replica
    at most ``max_ongoing_requests`` (64 unless set), so a larger ``max_batch_size`` is never reached and a
    GPU runs smaller batches than the config says (Ray only logs a warning once the replica runs)."""
    holds = deployment.get("max_ongoing_requests", MODEL_MAX_ONGOING_REQUESTS)
    batch = section.batching.max_batch_size
    if not isinstance(holds, int) or holds < 0 or batch <= holds:
        return []  # Ray's schema judged max_ongoing_requests itself
    return [
        ConfigError(
            f"{where}.user_config.batching.max_batch_size",
            f"larger than the deployment's max_ongoing_requests ({holds}): a replica never holds more than "
            f"{holds} requests, so no batch would be larger",
            f"at most {holds}, or max_ongoing_requests raised to at least {batch} (twice that lets the next "
            "batch gather while one runs)",
            batch,
        )
    ]


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
