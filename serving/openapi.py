"""The Ingress's HTTP surface as an OpenAPI 3.0 document, served at ``GET /openapi.json``: for client
generators, for people, and for the fuzzing test (schemathesis) that drives every route from it. Written by
hand because the Ingress reads its bodies itself (bounded, with errors that name the field), so FastAPI's
generated document would describe no request body at all.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "the problem, named",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {}},
            }
        }
    },
}
_JSON = {"description": "JSON", "content": {"application/json": {"schema": {"type": "object"}}}}
_ADMIN_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["reason"],
                "properties": {
                    "reason": {
                        "type": "string",
                        "minLength": 1,
                        "description": "why (kept in the audit trail)",
                    },
                    "actor": {"type": "string", "minLength": 1},
                    "weight": {"type": "number", "minimum": 0, "maximum": 100},
                },
            }
        }
    },
}
_SEGMENT_HEADERS = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string", "maxLength": 200}}
    for name in ("X-Routing-Key", "X-Tenant", "X-Tenant-Tier", "X-Region")
]
_ACTION = {
    "name": "action",
    "in": "path",
    "required": True,
    "schema": {
        "type": "string",
        "enum": ["pause", "resume", "promote", "rollback", "set-weight", "acknowledge"],
    },
}
_ERRORS = {str(code): _ERROR for code in (400, 401, 403, 404, 409, 413, 422, 503, 504)}


def _op(summary: str, *, body: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": _JSON, **_ERRORS}, **extra}
    if body is not None:
        op["requestBody"] = body
    return op


def document(feature_count: int | None = None) -> dict[str, Any]:
    """The OpenAPI document; ``feature_count`` fixes the length of ``features`` for tabular models."""
    features: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
    if feature_count is not None:
        features.update(minItems=feature_count, maxItems=feature_count)
    predict_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"features": features, "text": {"type": "string"}},
                }
            }
        },
    }
    feedback_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["request_id", "metric", "value"],
                    "properties": {
                        "request_id": {"type": "string"},
                        "metric": {"type": "string"},
                        "value": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                }
            }
        },
    }
    admin = {"security": [{"bearer": []}]}
    return {
        "openapi": "3.0.3",
        "info": {"title": "canary-serve Ingress", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/predict": {
                "post": _op(
                    "the chosen arm's answer {prediction, confidence, model_version}",
                    body=predict_body,
                    parameters=[
                        *_SEGMENT_HEADERS,
                        {
                            "name": "X-Request-Id",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                )
            },
            "/feedback": {
                "post": _op(
                    "a score joined to the arm that served a request; one value per request and metric (the"
                    " same again: 200 with duplicate true; another: 409 feedback_exists)",
                    body=feedback_body,
                )
            },
            "/healthz": {"get": _op("200 when stable answers")},
            "/rollout": {"get": _op("stage, weights, gates, events, per-arm and per-segment numbers")},
            "/rollout/series": {"get": _op("each arm's numbers over time")},
            "/rollout/{action}": {
                "post": _op("an operator action", body=_ADMIN_BODY, parameters=[_ACTION], **admin)
            },
            "/rollout/weight": {"put": _op("set the candidate's weight", body=_ADMIN_BODY, **admin)},
            "/admin/{action}": {
                "post": _op("an operator action", body=_ADMIN_BODY, parameters=[_ACTION], **admin)
            },
            "/admin/report": {"get": _op("the post-rollout report", **admin)},
            "/metrics": {
                "get": {"summary": "Prometheus text", "responses": {"200": {"description": "text"}}}
            },
            "/dashboard": {
                "get": {"summary": "the dashboard page", "responses": {"200": {"description": "HTML"}}}
            },
            "/dashboard/{name}": {
                "get": {
                    "summary": "the dashboard's script and stylesheet",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "file"}, "404": _ERROR},
                }
            },
            "/openapi.json": {"get": _op("this document")},
        },
    }
