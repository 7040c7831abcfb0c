"""Shared test settings: markers are assigned by folder so `-m` selects a layer."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items):
    tests = ROOT / "tests"
    for item in items:
        path = Path(str(item.fspath))
        if not path.is_relative_to(tests):
            continue  # doctests of the packages: unit-level
        layer = path.relative_to(tests).parts[0]
        if layer in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, layer))
