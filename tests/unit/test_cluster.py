"""The auth detail of Ray 2.60's CLIs is handled for the user; traffic never leaves loopback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.cluster import LocalHead, dashboard_headers, ray_auth_token, ray_cli_env
from rollout.traffic import require_loopback


@pytest.fixture
def no_ray_auth(tmp_path, monkeypatch):
    """A home without ~/.ray/auth_token and no Ray auth variables: the tests add what they need."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)


def test_auth_mode_is_set_only_when_ray_wrote_a_token(tmp_path, monkeypatch, no_ray_auth):
    assert "RAY_AUTH_MODE" not in ray_cli_env()
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")
    assert ray_cli_env()["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ray_cli_env()["RAY_AUTH_MODE"] == "disabled"  # the user's explicit choice wins


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000", "http://127.0.0.5:1"])
def test_loopback_targets_are_allowed(url):
    require_loopback(url)


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com", "http://192.168.1.2"])
def test_other_targets_are_refused(url):
    with pytest.raises(ValueError, match="loopback only"):
        require_loopback(url)


def test_pythonpath_entries_that_shadow_our_packages_are_dropped_for_ray(tmp_path, monkeypatch):
    from rollout.cluster import ray_cli_env

    shadowing, harmless = tmp_path / "checks", tmp_path / "lib"
    shadowing.mkdir()
    harmless.mkdir()
    (shadowing / "rollout.py").write_text("raise SystemExit('the wrong rollout')\n")
    monkeypatch.setenv("PYTHONPATH", f"{shadowing}:{harmless}")
    assert ray_cli_env()["PYTHONPATH"] == str(harmless)


def test_the_canary_command_runs_ours_under_a_shadowing_pythonpath(tmp_path):
    import subprocess
    import sys

    (tmp_path / "rollout.py").write_text("raise SystemExit('the wrong rollout')\n")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from canary_serve.entry import main; sys.exit(main())", "--help"],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "operators" not in result.stderr and "usage: canary" in result.stdout


# Ray 2.60 finds its token in $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH names, else
# ~/.ray/auth_token (its AuthenticationTokenLoader); canary sets the mode and sends the token from there.


def test_a_token_in_ray_auth_token_sets_the_mode_and_is_what_the_dashboard_gets(monkeypatch, no_ray_auth):
    monkeypatch.setenv("RAY_AUTH_TOKEN", " tok-in-env\n")
    assert ray_cli_env()["RAY_AUTH_MODE"] == "token"
    assert dashboard_headers() == {"Authorization": "Bearer tok-in-env"}


def test_a_token_file_named_by_ray_auth_token_path_sets_the_mode_and_is_sent(
    tmp_path, monkeypatch, no_ray_auth
):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("tok-in-home")
    (tmp_path / "elsewhere").write_text("tok-elsewhere\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert ray_cli_env()["RAY_AUTH_MODE"] == "token"
    assert dashboard_headers() == {"Authorization": "Bearer tok-elsewhere"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-in-env")  # Ray's first choice
    assert dashboard_headers() == {"Authorization": "Bearer tok-in-env"}


def test_a_ray_auth_token_path_that_is_missing_is_no_token_even_with_one_at_home(
    tmp_path, monkeypatch, no_ray_auth
):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("tok-in-home")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    assert ray_auth_token() is None  # as in Ray: no fall-back once the path is named
    assert "RAY_AUTH_MODE" not in ray_cli_env() and dashboard_headers() == {}


def test_no_token_is_sent_when_the_user_turned_token_auth_off(monkeypatch, no_ray_auth):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert dashboard_headers() == {}


# The PID file of `canary up`: a PID now held by another process is a stale file, never the head.


def _proc(root, pid, start_time, argv):
    """A /proc entry: ``stat`` with the start time in field 22, ``cmdline`` NUL-separated."""
    entry = root / str(pid)
    entry.mkdir(parents=True)
    fields = ["S", *["0"] * 18, start_time, "0", "0"]  # fields 3..24; field 22 is the start time
    entry.joinpath("stat").write_text(f"{pid} (some name) with) {' '.join(fields)}\n")
    entry.joinpath("cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


RAY_HEAD = [sys.executable, "/venv/bin/ray", "start", "--head", "--block", "--num-cpus=2"]


@pytest.mark.parametrize(
    ("recorded", "start_time", "argv", "ours"),
    [
        ("{pid} 4242", "4242", ["sleep", "60"], True),  # the start time recorded at `canary up` matches
        ("{pid} 4242", "9999", RAY_HEAD, False),  # same PID, another process (even another Ray)
        ("{pid}", "1", RAY_HEAD, True),  # a PID file from before start times were kept: the command line
        ("{pid}", "1", ["sleep", "60"], False),
    ],
)
def test_the_recorded_pid_is_the_head_only_while_the_same_process_holds_it(
    tmp_path, capsys, recorded, start_time, argv, ours
):
    pid = os.getpid()  # a live process of ours; its /proc entry is the fake one
    _proc(tmp_path / "proc", pid, start_time, argv)
    state = tmp_path / "state"
    state.mkdir()
    (state / "ray-head.pid").write_text(recorded.format(pid=pid) + "\n")
    head = LocalHead(state_dir=state, proc=tmp_path / "proc")
    assert head.pid() == (pid if ours else None)
    assert (state / "ray-head.pid").exists() == ours
    assert ("removed the stale" in capsys.readouterr().err) == (not ours)


def test_down_never_signals_a_process_that_took_the_head_s_pid(tmp_path, monkeypatch, capsys):
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        state = tmp_path / "state"
        state.mkdir()
        (state / "ray-head.pid").write_text(f"{unrelated.pid}\n")  # the real /proc says: `sleep 60`
        ran = []
        monkeypatch.setattr("rollout.cluster.subprocess.run", lambda cmd, **kw: ran.append(cmd))
        head = LocalHead(state_dir=state)
        assert head.stop(timeout_s=1) is False
        assert unrelated.poll() is None and ran == []
        assert not (state / "ray-head.pid").exists()
        assert f"PID {unrelated.pid} is no longer the Ray head" in capsys.readouterr().err
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_pid_of_another_user_is_not_our_head(tmp_path, monkeypatch, capsys):
    def not_permitted(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    state = tmp_path / "state"
    state.mkdir()
    (state / "ray-head.pid").write_text("1\n")
    monkeypatch.setattr("rollout.cluster.os.kill", not_permitted)
    assert LocalHead(state_dir=state).pid() is None
    assert "another user" in capsys.readouterr().err and not (state / "ray-head.pid").exists()


def test_start_records_the_head_s_start_time_and_pid_accepts_it(tmp_path, monkeypatch):
    class FakeRayStart:  # stands in for the `ray start --head --block` process: this test's own process
        pid = os.getpid()

        def __init__(self, cmd, **kwargs):
            self.cmd = cmd

        def poll(self):
            return None

    answers = iter([0, 200])  # nothing at the dashboard before the start, then it answers
    monkeypatch.setattr("rollout.cluster.subprocess.Popen", FakeRayStart)
    monkeypatch.setattr("rollout.cluster.http_status", lambda url, **kw: next(answers))
    head = LocalHead(state_dir=tmp_path / "state")
    assert head.start() is True
    recorded_pid, started_at = (tmp_path / "state" / "ray-head.pid").read_text().split()
    own_stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert int(recorded_pid) == os.getpid() and started_at == own_stat.rsplit(")", 1)[1].split()[19]
    assert head.pid() == os.getpid()
