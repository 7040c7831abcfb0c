"""The ``canary`` command as a user types it, against fake HTTP servers on loopback (a Ray dashboard, the
Ingress) and fakes at our own seams (`serve_deploy`, `LocalHead.start`, `wait_for`): no Ray is started.
Every failure ends in one line naming the problem, never a traceback."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout import cli
from rollout.cluster import LocalHead
from rollout.operate import next_config

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
SERVE_TRACEBACK = """Traceback (most recent call last):
  File "/venv/bin/serve", line 8, in <module>
    sys.exit(cli())
  File "/venv/lib/python3.11/site-packages/ray/dashboard/modules/dashboard_sdk.py", line 342, in _do_request
    raise AuthenticationError(formatted_error)
ray.exceptions.AuthenticationError: Authentication required: {"error": "Unauthorized"}

Token authentication is enabled but no authentication token was found. Ensure that the token ...
"""


class FakeHTTP:
    """Answers each path from ``routes`` (status, JSON body) and records what it was sent."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, Any]] = {}
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                fake.seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
                status, payload = fake.routes.get(self.path, (404, {"error": "not_found"}))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def paths(self) -> list[str]:
        return [path for _, path, _, _ in self.seen]


@pytest.fixture
def fake() -> Iterator[FakeHTTP]:
    server = FakeHTTP()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def closed_port() -> str:
    """An address where nothing listens (a port just bound and released)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ray/auth_token of the machine's
    for name in ("RAY_DASHBOARD_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CANARY_ADMIN_TOKEN", "test-admin-token")  # never the project's token file


class FakeDeploy:
    """Stands in for `serve_deploy` (a `serve deploy` subprocess) and records where it was sent."""

    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.returncode, self.stderr = returncode, stderr

    def __call__(self, config: str, address: str | None = None) -> subprocess.CompletedProcess[str]:
        self.calls.append((config, address))
        return subprocess.CompletedProcess(["serve", "deploy"], self.returncode, "", self.stderr)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write_config(path: Path, edit: Any = None) -> Path:
    config = yaml.safe_load(DEMO.read_text())
    if edit is not None:
        edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# 1. The dashboard address: --address, else $RAY_DASHBOARD_ADDRESS (as `serve deploy` does), else local.


def test_deploy_goes_to_ray_dashboard_address_when_no_address_is_given(fake, monkeypatch, capsys):
    fake.routes["/api/version"] = (200, {"ray_version": "2.60.0"})
    deploy = FakeDeploy()
    monkeypatch.setattr(cli, "serve_deploy", deploy)
    monkeypatch.setenv("RAY_DASHBOARD_ADDRESS", fake.url)
    code, _, err = run(["deploy", str(DEMO)], capsys)
    assert code == 0, err
    assert deploy.calls == [(str(DEMO), fake.url)]
    assert fake.paths() == ["/api/version"]


def test_an_explicit_address_wins_over_the_environment(fake, monkeypatch, capsys):
    fake.routes["/api/version"] = (200, {"ray_version": "2.60.0"})
    deploy = FakeDeploy()
    monkeypatch.setattr(cli, "serve_deploy", deploy)
    monkeypatch.setenv("RAY_DASHBOARD_ADDRESS", "http://prod-head.invalid:8265")
    assert run(["deploy", str(DEMO), "--address", fake.url], capsys)[0] == 0
    assert deploy.calls == [(str(DEMO), fake.url)]


def test_canary_down_shuts_down_serve_on_the_local_head_not_on_ray_dashboard_address(tmp_path, monkeypatch):
    import os

    ran: list[list[str]] = []
    signals: list[int] = []
    state = tmp_path / "state"
    state.mkdir()
    (state / "ray-head.pid").write_text(f"{os.getpid()}\n")
    head = LocalHead(state_dir=state, proc=tmp_path / "no-proc")
    monkeypatch.setenv("RAY_DASHBOARD_ADDRESS", "http://prod-head.invalid:8265")
    monkeypatch.setattr("rollout.cluster.subprocess.run", lambda cmd, **kw: ran.append(cmd))
    monkeypatch.setattr("rollout.cluster.os.kill", lambda pid, sig: signals.append(sig))
    monkeypatch.setattr("rollout.cluster.os.killpg", lambda pid, sig: signals.append(sig))
    head.stop(timeout_s=0)
    assert ran and ran[0][1:] == ["shutdown", "--yes", "--address", "http://127.0.0.1:8265"]


# 3. A dashboard that does not answer, or refuses us, is one clear line before `serve deploy` runs.


def test_deploy_with_no_dashboard_says_so_in_one_line_and_runs_nothing(closed_port, monkeypatch, capsys):
    deploy = FakeDeploy()
    monkeypatch.setattr(cli, "serve_deploy", deploy)
    code, _, err = run(["deploy", str(DEMO), "--address", closed_port], capsys)
    assert code == 1 and deploy.calls == []
    assert err.strip() == f"error: no Ray dashboard answers at {closed_port}; start one with `canary up`"


@pytest.mark.parametrize("status", [401, 403])
def test_deploy_refused_by_the_dashboard_names_the_auth_settings(status, fake, monkeypatch, capsys):
    fake.routes["/api/version"] = (status, {"error": "Unauthorized"})
    deploy = FakeDeploy()
    monkeypatch.setattr(cli, "serve_deploy", deploy)
    code, _, err = run(["deploy", str(DEMO), "--address", fake.url], capsys)
    assert code == 1 and deploy.calls == []
    assert len(err.strip().splitlines()) == 1
    assert f"answered {status}" in err and "RAY_AUTH_TOKEN" in err and "RAY_AUTH_MODE" in err


def test_a_failed_serve_deploy_prints_its_error_line_not_the_traceback(fake, monkeypatch, capsys):
    fake.routes["/api/version"] = (200, {"ray_version": "2.60.0"})
    monkeypatch.setattr(cli, "serve_deploy", FakeDeploy(returncode=1, stderr=SERVE_TRACEBACK))
    code, _, err = run(["deploy", str(DEMO), "--address", fake.url], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "error: `serve deploy` failed: ray.exceptions.AuthenticationError: Authentication required: "
        '{"error": "Unauthorized"} (--verbose shows Ray\'s full output)'
    ]
    code, _, err = run(["deploy", str(DEMO), "--address", fake.url, "--verbose"], capsys)
    assert code == 1 and err == SERVE_TRACEBACK


# 5. finalize: the canary app anywhere in the list, default args, and nothing half-done.


def _promoted(fake: FakeHTTP, acknowledge: int = 200) -> None:
    fake.routes["/rollout"] = (200, {"outcome": "promoted", "stage": "promoted", "rollout_key": "k"})
    fake.routes["/admin/acknowledge"] = (acknowledge, {"events": [], "state": {"stage": "closed"}})


def test_finalize_writes_the_next_config_when_the_canary_app_is_not_the_first(fake, tmp_path, capsys):
    _promoted(fake)
    source = write_config(
        tmp_path / "two.yaml",
        lambda c: c["applications"].insert(
            0, {"name": "other", "route_prefix": "/o", "import_path": "m:app"}
        ),
    )
    code, out, err = run(["finalize", "--url", fake.url, str(source)], capsys)
    assert code == 0, err
    written = yaml.safe_load((tmp_path / "two.next.yaml").read_text())
    assert written["applications"][0] == {"name": "other", "route_prefix": "/o", "import_path": "m:app"}
    assert written["applications"][1]["args"]["stable"] == {"artifact": "models/artifacts/fraud-v2"}
    assert "stable := {'artifact': 'models/artifacts/fraud-v2'}" in out
    assert "/admin/acknowledge" in fake.paths()


def test_finalize_accepts_a_config_relying_on_the_default_args(fake, tmp_path, capsys):
    _promoted(fake)
    source = write_config(tmp_path / "noargs.yaml", lambda c: c["applications"][0].pop("args"))
    assert run(["validate", str(source)], capsys)[0] == 0
    code, _, err = run(["finalize", "--url", fake.url, str(source)], capsys)
    assert code == 0, err
    args = yaml.safe_load((tmp_path / "noargs.next.yaml").read_text())["applications"][0]["args"]
    assert args == {
        "stable": {"artifact": "models/artifacts/fraud-v2"},
        "candidate": {"artifact": "models/artifacts/fraud-v2"},
    }


def test_finalize_writes_nothing_when_the_acknowledgement_is_refused(fake, tmp_path, capsys):
    _promoted(fake, acknowledge=503)
    source = write_config(tmp_path / "demo.yaml")
    code, _, err = run(["finalize", "--url", fake.url, str(source)], capsys)
    assert code == 1 and "acknowledge refused (503)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.yaml"]


def test_next_config_recognises_ray_s_dotted_spelling_of_the_builder():
    config = yaml.safe_load(DEMO.read_text())
    config["applications"][0]["import_path"] = "serving.app.build"
    args = next_config(config, {})["applications"][0]["args"]
    assert args["stable"] == args["candidate"] == {"artifact": "models/artifacts/fraud-v2"}


# 7. File-system errors and time-outs are one line naming the path or the command.


def test_report_into_a_path_under_a_regular_file_is_a_bad_argument(fake, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"
    code, _, err = run(["report", "--url", fake.url, "--out", str(out)], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: --out {out}: cannot create that directory (Not a directory)"]
    assert fake.seen == []  # refused before the report was asked for


def test_an_admin_token_file_that_cannot_be_created_is_one_line_naming_it(
    fake, tmp_path, monkeypatch, capsys
):
    from serving import admintoken

    (tmp_path / "afile").write_text("x")
    monkeypatch.delenv("CANARY_ADMIN_TOKEN")
    monkeypatch.setattr(admintoken, "DEFAULT_TOKEN_FILE", tmp_path / "afile" / "admin-token")
    code, _, err = run(["pause", "--reason", "x", "--url", fake.url], capsys)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'afile' / 'admin-token'}: cannot read or create")
    assert "CANARY_ADMIN_TOKEN" in line


def test_a_serve_deploy_that_times_out_is_one_line(fake, monkeypatch, capsys):
    fake.routes["/api/version"] = (200, {"ray_version": "2.60.0"})

    def too_slow(config: str, address: str | None = None) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(["/venv/bin/serve", "deploy", "--address", address, config], 300)

    monkeypatch.setattr(cli, "serve_deploy", too_slow)
    code, _, err = run(["deploy", str(DEMO), "--address", fake.url], capsys)
    assert code == 1 and err.strip() == "error: `serve deploy` did not finish within 300s"


# 8 and 9. `canary up` writes the admin token and waits on the config's own address.


class FakeUp:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.waited: list[str] = []
        monkeypatch.setattr(LocalHead, "start", lambda self, num_cpus=None: True)
        monkeypatch.setattr(cli, "serve_deploy", FakeDeploy())
        monkeypatch.setattr(cli, "wait_for", lambda url, seconds: self.waited.append(url) or True)


def test_up_writes_the_admin_token_and_says_where_it_is(tmp_path, monkeypatch, capsys):
    from serving import admintoken

    token_file = tmp_path / "state" / "admin-token"
    monkeypatch.delenv("CANARY_ADMIN_TOKEN")
    monkeypatch.setattr(admintoken, "DEFAULT_TOKEN_FILE", token_file)
    FakeUp(monkeypatch)
    code, out, err = run(["up", "--config", str(DEMO)], capsys)
    assert code == 0, err
    assert len(token_file.read_text().strip()) >= 32 and token_file.stat().st_mode & 0o777 == 0o600
    assert f"admin token (for `canary pause`, `promote`, ... and the dashboard): {token_file}" in out


def test_up_waits_on_the_host_port_and_route_prefix_of_the_config(tmp_path, monkeypatch, capsys):
    def elsewhere(config: dict[str, Any]) -> None:
        config["http_options"] = {"host": "0.0.0.0", "port": 18123}
        config["applications"][0]["route_prefix"] = "/fraud"

    up = FakeUp(monkeypatch)
    code, out, err = run(["up", "--config", str(write_config(tmp_path / "c.yaml", elsewhere))], capsys)
    assert code == 0, err
    assert up.waited == ["http://127.0.0.1:18123/fraud/healthz"]
    assert "canary-serve is up: http://127.0.0.1:18123/fraud/predict" in out
