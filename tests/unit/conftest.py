"""Unit tests run without Ray: any attempt to start a cluster fails loudly (as in Ray Serve's tests/unit)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest


def _refuse_ray_init(*args: object, **kwargs: object) -> None:
    raise RuntimeError("tests/unit must not start Ray; move this test to tests/integration")


@pytest.fixture(autouse=True, scope="session")
def _no_ray() -> Iterator[None]:
    if importlib.util.find_spec("ray") is None:
        yield
        return
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray, "init", _refuse_ray_init)
        yield
