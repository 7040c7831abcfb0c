"""The running demo, as a user starts it (`canary up`), shared by the end-to-end tests that need one.

Started once for the package (the dashboard and Prometheus tests) and stopped with `canary down` after its
last test; a test that needs a rollout of its own deploys one with a fresh ``rollout_id``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CANARY = str(Path(sys.executable).parent / "canary")
SERVE = "http://127.0.0.1:8000"


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="package")
def demo() -> Iterator[str]:
    if port_taken(8000) or port_taken(8265):
        pytest.skip("a Ray or Serve already listens on 127.0.0.1:8000/8265 (a running `make up`?)")
    up = subprocess.run([CANARY, "up"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield SERVE
    finally:
        subprocess.run([CANARY, "down"], cwd=ROOT, capture_output=True, timeout=300, check=False)
