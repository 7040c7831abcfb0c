"""HTTP for the Ingress: the FastAPI app its routes hang on (errors answered as JSON, never a stack trace),
the hot route that skips it, bounded body reading, JSON parsing and error answers. No Ray."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from serving.errors import ControllerUnavailableError

logger = logging.getLogger("ray.serve")

# Deeper request bodies are refused: no request this service reads nests more than a few levels, and past a
# few hundred the parser, pydantic and repr run out of Python's recursion limit (a 500 on a 2 kB body).
MAX_JSON_DEPTH = 128

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
    return unexpected_error()


def unexpected_error() -> JSONResponse:
    """500 for an error nobody expected; the stack trace goes to the Ingress log, never to the client."""
    logger.exception("unexpected error in the Ingress")
    return JSONResponse(
        {"error": "internal", "detail": "unexpected error; see the Ingress log"}, status_code=500
    )


def route_path(scope: Scope) -> str:
    """The request's path below the application's route prefix (``root_path``), as Starlette routes it."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


class HotRoute:
    """An ASGI app that answers one method and path with a plain handler and hands everything else (other
    routes, other methods, lifespan) to ``app``.

    The handler gets a Starlette `Request` and returns a `Response`, as a plain Serve deployment's
    ``__call__`` does: FastAPI's routing, dependency solving and middleware stack are skipped, which on the
    prediction route was about a tenth of the Ingress's Python time per request
    (``benchmarks/results/ingress-pyspy-gil-2core-cpu-2026-11-29.md``). An exception the handler lets out is
    answered as ``app`` would answer it: a JSON 500, the trace logged.
    """

    def __init__(
        self, app: FastAPI, method: str, path: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> None:
        self.app = app
        self._method = method
        self._path = path
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != self._method or route_path(scope) != self._path:
            await self.app(scope, receive, send)
            return
        try:
            response = await self._handler(Request(scope, receive, send))
        except Exception:
            response = unexpected_error()
        await response(scope, receive, send)

    def add_exception_handler(self, exc_class: type[Exception], handler: Callable[..., Any]) -> None:
        """Serve registers its own handlers (back-pressure as 503) on the app it is given: they go to
        ``app``."""
        self.app.add_exception_handler(exc_class, handler)

    @property
    def routes(self) -> list[BaseRoute]:
        """``app``'s routes, the hot one among them: Serve names each request's route from the routes of the
        app it is given (replica access log, per-route metrics, the proxy's route patterns)."""
        return self.app.routes

    @property
    def router(self) -> APIRouter:
        return self.app.router


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
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPProblem(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # the client's own doing, and nobody reads the answer: no trace, and not an error of ours
        logger.debug("the client disconnected after %d bytes of its request body", size)
        raise HTTPProblem(
            499, "client_disconnected", "the client disconnected before its body ended"
        ) from None
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Parses a JSON body; malformed, empty or unreadable bodies (nested deeper than `MAX_JSON_DEPTH`, an
    integer past Python's digit limit) become 400 naming what failed."""
    if not body.strip():
        raise HTTPProblem(400, "malformed_json", "request body is empty; send a JSON object")
    try:
        value = json.loads(body)
    except UnicodeDecodeError:
        raise HTTPProblem(400, "malformed_json", "request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise HTTPProblem(
            400,
            "malformed_json",
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # the one other refusal of json.loads: an integer literal too long to convert
        raise HTTPProblem(
            400,
            "malformed_json",
            f"request body has a number of more than {sys.get_int_max_str_digits()} digits",
        ) from None
    # Fewer brackets than the limit cannot nest past it: only a body with many is walked.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise _too_deep()
    return value


def _too_deep() -> HTTPProblem:
    return HTTPProblem(400, "malformed_json", f"request body nests deeper than {MAX_JSON_DEPTH} levels")


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in a decoded JSON value (without recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack and deepest <= MAX_JSON_DEPTH:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def render_json(content: Any) -> bytes:
    """``content`` as `JSONResponse` renders it (strict JSON, UTF-8, compact); raises ``ValueError`` (NaN,
    infinity, a lone surrogate), ``TypeError`` (a value JSON has no form for) or ``RecursionError``."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def unrenderable(content: Any, exc: BaseException) -> str:
    """Why `render_json` refused ``content``, naming the first field at fault where one is found, e.g.
    ``"score: nan is not valid JSON"``."""
    stack: list[tuple[str, Any]] = [("", content)]
    while stack:
        path, node = stack.pop()
        where = path or "(answer)"
        if isinstance(node, float) and not math.isfinite(node):
            return f"{where}: {node} is not valid JSON (strict JSON has no NaN or infinity)"
        if isinstance(node, dict):
            children: Any = node.items()
        elif isinstance(node, list | tuple):
            children = enumerate(node)
        elif node is None or isinstance(node, str | int | float):
            continue
        else:
            return f"{where}: a {type(node).__name__} has no JSON form"
        stack.extend(
            (f"{path}.{key}" if path else str(key), child) for key, child in reversed(list(children))
        )
    return f"(answer): cannot be sent as JSON: {type(exc).__name__}: {exc}"


def controller_silent(exc: BaseException | None = None) -> JSONResponse:
    """503 for a rollout controller that did not answer (in time, restarting, its store not open yet), with
    the reason in one line; 500 for one that raised anything else, a defect, whose traceback goes to the
    Ingress's log, not to the client (a 503 would have a client retry it for ever)."""
    cause = getattr(exc, "cause", None)  # what the controller's method raised, when it raised
    if isinstance(cause, Exception) and not isinstance(cause, TimeoutError | ControllerUnavailableError):
        logger.error("the rollout controller failed: %s", error_line(cause), exc_info=exc)
        return HTTPProblem(
            500,
            "controller_error",
            f"the rollout controller failed: {error_line(cause)} (see the Ingress log)",
        ).response()
    detail = "the rollout controller did not answer"
    if exc is not None:
        detail = f"{detail}: {error_line(exc)}"
    return HTTPProblem(503, "controller_unavailable", detail).response()


def error_line(exc: BaseException) -> str:
    """One line for an operator: the controller's own error when it raised one, not Ray's traceback."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, TimeoutError):
        return "it did not answer in time"
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
