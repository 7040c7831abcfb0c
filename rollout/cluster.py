"""A local Ray head for `canary up` / `canary down`, and `serve deploy` with the auth detail handled.

`canary up` starts ``ray start --head --block`` in its own process group and records that PID with the
process's start time; `canary down` stops exactly that process (which stops the Ray processes it started),
never another Ray on the machine, nor a process that got the same PID later.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

STATE_DIR = Path(".canary")
DASHBOARD_URL = "http://127.0.0.1:8265"
SERVE_URL = "http://127.0.0.1:8000"


class ClusterError(RuntimeError):
    """The local head could not be started, reached or stopped; the message says what to do."""


def _auth_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


@dataclass(frozen=True)
class RayAuthToken:
    """Ray's cluster token and where it was found (for messages; the value is never printed)."""

    value: str
    source: str


def ray_auth_token() -> RayAuthToken | None:
    """The token Ray 2.60's own clients send, found where its ``AuthenticationTokenLoader`` looks, in the same
    order: ``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH`` names (set but unreadable or empty
    means no token, as in Ray: no fall-back), else ``~/.ray/auth_token``. None when there is none."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return RayAuthToken(token, "$RAY_AUTH_TOKEN")
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    path, source = (Path(named), f"$RAY_AUTH_TOKEN_PATH ({named})") if named else (_auth_token_file(), "")
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return RayAuthToken(token, source or str(path)) if token else None


def ray_cli_env() -> dict[str, str]:
    """The environment for Ray's CLIs. Ray 2.60 writes ``~/.ray/auth_token`` on first start; after that CLI
    calls to a running cluster need ``RAY_AUTH_MODE=token``, which users should never have to know. The mode
    is set whenever Ray would find a token (`ray_auth_token`), unless the user chose a mode."""
    env = dict(os.environ)
    # Ray's workers import our packages by name: a PYTHONPATH entry holding a module of the same name (a
    # `rollout.py` next to a caller's script) would be imported instead, so such entries are left out.
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not _shadows(Path(p))]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        env.pop("PYTHONPATH", None)
    if ray_auth_token() is not None:
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
    """The bearer token Ray's dashboard asks for when the cluster runs with token authentication: the same
    token, from the same source, that Ray's CLIs run with `ray_cli_env` send."""
    token = ray_auth_token()
    if token is None or ray_cli_env().get("RAY_AUTH_MODE") != "token":
        return {}
    return {"Authorization": f"Bearer {token.value}"}


def dashboard_address(address: str | None = None) -> str:
    """The Ray dashboard a command talks to, chosen as Ray's own ``serve deploy`` does: the ``--address``
    given, else ``$RAY_DASHBOARD_ADDRESS``, else the local head's (read when called, not at import)."""
    return address or os.environ.get("RAY_DASHBOARD_ADDRESS") or DASHBOARD_URL


def check_dashboard(address: str) -> None:
    """Raises `ClusterError` with one line saying what to do unless a Ray dashboard answers at ``address``
    (``GET /api/version``, with the headers Ray's CLIs would send)."""
    url = address if "://" in address else f"http://{address}"  # Ray's clients take a bare host:port too
    status = http_status(f"{url.rstrip('/')}/api/version", timeout=5.0, headers=dashboard_headers())
    if status == 200:
        return
    if status == 0:
        raise ClusterError(f"no Ray dashboard answers at {address}; start one with `canary up`")
    if status in (401, 403):
        raise ClusterError(f"the Ray dashboard at {address} answered {status}: {_auth_hint()}")
    raise ClusterError(f"{address} answered {status} to GET /api/version; is it a Ray dashboard?")


def _auth_hint() -> str:
    token = ray_auth_token()
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token is None and named:
        return (
            f"$RAY_AUTH_TOKEN_PATH names {named}, which is missing or empty; point it at this cluster's token"
        )
    if token is None:
        return (
            "it needs this cluster's token: put it in ~/.ray/auth_token, name its file in "
            "$RAY_AUTH_TOKEN_PATH or set $RAY_AUTH_TOKEN (RAY_AUTH_MODE=token is then set for you)"
        )
    if not dashboard_headers():
        return (
            f"the token from {token.source} was not sent because RAY_AUTH_MODE is "
            f"{os.environ.get('RAY_AUTH_MODE')!r}; set RAY_AUTH_MODE=token"
        )
    return (
        f"it refused the token from {token.source}; give this cluster's token in $RAY_AUTH_TOKEN, "
        "$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
    )


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
    """The Ray head that `canary up` started, found through its PID file under ``.canary/``.

    The file holds the PID and the process's start time (from ``/proc/<pid>/stat``), so a PID that now
    belongs to another process (reused after the head died or the machine restarted) is never taken for
    the head, never signalled, and the stale file is removed. ``proc`` is passed in for tests."""

    state_dir: Path = STATE_DIR
    proc: Path = field(default=Path("/proc"))

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "ray-head.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "ray-head.log"

    def pid(self) -> int | None:
        """The head's PID while the process `canary up` started runs; None otherwise."""
        try:
            recorded = self.pid_file.read_text().split()
            pid = int(recorded[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, but another user's: not a head we started
            problem: str | None = "it belongs to another user"
        else:
            problem = self._not_our_head(pid, recorded[1] if len(recorded) > 1 else None)
        if problem is None:
            return pid
        self.pid_file.unlink(missing_ok=True)
        print(
            f"removed the stale {self.pid_file}: PID {pid} is no longer the Ray head `canary up` started "
            f"({problem})",
            file=sys.stderr,
        )
        return None

    def _not_our_head(self, pid: int, started_at: str | None) -> str | None:
        """Why the live process ``pid`` is not the head this directory started, or None when it is."""
        if not self.proc.is_dir():  # no /proc (not Linux): the PID is all there is to go by
            return None
        if started_at is not None:
            now = self._start_time(pid)
            return None if now in (started_at, None) else "it started after the head did"
        try:  # a PID file written before start times were recorded: the command line must be Ray's head
            argv = (self.proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        is_head = b"start" in argv and b"--head" in argv and any(a.endswith(b"ray") for a in argv)
        return None if is_head else "it is not `ray start --head`"

    def _start_time(self, pid: int) -> str | None:
        """The process's start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``)."""
        try:
            stat = (self.proc / str(pid) / "stat").read_text()
            return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name start at field 3
        except (OSError, IndexError):
            return None

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
        self.pid_file.write_text(f"{process.pid} {self._start_time(process.pid) or ''}".strip() + "\n")
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
            # The local head, explicitly: `serve shutdown` alone would follow $RAY_DASHBOARD_ADDRESS.
            [_cli("serve"), "shutdown", "--yes", "--address", DASHBOARD_URL],
            env=ray_cli_env(),
            timeout=120,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # `ray start --block` stops the processes it started on SIGTERM
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() == pid:
            time.sleep(0.5)
        if self.pid() == pid:
            with contextlib.suppress(ProcessLookupError):
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


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b[^:\s]*:")


def last_error_line(output: str) -> str:
    """The line of a failed Ray CLI's output that says what went wrong: the last exception line of a
    traceback (``ray.exceptions.AuthenticationError: ...``), else the last non-empty line."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else "(no output)"


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
