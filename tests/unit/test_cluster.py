"""The auth detail of Ray 2.60's CLIs is handled for the user; traffic never leaves loopback."""

import pytest

from rollout.cluster import ray_cli_env
from rollout.traffic import require_loopback


def test_auth_mode_is_set_only_when_ray_wrote_a_token(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
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
