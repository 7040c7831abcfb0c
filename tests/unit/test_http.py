"""Body limits and JSON parsing of the Ingress, through a real Starlette app (no Ray)."""

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.http import HTTPProblem, parse_json, read_body


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
