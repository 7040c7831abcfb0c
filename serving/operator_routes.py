"""The operators' routes of the Ingress: admin actions, the post-rollout report, `/metrics`, the
dashboard and its series, and the OpenAPI document.

`OperatorRoutes` is a mixin of `serving.ingress.Ingress` (Serve builds a deployment's routes from every class
in its MRO); it uses the Ingress's config, controller handle, flush and routing state, named below.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from models.artifact import InputSchema
from serving.admintoken import TOKEN_ENV
from serving.config import IngressConfig
from serving.dashboard import asset
from serving.http import HTTPProblem, app, controller_silent, parse_json, read_body
from serving.openapi import document
from serving.operators import ACTIONS, admin_token, check_bearer, parse_action, token_from_file


class OperatorRoutes:
    """Routes for operators and their tools; every admin action needs the bearer token."""

    # provided by the Ingress
    _config: IngressConfig
    _controller: Any
    _admin_token: str | None
    _input_schema: InputSchema

    if TYPE_CHECKING:

        def _ensure_tasks(self) -> None: ...

        async def _flush(self) -> None: ...

        def _rollout_state(self) -> dict[str, Any]: ...

    def _check_admin(self, request: Request) -> None:
        """401/403 unless the request carries the admin token; 503 when a configured token file is missing
        or empty (admin actions are then disabled, never open)."""
        path = self._config.admin_token_file
        if path is not None and not os.environ.get(TOKEN_ENV, "").strip():
            token = token_from_file(path)
            if token is None:
                raise HTTPProblem(
                    503, "admin_disabled", f"admin actions are off: no token in {path!r} (admin_token_file)"
                )
        else:
            if self._admin_token is None:
                self._admin_token = admin_token()
            token = self._admin_token
        check_bearer(request.headers.get("authorization"), token)

    @app.post("/admin/{action}")
    async def admin(self, action: str, request: Request) -> JSONResponse:
        """Operator actions with a bearer token: pause, resume, promote, rollback, set-weight, acknowledge.
        Each needs ``{"reason": ...}`` (and ``"actor"``; ``"weight"`` for set-weight) and is recorded."""
        return await self._act(action, request)

    @app.post("/rollout/{action}")
    async def rollout_action(self, action: str, request: Request) -> JSONResponse:
        """The same actions under ``/rollout``: POST /rollout/pause, /resume, /promote, /rollback."""
        return await self._act(action, request)

    @app.put("/rollout/weight")
    async def rollout_weight(self, request: Request) -> JSONResponse:
        """``{"weight", "reason"}``: set the candidate's weight (the admin action set-weight)."""
        return await self._act("set-weight", request)

    async def _act(self, action: str, request: Request) -> JSONResponse:
        try:
            self._check_admin(request)
            if action not in ACTIONS:
                raise HTTPProblem(
                    404, "unknown_action", f"unknown action {action!r}; expected one of {list(ACTIONS)}"
                )
            actor, reason, weight = parse_action(action, parse_json(await read_body(request, 64 * 1024)))
            if self._controller is None:
                raise HTTPProblem(503, "controller_unavailable", "no rollout controller yet")
            status, result = await asyncio.wait_for(
                self._controller.act.remote(action.replace("-", "_"), actor, reason, weight), 10
            )
        except HTTPProblem as problem:
            return problem.response()
        except Exception as exc:  # no answer in time, or the controller is restarting
            return controller_silent(exc)
        return JSONResponse(result, status_code=status)

    @app.get("/admin/report")
    async def admin_report(self, request: Request) -> JSONResponse:
        """The post-rollout report as ``{markdown, html, images: {name: base64}}``."""
        try:
            self._check_admin(request)
            if self._controller is None:
                raise HTTPProblem(503, "controller_unavailable", "no rollout controller yet")
            status, report = await asyncio.wait_for(self._controller.report.remote(), 60)
        except HTTPProblem as problem:
            return problem.response()
        except Exception as exc:  # no answer in time, or the controller is restarting
            return controller_silent(exc)
        if status != 200:
            return JSONResponse(report, status_code=status)
        return JSONResponse(
            {
                "markdown": report["markdown"],
                "html": report["html"],
                "images": {name: base64.b64encode(data).decode() for name, data in report["images"].items()},
            }
        )

    @app.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus text: stable and candidate side by side, merged over replicas (one scrape target)."""
        self._ensure_tasks()
        await self._flush()
        try:
            text = await asyncio.wait_for(self._controller.metrics.remote(self._rollout_state()), 10)
        except Exception as exc:
            return controller_silent(exc)
        return Response(content=text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/rollout/series")
    async def rollout_series(self) -> JSONResponse:
        """Each arm's requests, latency quantiles and error rate over time (the dashboard's charts)."""
        self._ensure_tasks()
        try:
            points = await asyncio.wait_for(self._controller.series.remote(), 10)
        except Exception as exc:
            return controller_silent(exc)
        return JSONResponse({"points": points})

    @app.get("/dashboard")
    async def dashboard(self) -> Response:
        """One page, stable and candidate side by side, live (see serving/static)."""
        return self._asset("index.html")

    @app.get("/dashboard/{name}")
    async def dashboard_asset(self, name: str) -> Response:
        return self._asset(name)

    def _asset(self, name: str) -> Response:
        found = asset(name)
        if found is None:
            return HTTPProblem(404, "not_found", f"no dashboard file {name!r}").response()
        body, media_type = found
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/openapi.json")
    async def openapi(self) -> JSONResponse:
        """This Ingress's HTTP surface (OpenAPI 3.0), with the model's input length."""
        schema = self._input_schema
        return JSONResponse(document(schema.length if schema.kind == "features" else None))
