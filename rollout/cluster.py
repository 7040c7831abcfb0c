"""A local Ray head for `canary up` / `canary down`, and `serve deploy` with the auth detail handled.

`canary up` starts ``ray start --head --block`` in its own process group and records that PID; `canary down`
stops exactly that process (which stops the Ray processes it started), never another Ray on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = Path(".canary")
DASHBOARD_URL = "http://127.0.0.1:8265"
SERVE_URL = "http://127.0.0.1:8000"


class ClusterError(RuntimeError):
    """The local head could not be started, reached or stopped; the message says what to do."""


def _auth_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


def ray_cli_env() -> dict[str, str]:
    """The environment for Ray's CLIs. Ray 2.60 writes ``~/.ray/auth_token`` on first start; after that CLI
    calls to a running cluster need ``RAY_AUTH_MODE=token``, which users should never have to know."""
    env = dict(os.environ)
    # Ray's workers import our packages by name: a PYTHONPATH entry holding a module of the same name (a
    # `rollout.py` next to a caller's script) would be imported instead, so such entries are left out.
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not _shadows(Path(p))]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        env.pop("PYTHONPATH", None)
    if _auth_token_file().exists():
        env.setdefault("RAY_AUTH_MODE", "token")
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _shadows(path: Path) -> bool:
    return any(
        (path / f"{name}.py").exists() or (path / name).is_dir() for name in ("rollout", "serving", "models")
    )


def _cli(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def dashboard_headers() -> dict[str, str]:
    """The bearer token Ray's dashboard asks for when the cluster runs with token authentication."""
    if ray_cli_env().get("RAY_AUTH_MODE") != "token":
        return {}
    try:
        return {"Authorization": f"Bearer {_auth_token_file().read_text().strip()}"}
    except OSError:
        return {}


def http_status(url: str, timeout: float = 3.0, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a GET, or 0 when nothing answers."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def wait_for(url: str, seconds: float, want: int = 200) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if http_status(url) == want:
            return True
        time.sleep(1.0)
    return False


@dataclass
class LocalHead:
    """The Ray head that `canary up` started, found through its PID file under ``.canary/``."""

    state_dir: Path = STATE_DIR

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "ray-head.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "ray-head.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start(self, num_cpus: int | None = None, timeout_s: float = 120) -> bool:
        """Starts a head unless one is reachable; returns whether this call started it."""
        if self.pid() is not None or http_status(f"{DASHBOARD_URL}/api/version", headers=dashboard_headers()):
            return False
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            _cli("ray"),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            f"--num-cpus={num_cpus or os.cpu_count() or 1}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
        ]
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # On SIGTERM Ray 2.60 first drains the node for up to 30 s, for a pod whose replicas should
                # move elsewhere; this head is the whole cluster and `stop` shuts Serve down first, so there
                # is nothing to move and `canary down` need not wait.
                env={**ray_cli_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
                start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(f"`ray start` exited with {process.returncode}; see {self.log_file}")
            if http_status(f"{DASHBOARD_URL}/api/version", headers=dashboard_headers()) == 200:
                return True
            time.sleep(1.0)
        raise ClusterError(f"Ray's dashboard did not answer within {timeout_s:.0f}s; see {self.log_file}")

    def stop(self, timeout_s: float = 90) -> bool:
        """Stops the head this directory started (Serve first, so draining is quick); False if none."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        subprocess.run(
            [_cli("serve"), "shutdown", "--yes"],
            env=ray_cli_env(),
            timeout=120,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        os.kill(pid, signal.SIGTERM)  # `ray start --block` stops the processes it started on SIGTERM
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() == pid:
            time.sleep(0.5)
        if self.pid() == pid:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def serve_deploy(config_path: str | Path, address: str = DASHBOARD_URL) -> subprocess.CompletedProcess[str]:
    """Runs ``serve deploy`` with the right auth environment; returns the finished process."""
    return subprocess.run(
        [_cli("serve"), "deploy", "--address", address, str(config_path)],
        env=ray_cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def serve_status_message(address: str = DASHBOARD_URL) -> str:
    """The application status messages Serve reports (where a failed build explains itself)."""
    try:
        request = urllib.request.Request(f"{address}/api/serve/applications/", headers=dashboard_headers())
        with urllib.request.urlopen(request, timeout=5) as response:
            details = json.load(response)
    except (OSError, ValueError):
        return ""
    messages = []
    for name, app in (details.get("applications") or {}).items():
        if app.get("message"):
            messages.append(f"{name}: {app.get('status')}: {app['message']}")
    return "\n".join(messages)
