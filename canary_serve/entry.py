"""The ``canary`` console script. Our top-level packages have common names (``rollout``, ``serving``,
``models``), so a caller's PYTHONPATH holding a ``rollout.py`` would otherwise be imported instead of ours;
the acceptance checks' own directory does exactly that, and the CLI then ran the caller's script."""

from __future__ import annotations

import sys
from pathlib import Path

OURS = ("rollout", "serving", "models")


def main() -> int:
    root = str(Path(__file__).resolve().parent.parent)  # the project root, or site-packages when installed
    sys.path[:] = [root, *(p for p in sys.path if p != root)]
    for name in OURS:
        module = sys.modules.get(name)
        if module is not None and not str(getattr(module, "__file__", "") or "").startswith(root):
            del sys.modules[name]
    from rollout.cli import main as run

    return run()
