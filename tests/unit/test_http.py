"""Body limits, JSON parsing and the hot route of the Ingress, through a real Starlette app (no Ray)."""

import asyncio
import functools
import json
import logging

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from serving.http import MAX_JSON_DEPTH, HotRoute, HTTPProblem, parse_json, read_body, route_path


def make_client(limit: int) -> TestClient:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request):
        try:
            return {"parsed": parse_json(await read_body(request, limit))}
        except HTTPProblem as problem:
            return problem.response()

    return TestClient(app)


def test_body_over_the_limit_is_413_whether_declared_or_streamed():
    client = make_client(limit=100)
    response = client.post("/echo", content=b"[" + b"1," * 100 + b"1]")
    assert response.status_code == 413 and response.json()["error"] == "body_too_large"

    def chunks():
        yield b"[1,"
        yield b"2," * 100
        yield b"3]"

    response = client.post("/echo", content=chunks())  # chunked: no Content-Length to trust
    assert response.status_code == 413


def test_malformed_and_empty_json_is_400_with_where_it_failed():
    client = make_client(limit=1000)
    response = client.post("/echo", content=b"{not json")
    assert response.status_code == 400 and "line 1 column 2" in response.json()["detail"]
    assert client.post("/echo", content=b"").status_code == 400
    assert client.post("/echo", content=b"\xff\xfe").status_code == 400


def test_valid_json_within_the_limit_passes():
    assert make_client(limit=1000).post("/echo", json={"a": [1, 2]}).json() == {"parsed": {"a": [1, 2]}}


def make_hot_client(handler) -> tuple[TestClient, list[str]]:
    """A FastAPI app with a slow-path /predict and /other, behind a HotRoute for POST /predict."""
    app = FastAPI()
    seen: list[str] = []

    @app.post("/predict")
    async def slow_predict():
        seen.append("fastapi")
        return {"via": "fastapi"}

    @app.get("/other")
    async def other():
        seen.append("other")
        return {"via": "other"}

    @app.exception_handler(LookupError)
    async def lookup(_: Request, exc: LookupError):
        return JSONResponse({"error": "lookup"}, status_code=418)

    started = []

    @app.on_event("startup")
    async def startup():
        started.append(True)

    hot = HotRoute(app, "POST", "/predict", handler)
    hot.add_exception_handler(KeyError, lambda _r, _e: JSONResponse({"error": "key"}, status_code=409))
    client = TestClient(hot)
    client.__enter__()  # runs the lifespan through the HotRoute
    assert started == [True]
    return client, seen


def test_the_hot_route_answers_its_method_and_path_and_hands_everything_else_to_the_app():
    async def handler(request: Request) -> JSONResponse:
        return JSONResponse({"via": "hot", "body": (await request.json())["x"]})

    client, seen = make_hot_client(handler)
    response = client.post("/predict", json={"x": 7})
    assert response.status_code == 200 and response.json() == {"via": "hot", "body": 7}
    assert seen == []  # FastAPI's own /predict was never reached
    assert client.get("/other").json() == {"via": "other"}
    assert client.get("/predict").status_code == 405  # another method: FastAPI answers as before
    assert client.post("/predict/x").status_code == 404
    assert seen == ["other"]


def test_an_exception_out_of_the_hot_handler_is_a_json_500_without_a_trace(caplog):
    async def handler(request: Request) -> JSONResponse:
        raise RuntimeError("boom at line 3")

    client, _ = make_hot_client(handler)
    response = client.post("/predict", json={})
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "detail": "unexpected error; see the Ingress log"}
    assert "boom" not in response.text and "boom at line 3" in caplog.text


def test_exception_handlers_added_to_the_hot_route_go_to_the_app():
    client, _ = make_hot_client(lambda request: None)
    app = client.app.app
    assert KeyError in app.exception_handlers and LookupError in app.exception_handlers


