"""benchmarks/gpu_session.sh, the GPU run from a source checkout: it checks its imports before it starts
anything, so a lease of a GPU machine is not spent on a run that cannot work. (The runs themselves are the
bench's and the GPU check's, tested on their own.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_dependency_is_named_and_nothing_is_run(tmp_path: Path) -> None:
    bare_python = tmp_path / "python"  # the interpreter without its site-packages: no Ray, no torch
    bare_python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare_python.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHON": str(bare_python),
        "OUT": str(out),
    }

    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_session.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 3, done.stdout + done.stderr
    assert "cannot import ray.serve: ModuleNotFoundError" in done.stderr
    assert "a dependency is missing" in done.stderr
    assert "bench exited" not in done.stdout  # stopped before the bench
    assert list(out.iterdir()) == []
