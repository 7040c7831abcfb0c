"""HTTP for the Ingress: the FastAPI app its routes hang on (errors answered as JSON, never a stack trace),
bounded body reading, JSON parsing and error answers. No Ray."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("ray.serve")

app = FastAPI(title="canary-serve", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": error, "detail": exc.detail}, status_code=exc.status_code)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
    return JSONResponse({"error": "invalid_input", "detail": detail}, status_code=422)


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in the Ingress")
    return JSONResponse(
        {"error": "internal", "detail": "unexpected error; see the Ingress log"}, status_code=500
    )


class HTTPProblem(Exception):
    """An answer other than 200 that names the problem: carried up to the route and rendered as JSON.

    Attributes:
        status: HTTP status code (4xx for the client's fault, 5xx for ours or the model's).
        error: a short machine-readable code, e.g. ``"body_too_large"``.
        detail: human-readable text, or a list of ``{"field", "message"}`` for invalid input.
    """

    def __init__(self, status: int, error: str, detail: Any) -> None:
        self.status = status
        self.error = error
        self.detail = detail
        super().__init__(f"{status} {error}: {detail}")

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, "detail": self.detail}, status_code=self.status, headers=headers
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(
            413, "body_too_large", f"request body is {declared} bytes; the limit is {limit} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Parses a JSON body; malformed or empty bodies become 400 naming where parsing failed."""
    if not body.strip():
        raise HTTPProblem(400, "malformed_json", "request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise HTTPProblem(400, "malformed_json", "request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise HTTPProblem(
            400,
            "malformed_json",
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None


def controller_silent() -> JSONResponse:
    """503 for a rollout controller that did not answer in time."""
    return HTTPProblem(503, "controller_unavailable", "the rollout controller did not answer").response()
