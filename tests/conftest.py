"""Shared test settings: markers are assigned by folder so `-m` selects a layer."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items):
    for item in items:
        layer = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if layer in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, layer))