def test_route_path_strips_the_route_prefix_only_at_a_segment_boundary():
    assert route_path({"path": "/app/predict", "root_path": "/app"}) == "/predict"  # as Serve's proxy sets it
    assert route_path({"path": "/predict", "root_path": ""}) == "/predict"
    assert route_path({"path": "/apple/predict", "root_path": "/app"}) == "/apple/predict"
    assert route_path({"path": "/app", "root_path": "/app"}) == ""


def test_serve_names_the_hot_routes_requests_after_the_apps_routes():
    # Serve reads the route for its access log and per-route metrics from the routes of the app it is given
    from ray.serve._private.thirdparty.get_asgi_route_name import extract_route_patterns, get_asgi_route_name

    client, _ = make_hot_client(lambda request: None)
    hot = client.app
    assert hot.routes is hot.app.routes and hot.router is hot.app.router
    scope = {"type": "http", "method": "POST", "path": "/app/predict", "root_path": "/app", "headers": []}
    assert get_asgi_route_name(hot, scope) == "/app/predict"
    assert {p.path for p in extract_route_patterns(hot)} >= {"/predict", "/other"}


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 20_000 + b"]" * 20_000,  # deeper than the parser's recursion
        b'{"features": ' + b"[" * 990 + b"]" * 990 + b"}",  # parses, then breaks pydantic or repr
        b'{"a": ' + b'{"a": ' * MAX_JSON_DEPTH + b"1" + b"}" * (MAX_JSON_DEPTH + 1),
        b'{"features": [' + b"1" * 5_000 + b"]}",  # an integer over Python's 4,300 digits
    ],
    ids=["20000-deep", "990-deep-in-features", "one-past-the-limit", "5000-digit-integer"],
)
def test_small_hostile_json_bodies_are_400_malformed_json_without_a_trace(body, caplog):
    response = make_client(limit=100_000).post("/echo", content=body)
    assert response.status_code == 400 and response.json()["error"] == "malformed_json"
    assert "sys.set_int_max_str_digits" not in response.text  # advice for the server, not the client
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_json_nested_to_the_limit_or_with_many_shallow_brackets_passes():
    deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(deep) == functools.reduce(lambda inner, _: [inner], range(MAX_JSON_DEPTH - 1), [])
    wide = b"[" + b",".join([b"[[]]"] * 1_000) + b"]"
    assert len(parse_json(wide)) == 1_000


def test_a_client_that_disconnects_mid_body_is_answered_499_and_logged_quietly(caplog):
    async def handler(request: Request) -> JSONResponse:
        try:
            await read_body(request, 1_000)
        except HTTPProblem as problem:
            return problem.response()
        return JSONResponse({})

    messages = iter(
        [{"type": "http.request", "body": b'{"features": [', "more_body": True}, {"type": "http.disconnect"}]
    )
    sent: list[dict] = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "root_path": "", "headers": []}
    asyncio.run(HotRoute(FastAPI(), "POST", "/predict", handler)(scope, receive, send))
    assert sent[0]["status"] == 499
    assert json.loads(sent[1]["body"])["error"] == "client_disconnected"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _raised_in_controller(cause: Exception) -> Exception:
    """What a Ray actor call raises at the caller when the actor's method raised ``cause``."""
    from ray.exceptions import RayTaskError

    return RayTaskError("act", "Traceback (most recent call last):\n  ...", cause).as_instanceof_cause()


def test_a_controller_that_raised_a_defect_is_500_logged_here_and_one_line_to_the_client(caplog):
    from ray.exceptions import ActorDiedError

    from rollout.controller import ControllerStartingError
    from serving.http import controller_silent

    response = controller_silent(_raised_in_controller(KeyError("stage_index")))
    body = json.loads(response.body)
    assert response.status_code == 500 and body["error"] == "controller_error"
    assert "KeyError" in body["detail"] and "Traceback" not in body["detail"]
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    for unavailable in (
        _raised_in_controller(ControllerStartingError("the store is opening")),
        _raised_in_controller(TimeoutError()),
        TimeoutError(),
        ActorDiedError(),
    ):
        response = controller_silent(unavailable)
        assert response.status_code == 503, unavailable
        assert json.loads(response.body)["error"] == "controller_unavailable"
